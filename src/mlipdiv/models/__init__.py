"""Real MLIPs behind one interface (`Potential`; one class per backend in `backends/`, found
through `registry`): train on conformers or a design cell, load a run, predict
energies/forces/features, hand out an ASE calculator."""

from mlipdiv.models.base import EnsembleCalculator, Potential
from mlipdiv.models.e0 import E0Fit, fit_e0
from mlipdiv.models.registry import backend_names, potential_class, run_size, study_schedule
from mlipdiv.models.run import (
    Prediction,
    TrainedRun,
    load_run,
    read_records,
    train,
    train_cell,
)
from mlipdiv.models.sizes import SIZES, RunSize, TrainingSettings
from mlipdiv.models.training import Schedule

__all__ = [
    "SIZES",
    "E0Fit",
    "EnsembleCalculator",
    "Potential",
    "Prediction",
    "RunSize",
    "Schedule",
    "TrainedRun",
    "TrainingSettings",
    "backend_names",
    "fit_e0",
    "load_run",
    "potential_class",
    "read_records",
    "run_size",
    "study_schedule",
    "train",
    "train_cell",
]
