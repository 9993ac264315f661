"""The experiments: one class in one module each, found here (every module of this package
registers its experiment when imported). `base.py` says what an experiment declares.

Report and study order follow each class's `order`, not the module names.
"""

from __future__ import annotations

import importlib
import pkgutil

from mlipdiv.design.experiments.base import (
    EXPERIMENTS,
    DesignPlanner,
    Experiment,
    log_grid,
    log_grid_within,
    value_ranges,
)
from mlipdiv.design.experiments.fixed_budget import FixedBudget
from mlipdiv.design.options import DesignOptions
from mlipdiv.design.registry import choose

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["EXPERIMENTS", "DesignPlanner", "Experiment", "budget_options", "experiment",
           "experiment_names", "experiments", "log_grid", "log_grid_within", "value_ranges"]


def experiments() -> list[type[Experiment]]:
    """The registered experiments, in report order."""
    return sorted(EXPERIMENTS.values(), key=lambda kind: (kind.order, kind.name))


def experiment(name: str) -> type[Experiment]:
    """The experiment called `name`; FieldError naming the choices."""
    return choose({kind.name: kind for kind in experiments()}, name, "design.experiment")


def experiment_names() -> tuple[str, ...]:
    """The registered experiments' names, in report order."""
    return tuple(kind.name for kind in experiments())


def budget_options(common: dict, budget: int, molecules: tuple[int, ...]) -> DesignOptions:
    """A design at one budget N over the molecule counts `molecules`, with the `common`
    options (`DesignOptions.common()`: selections, replicates, seed...): what verify compares
    and the adaptive pilot adds."""
    return DesignOptions(FixedBudget.name, budget=budget, grid=tuple(sorted(set(molecules))),
                         **common)
