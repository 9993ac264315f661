"""Run sizes: every hyperparameter of every backend, in one place.

As MLIPAudit does with DEV/FAST/STANDARD: `dev` trains a tiny model in seconds (tests), `fast`
is the quick study's size on 2 CPU cores (a few hundred conformers, tens of seconds per model),
`standard` is published scale for a GPU (MACE-OFF23-small-like; ANI-2x widths and AEVs).
The chosen size is written into every run's log and `run.json`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from mlipdiv.errors import MlipdivError

BACKENDS = ("mace", "ani")
SIZES = ("dev", "fast", "standard")


@dataclass(frozen=True)
class TrainingSettings:
    """The shared training loop's settings (loss weights, optimiser, schedule, stopping)."""

    max_epochs: int
    batch_size: int
    learning_rate: float
    # on (energy error per atom)^2, eV^2: 100, not MACE's 1, or the energies hardly train
    # (MACE raises it to 1000 in a second stage; mlipdiv has one stage)
    energy_weight: float = 100.0
    forces_weight: float = 100.0  # on (force component error)^2, (eV/A)^2 -- MACE's default
    weight_decay: float = 5e-7
    lr_factor: float = 0.8  # ReduceLROnPlateau factor on the validation loss
    lr_patience: int = 5
    early_stopping_patience: int = 20
    valid_batch_size: int = 32


@dataclass(frozen=True)
class RunSize:
    """One backend at one size: the model's hyperparameters and the training settings."""

    backend: str
    name: str
    model: dict = field(default_factory=dict)
    training: TrainingSettings = None  # type: ignore[assignment]

    def as_dict(self) -> dict:
        return {"backend": self.backend, "size": self.name, "model": dict(self.model),
                "training": asdict(self.training)}


_MACE = {
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

# ANI: AEV as in simple_ani (ANI-2x-like terms, smooth cutoff); per-element widths.
_ANI_2X_WIDTHS = {"H": [256, 192, 160], "C": [224, 192, 160], "N": [192, 160, 128],
                  "O": [192, 160, 128], "S": [160, 128, 96], "F": [160, 128, 96],
                  "Cl": [160, 128, 96]}
_ANI = {
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

_TABLE = {"mace": _MACE, "ani": _ANI}


def run_size(backend: str, size: str) -> RunSize:
    """The hyperparameters of `backend` at `size`; MlipdivError naming the bad option."""
    if backend not in _TABLE:
        raise MlipdivError(f"--model {backend!r}: choose from {', '.join(BACKENDS)}")
    if size not in _TABLE[backend]:
        raise MlipdivError(f"--size {size!r}: choose from {', '.join(SIZES)}")
    return _TABLE[backend][size]


def study_schedule(backend: str, size: str, largest_n_train: int) -> tuple[int, int]:
    """The study-wide training policy: (max_steps, steps_per_round) that every cell of a
    study gets, namely what its largest cell (`largest_n_train` conformers) needs for the
    size's epochs at the size's batch size -- one round is one epoch of the largest cell."""
    if largest_n_train < 1:
        raise MlipdivError(f"largest cell has {largest_n_train} training conformers; "
                           f"at least 1 is needed")
    settings = run_size(backend, size).training
    per_round = math.ceil(largest_n_train / settings.batch_size)
    return settings.max_epochs * per_round, per_round
