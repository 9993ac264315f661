"""The one-command study: config, runner (local or Ray executor), error-surface fit and budget
advice."""

from mlipdiv.study.advise import Advice, advise, feasible_designs, parse_weights
from mlipdiv.study.config import (
    PRESETS,
    StudyConfig,
    config_differences,
    load_config,
    load_preset,
    parse_config,
    preset_text,
)
from mlipdiv.study.curves import fit_results
from mlipdiv.study.fit import FORMS, SurfaceFit, fit_surface, load_fits, write_fits
from mlipdiv.study.layout import StudyPaths
from mlipdiv.study.runner import run_study

__all__ = [
    "FORMS",
    "PRESETS",
    "Advice",
    "StudyConfig",
    "StudyPaths",
    "SurfaceFit",
    "advise",
    "config_differences",
    "feasible_designs",
    "fit_results",
    "fit_surface",
    "load_config",
    "load_fits",
    "load_preset",
    "parse_config",
    "parse_weights",
    "preset_text",
    "run_study",
    "write_fits",
]
