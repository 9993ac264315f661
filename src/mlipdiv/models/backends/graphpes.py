"""SchNet, PaiNN, NequIP and TensorNet through graph-pes: its models, `AtomicGraph`s and batching.

Each backend is graph-pes's own model (`graph_pes.models.SchNet`, `PaiNN`, `NequIP`,
`TensorNet`) inside an `AdditionModel` next to a `FixedOffset` that holds mlipdiv's E0s, so
energy = sum of E0s + the model's local energies. The model's per-element `LocalEnergiesScaler`
starts at the RMS of the training forces (as MACE's atomic_inter_scale) and is learned.
graph-pes's trainer and `pre_fit` are not used: what pre_fit would set (offsets, scales) comes
from `config`, so `load` rebuilds the same module from config + state_dict, and nothing depends
on which graphs a member saw first. Graphs are built once per conformer as
`AtomicGraph.from_ase` builds them (vesin's neighbour list at the model's cutoff) and batched
with `to_batch`; energies and forces
come from the model's `predict` (forces by autograd, the graph kept while training).

Invariant features, per atom, of the final layer (what enters the energy read-out):
  schnet     the node features (`channels`)
  painn      the scalar channels (`channels`)
  tensornet  the squared Frobenius norms of the I, A and S parts of each channel (3 x `channels`)
  nequip     the even scalar (0e) channels of the node features
graph-pes's NequIP embeds elements as a float32 one-hot (`AtomicOneHot`); a forward hook casts
it to the model's dtype so that float64 works.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import replace
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import torch
from ase.data import chemical_symbols

from mlipdiv.errors import FieldError
from mlipdiv.lazy import bind_to_package, deferred_module
from mlipdiv.models.base import Batch, Conformer, Potential, default_dtype, quiet_warnings
from mlipdiv.models.sizes import RunSize, TrainingSettings

# e3nn (NequIP) warns about TorchScript annotations: not ours, and only while building
THIRD_PARTY_NOTICES = ("The TorchScript type system", "`torch.jit.script` is deprecated")


def _quiet() -> contextlib.AbstractContextManager:
    return quiet_warnings(*THIRD_PARTY_NOTICES)


# what PyTorch Lightning reads to learn a process's rank under a distributed launcher
# (torchrun, SLURM, LSF, MPI, Kubeflow); none set: the process is rank 0
LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "GROUP_RANK", "NODE_RANK", "WORLD_SIZE",
                      "SLURM_NTASKS", "SLURM_PROCID", "LSB_JOBID", "JSM_NAMESPACE_RANK",
                      "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMI_SIZE", "MASTER_ADDR")
DISTRIBUTED = "graph_pes.utils.distributed"


@functools.cache
def _graph_pes() -> SimpleNamespace:
    """graph-pes, imported on first use (seconds): listing the backends must not pay for it.
    Importing graph-pes builds a PyTorch Lightning `Trainer` (`utils.distributed`: importing
    Lightning, torchmetrics and torch._dynamo, ~2 s) only to learn the process's rank for its
    logger; outside a distributed launch that rank is 0, given instead (the real module still
    runs when any other of its names is asked for)."""
    if not any(variable in os.environ for variable in LAUNCHER_VARIABLES):
        deferred_module(DISTRIBUTED, {"GLOBAL_RANK": 0, "IS_RANK_0": True})
    with _quiet():
        from graph_pes import models
        from graph_pes.atomic_graph import AtomicGraph, to_batch
        from graph_pes.models.offsets import EnergyOffset
    bind_to_package(DISTRIBUTED)
    return SimpleNamespace(models=models, AtomicGraph=AtomicGraph, to_batch=to_batch,
                           EnergyOffset=EnergyOffset)


_NEIGHBOUR_LISTS = threading.local()


def _neighbour_list(cutoff: float):
    """This thread's vesin `NeighborList` at `cutoff`, full and sorted as
    `vesin.ase_neighbor_list` (what `from_ase` calls) makes it, made once: making one costs
    0.1 ms, more than computing a molecule's pairs with it."""
    lists = _NEIGHBOUR_LISTS.__dict__
    if cutoff not in lists:
        from vesin import NeighborList

        lists[cutoff] = NeighborList(cutoff=cutoff, full_list=True, sorted=True)
    return lists[cutoff]


class GraphPesPotential(Potential):
    """A graph-pes model behind the `Potential` interface; a subclass names the model, its
    sizes and where its invariant features are."""

    library = "graph-pes"
    cutoff_key = "cutoff"
    e0_key = "models.offset._offsets"
    # the submodule of the graph-pes model whose input is the per-atom invariant features
    readout: ClassVar[str] = "read_out"
    model_class: ClassVar[str]  # the graph-pes model's class name (a file's model is one)

    @classmethod
    def import_library(cls) -> None:
        _graph_pes()

    @abstractmethod
    def build_model(self, hp: dict, symbols: list[str]) -> torch.nn.Module:
        """The untrained graph-pes model of hyperparameters `hp` for these elements."""

    def scalars(self, model: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
        """The invariant part of the read-out's input (all of it unless a subclass says)."""
        return features

    @classmethod
    def architecture(cls, model: torch.nn.Module, path) -> dict:
        """The size keys (hyperparameters) of a graph-pes model of this class read from a
        file; a subclass that reads them overrides this."""
        raise FieldError("init_from", path, f"a graph-pes {type(model).__name__} file: mlipdiv "
                         f"reads graph-pes files of schnet only; start {cls.backend} from a "
                         "mlipdiv run or its member-K/model.pt")

    @classmethod
    def library_start(cls, module: torch.nn.Module, path) -> tuple[dict, dict]:
        """A graph-pes model saved whole (`torch.save(model)`, read as graph-pes's
        `load_model` reads it): an `AdditionModel` of an energy offset (fixed or learnable:
        its per-element values are the E0s, its elements the model's) and one model of this
        backend's class, whose hyperparameters `architecture` reads; FieldError("init_from")
        for another layout or model."""
        lib = _graph_pes()
        parts = dict(module.models.items()) if isinstance(module, lib.models.AdditionModel) \
            else {}
        offsets = [k for k, m in parts.items() if isinstance(m, lib.EnergyOffset)]
        bodies = [k for k, m in parts.items() if type(m).__name__ == cls.model_class]
        if len(parts) != 2 or len(offsets) != 1 or len(bodies) != 1:
            shown = ", ".join(type(m).__name__ for m in parts.values()) or type(module).__name__
            raise FieldError("init_from", path, f"a graph-pes model of {shown}; mlipdiv starts "
                             f"{cls.backend} from an AdditionModel of an energy offset and a "
                             f"{cls.model_class}")
        offset, body = parts[offsets[0]]._offsets, parts[bodies[0]]
        elements = sorted(int(z) for z in offset._accessed_Zs)
        if not elements:
            raise FieldError("init_from", path, "its energy offset names no element")
        renamed = {f"models.{offsets[0]}.": "models.offset.",
                   f"models.{bodies[0]}.": "models.many_body."}
        state = {}
        for key, value in module.state_dict().items():
            for old, new in renamed.items():
                key = new + key[len(old):] if key.startswith(old) else key
            state[key] = value
        config = {"elements": elements,
                  "e0": [float(offset.detach()[z].reshape(-1)[0]) for z in elements],
                  "model": cls.architecture(body, path),
                  "stats": {"force_rms": float(body.scaler.per_element_scaling.detach()
                                               .reshape(-1)[elements[0]])}}
        return config, state

    def build_module(self) -> torch.nn.Module:
        lib = _graph_pes()
        symbols = [chemical_symbols[z] for z in self.elements]
        with _quiet():
            model = self.build_model(self.config["model"], symbols)
        with torch.no_grad():
            model.scaler.per_element_scaling.fill_(self.config["stats"]["force_rms"])
        offset = lib.models.FixedOffset(
            **{s: float(e) for s, e in zip(symbols, self.config["e0"], strict=True)})
        return lib.models.AdditionModel(offset=offset, many_body=model)

    def prepare(self, conformer: Conformer):
        """The `AtomicGraph` that `AtomicGraph.from_ase` builds for a molecule (no cell, no
        periodic images; vesin's neighbour list, the pairs in its order), made from the
        arrays without the ASE round trip: 0.43 ms → 0.05 ms a conformer."""
        dtype = torch.get_default_dtype()
        positions = np.asarray(conformer.positions, dtype=np.float64)
        cutoff = self.cutoff(self.config["model"])
        senders, receivers = _neighbour_list(cutoff).compute(
            points=positions, box=np.zeros((3, 3)), periodic=False, quantities="ij")
        forces = (torch.zeros(len(positions), 3, dtype=dtype) if conformer.forces is None
                  else torch.tensor(conformer.forces, dtype=dtype))
        return _graph_pes().AtomicGraph.create_with_defaults(
            Z=torch.as_tensor(np.asarray(conformer.numbers, dtype=np.int64)),
            R=torch.tensor(positions, dtype=dtype),
            neighbour_list=torch.as_tensor(np.stack((senders, receivers)).astype(np.int64)),
            neighbour_cell_offsets=torch.zeros(len(senders), 3, dtype=dtype),
            properties={"energy": torch.tensor(conformer.energy, dtype=dtype),
                        "forces": forces},
            cutoff=cutoff)

    def collate(self, items: Sequence) -> Batch:
        graph = _graph_pes().to_batch(list(items)).to(self.device)
        return Batch(graph, graph.properties["energy"], graph.properties["forces"],
                     graph.ptr[1:] - graph.ptr[:-1])

    def energy_forces(self, batch: Batch, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        # graph-pes keeps the graph through the forces (create_graph) in training mode only
        if self.module.training != training:
            self.module.train(training)
        # its AdditionModel sums into zeros of the default dtype
        with default_dtype(self.dtype), torch.enable_grad():
            out = self.module.predict(batch.inputs, ["energy", "forces"])
        return out["energy"], out["forces"]

    def invariant_features(self, batch: Batch) -> torch.Tensor:
        model = self.module["many_body"]
        captured: list[torch.Tensor] = []
        hook = model.get_submodule(self.readout).register_forward_pre_hook(
            lambda module, args: captured.append(args[0]))
        try:
            with default_dtype(self.dtype), torch.no_grad():
                model(batch.inputs)
        finally:
            hook.remove()
        return self.scalars(model, captured[0])


# dev and fast: MACE's epochs, batch sizes and patience, learning rates tried on ~200 GFN2-xTB
# conformers (fast: about MACE fast's cost per epoch on 2 cores); standard: MACE standard's
# schedule with each paper's learning rate
DEV = TrainingSettings(max_epochs=12, batch_size=8, learning_rate=5e-3, early_stopping_patience=10)
FAST = TrainingSettings(max_epochs=40, batch_size=10, learning_rate=5e-3,
                        early_stopping_patience=10)
STANDARD = TrainingSettings(max_epochs=400, batch_size=16, learning_rate=1e-3, lr_patience=20,
                            early_stopping_patience=60)


class SchNetPotential(GraphPesPotential):
    """SchNet (Schütt et al. 2018): standard = graph-pes's defaults, the paper's 64 features,
    3 interactions and 5 Å cutoff (Gaussian expansion, 50 features)."""

    backend = "schnet"
    model_class = "SchNet"
    sizes = {
        "dev": RunSize("schnet", "dev", dict(
            channels=8, expansion_features=10, layers=2, cutoff=4.0), DEV),
        "fast": RunSize("schnet", "fast", dict(
            channels=64, expansion_features=25, layers=3, cutoff=4.5), FAST),
        "standard": RunSize("schnet", "standard", dict(
            channels=64, expansion_features=50, layers=3, cutoff=5.0),
            STANDARD),
    }

    def build_model(self, hp: dict, symbols: list[str]) -> torch.nn.Module:
        return _graph_pes().models.SchNet(
            cutoff=hp["cutoff"], channels=hp["channels"],
            expansion_features=hp["expansion_features"], layers=hp["layers"])

    @classmethod
    def architecture(cls, model: torch.nn.Module, path) -> dict:
        return dict(channels=int(model.chemical_embedding._embeddings.shape[1]),
                    expansion_features=int(model.interactions[0].cfconv.filter_generator[0]
                                           .n_features),
                    layers=len(model.interactions), cutoff=float(model.cutoff))


class PaiNNPotential(GraphPesPotential):
    """PaiNN (Schütt et al. 2021): standard = the paper's 128 channels, 3 layers, 20 radial
    (Bessel) features and 5 Å cutoff."""

    backend = "painn"
    model_class = "PaiNN"
    sizes = {
        "dev": RunSize("painn", "dev", dict(
            channels=8, radial_features=8, layers=2, cutoff=4.0), DEV),
        "fast": RunSize("painn", "fast", dict(
            channels=32, radial_features=16, layers=3, cutoff=4.5), FAST),
        "standard": RunSize("painn", "standard", dict(
            channels=128, radial_features=20, layers=3, cutoff=5.0),
            replace(STANDARD, learning_rate=5e-4)),
    }

    def build_model(self, hp: dict, symbols: list[str]) -> torch.nn.Module:
        return _graph_pes().models.PaiNN(
            channels=hp["channels"], radial_features=hp["radial_features"],
            layers=hp["layers"], cutoff=hp["cutoff"])


class NequIPPotential(GraphPesPotential):
    """NequIP (Batzner et al. 2022): standard = graph-pes's defaults (16 channels per irrep up
    to l=2 with both parities, 3 layers, tensor-product self-interaction, last layer pruned to
    scalars, summed messages, 8 trainable Bessel features, 5 Å cutoff)."""

    backend = "nequip"
    model_class = "NequIP"
    readout = "energy_readout"
    sizes = {
        "dev": RunSize("nequip", "dev", dict(
            channels=4, l_max=1, use_odd_parity=True, layers=2, radial_features=4,
            self_interaction="tensor_product", prune_last_layer=True, cutoff=4.0),
            replace(DEV, learning_rate=1e-2)),
        "fast": RunSize("nequip", "fast", dict(
            channels=16, l_max=1, use_odd_parity=True, layers=2, radial_features=8,
            self_interaction="tensor_product", prune_last_layer=True, cutoff=4.5),
            replace(FAST, learning_rate=1e-2)),
        "standard": RunSize("nequip", "standard", dict(
            channels=16, l_max=2, use_odd_parity=True, layers=3, radial_features=8,
            self_interaction="tensor_product", prune_last_layer=True, cutoff=5.0),
            replace(STANDARD, learning_rate=5e-3)),
    }

    def build_model(self, hp: dict, symbols: list[str]) -> torch.nn.Module:
        model = _graph_pes().models.NequIP(
            elements=symbols, cutoff=hp["cutoff"], layers=hp["layers"],
            features={"channels": hp["channels"], "l_max": hp["l_max"],
                      "use_odd_parity": hp["use_odd_parity"]},
            self_interaction=hp["self_interaction"], prune_last_layer=hp["prune_last_layer"],
            radial_features=hp["radial_features"])
        # the one-hot is float32 whatever the model's dtype; a partial of a module-level
        # function, not a lambda, so the whole module still pickles (torch.save(model))
        model.Z_embedding.register_forward_hook(
            functools.partial(_cast_output, dtype=torch.get_default_dtype()))
        return model

    def scalars(self, model: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
        from e3nn import o3

        irreps = model.layers[-1].irreps_out
        even = [features[:, part] for (_, ir), part in zip(irreps, irreps.slices(), strict=True)
                if ir == o3.Irrep("0e")]
        return torch.cat(even, dim=1)


def _cast_output(module: torch.nn.Module, args, out: torch.Tensor, *,
                 dtype: torch.dtype) -> torch.Tensor:
    return out.to(dtype)


class TensorNetPotential(GraphPesPotential):
    """TensorNet (Simeon & de Fabritiis 2023): standard = graph-pes's defaults (32 channels,
    2 layers, 32 exponential radial features, 5 Å cutoff). Its embedding already passes one
    message, so dev and fast's single layer sees two hops, as MACE fast's two interactions."""

    backend = "tensornet"
    model_class = "TensorNet"
    readout = "energy_read_out.layer_norm"
    sizes = {
        "dev": RunSize("tensornet", "dev", dict(
            channels=4, radial_features=8, layers=1, cutoff=4.0), DEV),
        "fast": RunSize("tensornet", "fast", dict(
            channels=16, radial_features=16, layers=1, cutoff=4.5), FAST),
        "standard": RunSize("tensornet", "standard", dict(
            channels=32, radial_features=32, layers=2, cutoff=5.0),
            STANDARD),
    }

    def build_model(self, hp: dict, symbols: list[str]) -> torch.nn.Module:
        return _graph_pes().models.TensorNet(
            cutoff=hp["cutoff"], radial_features=hp["radial_features"],
            channels=hp["channels"], layers=hp["layers"])
