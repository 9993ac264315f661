"""Real MLIPs behind one interface (`Potential`; one class per backend in `backends/`, found
through `registry`): train a `TrainingSpec` on conformers (`train_run`), load a run and
predict energies/forces/features or hand out an ASE calculator (`trained`), read the files
they work on (`frames`)."""

from mlipdiv.models.base import EnsembleCalculator, Potential
from mlipdiv.models.e0 import E0Fit, fit_e0
from mlipdiv.models.frames import read_frames, read_records
from mlipdiv.models.registry import backend_names, potential_class, run_size, study_schedule
from mlipdiv.models.sizes import SIZES, RunSize, TrainingSettings
from mlipdiv.models.spec import TrainingSpec, resolve_device
from mlipdiv.models.streaming import StoreTrainingSet, streamed_training_set
from mlipdiv.models.train_run import train
from mlipdiv.models.trained import Prediction, TrainedRun, load_run, predict_frames
from mlipdiv.models.training import Schedule

__all__ = [
    "SIZES",
    "E0Fit",
    "EnsembleCalculator",
    "Potential",
    "Prediction",
    "RunSize",
    "Schedule",
    "StoreTrainingSet",
    "TrainedRun",
    "TrainingSettings",
    "TrainingSpec",
    "backend_names",
    "fit_e0",
    "load_run",
    "potential_class",
    "predict_frames",
    "read_frames",
    "read_records",
    "resolve_device",
    "run_size",
    "streamed_training_set",
    "study_schedule",
    "train",
]
