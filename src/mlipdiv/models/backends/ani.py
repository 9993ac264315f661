"""ANI through TorchANI: its `AEVComputer` (ANI radial + angular terms) and `ANINetworks`
(one network per element); energies are E0s plus the scaled sum of atomic outputs, forces
come by autograd."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from ase.data import chemical_symbols

from mlipdiv.models.base import Batch, Conformer, Potential
from mlipdiv.models.sizes import RunSize, TrainingSettings

os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")

# ANI: AEV as in simple_ani (ANI-2x-like terms, smooth cutoff); per-element widths.
_ANI_2X_WIDTHS = {"H": [256, 192, 160], "C": [224, 192, 160], "N": [192, 160, 128],
                  "O": [192, 160, 128], "S": [160, 128, 96], "F": [160, 128, 96],
                  "Cl": [160, 128, 96]}


class AniModule(torch.nn.Module):
    """AEVs -> per-element networks -> atomic energies (eV) -> molecular energy."""

    def __init__(self, symbols: list[str], hp: dict, e0: list[float], scale: float):
        super().__init__()
        from torchani.aev import AEVComputer, ANIAngular, ANIRadial
        from torchani.nn import ANINetworks

        self.aev = AEVComputer(
            radial=ANIRadial.cover_linearly(cutoff=hp["radial_cutoff"],
                                            num_shifts=hp["radial_shifts"]),
            angular=ANIAngular.cover_linearly(cutoff=hp["angular_cutoff"],
                                              num_shifts=hp["angular_shifts"],
                                              num_sections=hp["angular_sections"]),
            num_species=len(symbols), cutoff_fn="smooth",
        )
        self.networks = ANINetworks.build(
            symbols, self.aev.out_dim,
            dims={s: tuple(w) for s, w in hp["widths"].items()},
            default_dims=tuple(hp["default_widths"]), activation=hp["activation"], bias=True,
        )
        self.register_buffer("e0", torch.tensor(e0))
        self.register_buffer("scale", torch.tensor(scale))

    def forward(self, elem_idxs: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        atomic = self.networks(elem_idxs, self.aev(elem_idxs, coords), atomic=True)
        real = elem_idxs >= 0  # padding atoms have index -1
        e0 = torch.where(real, self.e0[elem_idxs.clamp(min=0)], 0.0)
        return (self.scale * atomic + e0).sum(dim=1)


class AniPotential(Potential):
    backend = "ani"
    library = "torchani"
    cutoff_key = "radial_cutoff"
    e0_key = "e0"
    sizes = {
        "dev": RunSize("ani", "dev", dict(
            radial_cutoff=5.2, angular_cutoff=3.5, radial_shifts=8, angular_shifts=4,
            angular_sections=4, widths={}, default_widths=[32, 16], activation="celu",
        ), TrainingSettings(max_epochs=12, batch_size=8, learning_rate=2e-3,
                            early_stopping_patience=10)),
        "fast": RunSize("ani", "fast", dict(
            radial_cutoff=5.2, angular_cutoff=3.5, radial_shifts=16, angular_shifts=8,
            angular_sections=4, widths={}, default_widths=[96, 64, 32], activation="celu",
        ), TrainingSettings(max_epochs=50, batch_size=10, learning_rate=2e-3,
                            early_stopping_patience=12)),
        "standard": RunSize("ani", "standard", dict(
            radial_cutoff=5.2, angular_cutoff=3.5, radial_shifts=16, angular_shifts=8,
            angular_sections=4, widths=_ANI_2X_WIDTHS, default_widths=[160, 128, 96],
            activation="celu",
        ), TrainingSettings(max_epochs=600, batch_size=32, learning_rate=1e-3, lr_patience=25,
                            early_stopping_patience=100)),
    }

    @classmethod
    def import_library(cls) -> None:
        import torchani.aev
        import torchani.nn  # noqa: F401 - what AniModule builds from

    def build_module(self) -> torch.nn.Module:
        symbols = [chemical_symbols[z] for z in self.elements]
        return AniModule(symbols, self.config["model"], self.config["e0"],
                         self.config["stats"]["force_rms"])

    def prepare(self, conformer: Conformer) -> tuple[torch.Tensor, ...]:
        index = {z: i for i, z in enumerate(self.elements)}
        dtype = torch.get_default_dtype()
        forces = conformer.forces
        return (
            torch.tensor([index[int(z)] for z in conformer.numbers]),
            torch.tensor(conformer.positions, dtype=dtype),
            torch.tensor(conformer.energy, dtype=dtype),
            torch.zeros(len(conformer.numbers), 3, dtype=dtype) if forces is None
            else torch.tensor(forces, dtype=dtype),
        )

    def collate(self, items: Sequence) -> Batch:
        pad = torch.nn.utils.rnn.pad_sequence
        species = pad([i[0] for i in items], batch_first=True, padding_value=-1)
        coords = pad([i[1] for i in items], batch_first=True)
        to = self.device
        return Batch(
            (species.to(to), coords.to(to)), torch.stack([i[2] for i in items]).to(to),
            torch.cat([i[3] for i in items]).to(to),
            torch.tensor([len(i[0]) for i in items], device=to),
        )

    def energy_forces(self, batch: Batch, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        species, coords = batch.inputs
        with torch.enable_grad():
            coords = coords.detach().requires_grad_(True)
            energy = self.module(species, coords)
            gradient = torch.autograd.grad(energy.sum(), coords, create_graph=training)[0]
        return energy, -gradient[species >= 0]

    def invariant_features(self, batch: Batch) -> torch.Tensor:
        species, coords = batch.inputs
        with torch.no_grad():
            return self.module.aev(species, coords)[species >= 0]
