"""Run sizes: what a size is, and the shared training loop's settings.

As MLIPAudit does with DEV/FAST/STANDARD: `dev` trains a tiny model in seconds (tests), `fast`
is the quick study's size on 2 CPU cores (a few hundred conformers, tens of seconds per model),
`standard` is published scale for a GPU. Each backend declares its three sizes with its class
(`mlipdiv.models.backends`); the chosen size is written into every run's log and `run.json`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

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
