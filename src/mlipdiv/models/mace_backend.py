"""MACE through mace-torch: its `ScaleShiftMACE` model, `AtomicData` graphs and batching.

The model is built as `mace_run_train --model MACE` builds it (residual interactions, SiLU
gates, shift 0 and scale = RMS of the training forces, the E0s as atomic energies); the
graphs are built once per conformer with MACE's own neighbour list and reused every epoch.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from mlipdiv.models.base import Batch, Conformer, Potential

# e3nn warns about TorchScript annotations and about the torch.load flag mace sets: not ours.
warnings.filterwarnings("ignore", message="The TorchScript type system")
warnings.filterwarnings("ignore", message="Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY")
with contextlib.redirect_stdout(io.StringIO()):  # mace prints a GPU-only notice on import
    import mace  # noqa: F401 - first: it lets e3nn torch.load its constants
    from e3nn import o3
    from mace import modules
    from mace.data import AtomicData, Configuration
    from mace.modules.utils import extract_invariant
    from mace.tools import AtomicNumberTable
    from mace.tools.torch_geometric.batch import Batch as GraphBatch


class MacePotential(Potential):
    backend = "mace"

    def build_module(self) -> torch.nn.Module:
        hp = self.config["model"]
        hidden = (hp["num_channels"] * o3.Irreps.spherical_harmonics(hp["max_L"])).sort()[0]
        return modules.ScaleShiftMACE(
            r_max=hp["r_max"], num_bessel=hp["num_radial_basis"],
            num_polynomial_cutoff=hp["num_cutoff_basis"], max_ell=hp["max_ell"],
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
            num_interactions=hp["num_interactions"], num_elements=len(self.elements),
            hidden_irreps=hidden.simplify(), MLP_irreps=o3.Irreps(hp["mlp_irreps"]),
            atomic_energies=np.array(self.config["e0"]),
            avg_num_neighbors=self.config["stats"]["avg_num_neighbors"],
            atomic_numbers=self.elements, correlation=hp["correlation"],
            gate=torch.nn.functional.silu, radial_MLP=list(hp["radial_mlp"]),
            atomic_inter_scale=self.config["stats"]["force_rms"], atomic_inter_shift=0.0,
        )

    def prepare(self, conformer: Conformer):
        forces = conformer.forces
        config = Configuration(
            atomic_numbers=np.asarray(conformer.numbers), positions=conformer.positions,
            properties={"energy": conformer.energy, "forces": forces},
            property_weights={"energy": 1.0, "forces": 1.0}, pbc=(False, False, False),
        )
        return AtomicData.from_config(config, AtomicNumberTable(self.elements),
                                      self.config["model"]["r_max"])

    def collate(self, items: Sequence) -> Batch:
        graphs = GraphBatch.from_data_list(list(items)).to(self.device)
        return Batch(graphs, graphs.energy, graphs.forces, graphs.ptr[1:] - graphs.ptr[:-1])

    def energy_forces(self, batch: Batch, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.module(batch.inputs.to_dict(), training=training, compute_force=True)
        return out["energy"], out["forces"]

    def invariant_features(self, batch: Batch) -> torch.Tensor:
        hp = self.config["model"]
        out = self.module(batch.inputs.to_dict(), training=False, compute_force=False)
        return extract_invariant(out["node_feats"], num_layers=hp["num_interactions"],
                                 num_features=hp["num_channels"], l_max=hp["max_L"])
