"""MACE through mace-torch: its `ScaleShiftMACE` model and neighbour list.

The model is built as `mace_run_train --model MACE` builds it (residual interactions, SiLU
gates, shift 0 and scale = RMS of the training forces, the E0s as atomic energies); the
graphs are built once per conformer with MACE's own neighbour list and reused every epoch,
and batched into the dict its `AtomicData` batching makes for molecules (a test holds the
two equal) in a few tensor operations: 0.8 s → 0.14 s of a 1,366-conformer prediction.
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Iterator, Sequence
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import torch

from mlipdiv.errors import FieldError, first_line
from mlipdiv.lazy import without_package_init
from mlipdiv.models.base import Batch, Conformer, Potential, quiet_warnings
from mlipdiv.models.sizes import RunSize, TrainingSettings

# e3nn warns about TorchScript annotations and about the torch.load flag mace sets: not ours.
# The filters hold only while mace-torch is imported and a model is built, not for the caller.
THIRD_PARTY_NOTICES = ("The TorchScript type system",
                       "Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY",
                       "`torch.jit.script` is deprecated")


def _quiet() -> contextlib.AbstractContextManager:
    return quiet_warnings(*THIRD_PARTY_NOTICES)


@functools.cache
def _mace() -> SimpleNamespace:
    """mace-torch and e3nn, imported on first use (several seconds): listing the backends
    must not pay for it."""
    with _quiet(), contextlib.redirect_stdout(io.StringIO()):  # mace prints a GPU notice
        import mace  # noqa: F401 - first: it lets e3nn torch.load its constants

        # mace.tools' and mace.data's __init__ import mace's trainer, torchmetrics, pandas
        # and LMDB readers (1 s of a 9 s prediction); mace.modules needs only these
        without_package_init("mace.tools", ("torch_tools", "utils", "default_keys", "cg"))
        without_package_init("mace.data", ("neighborhood",))
        from e3nn import o3
        from mace import modules
        from mace.data.neighborhood import get_neighborhood
        from mace.modules.utils import extract_invariant
    return SimpleNamespace(o3=o3, modules=modules, get_neighborhood=get_neighborhood,
                           extract_invariant=extract_invariant)


@contextlib.contextmanager
def _e3nn_codegen_uncompiled() -> Iterator[None]:
    """e3nn's generated code left uncompiled (no TorchScript) while models are built."""
    _mace()  # first: mace-torch lets e3nn load its constants
    import e3nn

    before = e3nn.get_optimization_defaults()["jit_script_fx"]
    e3nn.set_optimization_defaults(jit_script_fx=False)
    try:
        yield
    finally:
        e3nn.set_optimization_defaults(jit_script_fx=before)


class MaceGraph(NamedTuple):
    """One conformer prepared for MACE: element indices (n,), positions (n, 3) in Å, edges
    (2, n_edges) as senders and receivers, energy (eV) and forces (n, 3) in eV/Å."""

    species: torch.Tensor
    positions: torch.Tensor
    edges: torch.Tensor
    energy: float
    forces: torch.Tensor


class MacePotential(Potential):
    backend = "mace"
    library = "mace-torch"
    cutoff_key = "r_max"
    e0_key = "atomic_energies_fn.atomic_energies"
    sizes = {
        "dev": RunSize("mace", "dev", dict(
            num_channels=8, max_L=0, max_ell=1, correlation=2, num_interactions=2, r_max=4.0,
            num_radial_basis=6, num_cutoff_basis=5, radial_mlp=[16, 16], mlp_irreps="8x0e",
        ), TrainingSettings(max_epochs=12, batch_size=8, learning_rate=0.01,
                            early_stopping_patience=10)),
        "fast": RunSize("mace", "fast", dict(
            num_channels=16, max_L=0, max_ell=2, correlation=2, num_interactions=2, r_max=4.5,
            num_radial_basis=8, num_cutoff_basis=5, radial_mlp=[32, 32], mlp_irreps="16x0e",
        ), TrainingSettings(max_epochs=40, batch_size=10, learning_rate=0.01,
                            early_stopping_patience=10)),
        "standard": RunSize("mace", "standard", dict(
            num_channels=96, max_L=0, max_ell=3, correlation=3, num_interactions=2, r_max=4.5,
            num_radial_basis=8, num_cutoff_basis=5, radial_mlp=[64, 64, 64], mlp_irreps="16x0e",
        ), TrainingSettings(max_epochs=400, batch_size=16, learning_rate=0.01, lr_patience=20,
                            early_stopping_patience=60)),
    }

    @classmethod
    def import_library(cls) -> None:
        _mace()

    def __init__(self, config: dict, device: str | torch.device = "cpu"):
        super().__init__(config, device)
        # atomic number -> row of the one-hot node attributes (MACE's AtomicNumberTable)
        self._species_index = np.full(max(self.elements) + 1, -1, dtype=np.int64)
        self._species_index[self.elements] = np.arange(len(self.elements))
        self._one_hot = torch.eye(len(self.elements), dtype=self.dtype)

    def build_module(self) -> torch.nn.Module:
        lib, hp = _mace(), self.config["model"]
        o3, modules = lib.o3, lib.modules
        interactions = modules.interaction_classes
        hidden = (hp["num_channels"] * o3.Irreps.spherical_harmonics(hp["max_L"])).sort()[0]
        with _quiet():
            return modules.ScaleShiftMACE(
                r_max=hp["r_max"], num_bessel=hp["num_radial_basis"],
                num_polynomial_cutoff=hp["num_cutoff_basis"], max_ell=hp["max_ell"],
                interaction_cls=interactions["RealAgnosticResidualInteractionBlock"],
                interaction_cls_first=interactions["RealAgnosticInteractionBlock"],
                num_interactions=hp["num_interactions"], num_elements=len(self.elements),
                hidden_irreps=hidden.simplify(), MLP_irreps=o3.Irreps(hp["mlp_irreps"]),
                atomic_energies=np.array(self.config["e0"]),
                avg_num_neighbors=self.config["stats"]["avg_num_neighbors"],
                atomic_numbers=self.elements, correlation=hp["correlation"],
                gate=torch.nn.functional.silu, radial_MLP=list(hp["radial_mlp"]),
                atomic_inter_scale=self.config["stats"]["force_rms"], atomic_inter_shift=0.0,
            )

    @classmethod
    def library_start(cls, module: torch.nn.Module, path) -> tuple[dict, dict]:
        """A mace-torch `ScaleShiftMACE` saved whole (`torch.save(model)`, as MACE-OFF ships)
        read back as mlipdiv's config: its elements, E0s (atomic energies), architecture (in
        the sizes' keys), scale (as `force_rms`) and avg_num_neighbors; its state_dict
        (scale and shift included) then loads into the module mlipdiv builds. One head,
        residual interactions and hidden irreps `channels x (0e + 1o + ... up to max_L)`
        (what `mace_run_train --model MACE` builds), or FieldError("init_from")."""
        lib = _mace()
        from mace.tools.scripts_utils import extract_config_mace_model

        if type(module).__name__ != "ScaleShiftMACE":
            raise FieldError("init_from", path, f"a mace-torch {type(module).__name__}; "
                             "mlipdiv fine-tunes a ScaleShiftMACE (MACE, MACE-OFF)")
        try:
            found = extract_config_mace_model(module)
        except Exception as exc:  # a model of another mace-torch version or layout
            raise FieldError("init_from", path, "a MACE model mlipdiv cannot read "
                             f"({first_line(exc, with_type=True)})") from None
        hidden = lib.o3.Irreps(found["hidden_irreps"])
        channels, max_l = hidden[0].mul, max(ir.l for _, ir in hidden)
        built = (channels * lib.o3.Irreps.spherical_harmonics(max_l)).sort()[0].simplify()
        interactions = (found["interaction_cls_first"].__name__,
                        found["interaction_cls"].__name__)
        energies = np.asarray(found["atomic_energies"], dtype=float)
        why = [reason for reason, bad in (
            (f"hidden irreps {hidden}", str(hidden) != str(built)),
            (f"interactions {', '.join(interactions)}", interactions != (
                "RealAgnosticInteractionBlock", "RealAgnosticResidualInteractionBlock")),
            (f"{len(found['heads'])} heads", len(found["heads"]) != 1)) if bad]
        if why:
            raise FieldError("init_from", path, f"a MACE architecture mlipdiv does not build "
                             f"({'; '.join(why)})")
        hp = dict(num_channels=channels, max_L=max_l, max_ell=int(found["max_ell"]),
                  correlation=int(found["correlation"]),
                  num_interactions=int(found["num_interactions"]),
                  r_max=float(found["r_max"]), num_radial_basis=int(found["num_bessel"]),
                  num_cutoff_basis=int(found["num_polynomial_cutoff"]),
                  radial_mlp=[int(w) for w in found["radial_MLP"]],
                  mlp_irreps=str(found["MLP_irreps"]))
        scale = float(np.asarray(found["atomic_inter_scale"]).reshape(-1)[0])
        config = {"elements": [int(z) for z in found["atomic_numbers"]],
                  "e0": [float(e) for e in energies.reshape(-1)], "model": hp,
                  "stats": {"force_rms": scale,
                            "avg_num_neighbors": float(found["avg_num_neighbors"])}}
        return config, module.state_dict()

    @classmethod
    def load(cls, path, device: str | torch.device = "cpu") -> Potential:
        """A saved model rebuilt to predict, its e3nn tensor products left as torch.fx code:
        compiling them with TorchScript (e3nn's default, 0.55 s of a 0.85 s load of MACE
        fast) gave no faster predictions here (1,366 conformers: 3.37–3.51 s compiled,
        3.31–3.39 s not), the same energies to the last digit. Training keeps the default
        (its epochs were a few per cent faster compiled). mace-torch builds its models so
        for `torch.compile` (`mace.tools.compile.disable_e3nn_codegen`)."""
        with _e3nn_codegen_uncompiled():
            return super().load(path, device)

    def prepare(self, conformer: Conformer) -> MaceGraph:
        positions = np.asarray(conformer.positions, dtype=np.float64)
        # MACE's own neighbour list (matscipy), as `AtomicData.from_config` builds it for a
        # molecule: zero shifts, so only the edges are kept
        edges = _mace().get_neighborhood(positions, self.cutoff(self.config["model"]))[0]
        forces = (np.zeros_like(positions) if conformer.forces is None
                  else conformer.forces)
        numbers = np.asarray(conformer.numbers)
        if numbers.max() >= len(self._species_index) or self._species_index[numbers].min() < 0:
            self.check_elements(numbers)  # one line naming the elements the model lacks
        return MaceGraph(
            species=torch.as_tensor(self._species_index[numbers]),
            positions=torch.as_tensor(positions, dtype=self.dtype),
            edges=torch.as_tensor(edges, dtype=torch.long),
            energy=float(conformer.energy or 0.0),
            forces=torch.as_tensor(forces, dtype=self.dtype))

    def collate(self, items: Sequence[MaceGraph]) -> Batch:
        """The dict `ScaleShiftMACE.forward` reads, as mace-torch's `AtomicData` batching
        builds it for molecules (zero cells and shifts, one head), concatenated in a few
        tensor operations instead of its per-graph, per-key Python loop."""
        n_atoms = torch.tensor([len(item.species) for item in items])
        n_edges = torch.tensor([item.edges.shape[1] for item in items])
        ptr = torch.zeros(len(items) + 1, dtype=torch.long)
        torch.cumsum(n_atoms, 0, out=ptr[1:])
        edges = torch.cat([item.edges for item in items], 1)
        edges += torch.repeat_interleave(ptr[:-1], n_edges)
        graphs = len(items)
        inputs = {
            "positions": torch.cat([item.positions for item in items]),
            "node_attrs": self._one_hot[torch.cat([item.species for item in items])],
            "edge_index": edges,
            "shifts": torch.zeros(edges.shape[1], 3, dtype=self.dtype),
            "unit_shifts": torch.zeros(edges.shape[1], 3, dtype=self.dtype),
            "cell": torch.zeros(3 * graphs, 3, dtype=self.dtype),
            "batch": torch.repeat_interleave(torch.arange(graphs), n_atoms),
            "ptr": ptr,
            "head": torch.zeros(graphs, dtype=torch.long),
        }
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        energy = torch.tensor([item.energy for item in items], dtype=self.dtype)
        forces = torch.cat([item.forces for item in items])
        return Batch(inputs, energy.to(self.device), forces.to(self.device),
                     n_atoms.to(self.device))

    def energy_forces(self, batch: Batch, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.module(dict(batch.inputs), training=training, compute_force=True)
        return out["energy"], out["forces"]

    def invariant_features(self, batch: Batch) -> torch.Tensor:
        hp = self.config["model"]
        out = self.module(dict(batch.inputs), training=False, compute_force=False)
        return _mace().extract_invariant(
            out["node_feats"], num_layers=hp["num_interactions"],
            num_features=hp["num_channels"], l_max=hp["max_L"])
