"""What an experiment is: the `Experiment` base class, its registry, and the public planner
protocol it is handed.

An `Experiment` declares, as class attributes, what it holds fixed (`fixed_field`: the budget N,
the molecules M or the conformers per molecule C, a `DesignOptions` field and its config key),
which quantity its grid varies (`axis`: "M" or "C"), where the study config keeps it
(`config_key`, its section model `Config`) and its place in the report (`order`). Its class
methods answer everything a design, a study or a report asks of it: the grid, the size of a
cell, the largest training set, the cell that sets the study's own advice budget, and the
report's sentence. A subclass is checked when it is defined (a missing declaration is a
TypeError at import) and registers itself; nothing else in mlipdiv names an experiment.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from mlipdiv.design.options import DesignOptions, StrictSection
from mlipdiv.design.registry import register
from mlipdiv.errors import FieldError

if TYPE_CHECKING:  # a type only: the CLI's experiment choices do not wait for pandas
    import pandas as pd

EXPERIMENTS: dict[str, type[Experiment]] = {}
AXIS_FIELDS = {"M": "molecules", "C": "conformers"}  # the DesignOptions field of each axis
AXIS_WORDS = {"M": "molecules M", "C": "conformers per molecule C"}


class DesignPlanner(Protocol):
    """What an experiment may ask of the planner drawing its design (`designs.Planner`)."""

    options: DesignOptions
    keys: list[str]  # the pool's molecules (InChIKeys), sorted
    available: np.ndarray  # pool conformers of each molecule of `keys`
    grid_note: str  # an automatic grid says here which values it left out

    def n_valid(self, n_train: int) -> int:
        """Validation conformers of a cell with `n_train` training conformers."""

    def capacity(self) -> np.ndarray:
        """capacity[p]: conformers every replicate's first p+1 molecules each hold."""

    def fillable(self, values: np.ndarray) -> np.ndarray:
        """Whether the cell at each grid value can be filled in every replicate."""

    def fingerprint(self, key: str) -> Any:
        """The Morgan fingerprint of a pool molecule."""


def check_grid(values: list[int], name: str) -> None:
    """A config grid: not empty, every value >= 1, no repeats (ValueError for pydantic)."""
    if not values:
        raise ValueError(f"{name} grid is empty")
    if min(values) < 1:
        raise ValueError(f"{name} grid has a value below 1 ({min(values)})")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} grid repeats a value")


class Experiment(ABC):
    """One experiment design (see the module docstring for what it declares)."""

    name: ClassVar[str]
    order: ClassVar[int]  # place in the report and in the study's steps
    axis: ClassVar[str]  # the quantity the grid varies: "M" or "C"
    fixed_field: ClassVar[str]  # the DesignOptions field held fixed, also its config key
    fixed_words: ClassVar[str]  # how errors name it: "a budget", "M"
    config_key: ClassVar[str]  # its section in a study config: "fixed_budget"
    Config: ClassVar[type[StrictSection]]  # that section's model

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        register(EXPERIMENTS, cls, "experiment", ("order", "axis", "fixed_field",
                                                  "fixed_words", "config_key", "Config"))
        if "name" in cls.__dict__ and cls.axis not in AXIS_FIELDS:
            raise TypeError(f"experiment {cls.name}: axis must be 'M' or 'C'")

    # ------------------------------------------------------------ names
    @classmethod
    def grid_key(cls) -> str:
        """The grid's key in the config section: the varied axis's field ("molecules")."""
        return AXIS_FIELDS[cls.axis]

    @classmethod
    def grid_option(cls) -> str:
        """The grid's option name (flag --molecules-grid / --conformers-grid)."""
        return f"{cls.grid_key()}_grid"

    @classmethod
    def field(cls, name: str) -> str:
        """An option of this experiment as errors name it: `fixed_budget.budget`."""
        return f"{cls.config_key}.{name}"

    @classmethod
    def grid_field(cls) -> str:
        """The grid as errors name it (`fixed_budget.molecules_grid` → --molecules-grid)."""
        return cls.field(cls.grid_option())

    # ------------------------------------------------------------ from the config
    @classmethod
    def options(cls, section: StrictSection, common: dict) -> DesignOptions:
        """The DesignOptions of this experiment's config section; `common` holds the options
        every experiment shares (`DesignOptions.common`)."""
        grid = getattr(section, cls.grid_key())
        return DesignOptions(cls.name, grid=tuple(grid) if grid else None,
                             **{cls.fixed_field: getattr(section, cls.fixed_field)}, **common)

    @classmethod
    def configured_values(cls, section: StrictSection) -> list[int]:
        """The grid values of the section ([] for an automatic grid)."""
        return list(getattr(section, cls.grid_key()) or [])

    @classmethod
    def configured_molecules(cls, section: StrictSection) -> list[int]:
        """The molecule counts M the section names (verify compares against them)."""
        if cls.axis == "M":
            return cls.configured_values(section)
        return [section.molecules]

    @classmethod
    @abstractmethod
    def largest_training_set(cls, section: StrictSection) -> int:
        """Training conformers of the experiment's largest cell (sets the equal schedule)."""

    @classmethod
    @abstractmethod
    def advice_cell(cls, section: StrictSection) -> tuple[int, int]:
        """(M, training conformers) of the cell whose cost is the study's own advice budget."""

    @classmethod
    @abstractmethod
    def check_generated(cls, section: StrictSection, n_molecules: int, conformers: int) -> None:
        """The section fits data generated as n_molecules × conformers (ValueError if not)."""

    @classmethod
    @abstractmethod
    def describe(cls, section: StrictSection, results: pd.DataFrame) -> str:
        """The report's setup sentence ("fixed-budget: N = 64 conformers split as M ∈ {..}");
        `results` holds this experiment's result rows."""

    # ------------------------------------------------------------ drawing a design
    @classmethod
    def check(cls, options: DesignOptions) -> None:
        """The fixed quantity is given and positive."""
        value = getattr(options, cls.fixed_field)
        if value is None or value < 1:
            raise FieldError(cls.field(cls.fixed_field), value,
                             f"{cls.name} needs {cls.fixed_words} >= 1")

    @classmethod
    @abstractmethod
    def check_sizes(cls, planner: DesignPlanner) -> None:
        """The pool can hold the fixed quantity and the grid (FieldError naming what not)."""

    @classmethod
    @abstractmethod
    def largest_m(cls, planner: DesignPlanner) -> int:
        """Molecules the largest cell of a replicate needs."""

    @classmethod
    @abstractmethod
    def automatic_grid(cls, planner: DesignPlanner) -> tuple[int, ...]:
        """Log-spaced grid values between the smallest and largest cell the pool can fill,
        only values the pool can fill (`planner.grid_note` says which were left out)."""

    @classmethod
    @abstractmethod
    def what_fits(cls, planner: DesignPlanner, value: int) -> str:
        """For a grid value the pool cannot fill: the nearest that it can ("the largest C
        that fits M = 4 is 5"), for the one-line refusal."""

    @classmethod
    @abstractmethod
    def cell_size(cls, options: DesignOptions, value: int) -> tuple[int, int]:
        """(M, training conformers) of the cell at grid value `value`."""


def log_grid(low: int, high: int, points: int) -> tuple[int, ...]:
    """Up to `points` whole numbers spaced evenly on a log scale from `low` to `high`."""
    values = np.unique(np.round(np.geomspace(low, high, points)).astype(int))
    return tuple(int(v) for v in values)


def log_grid_within(allowed: np.ndarray, points: int) -> tuple[int, ...]:
    """`log_grid` between the smallest and largest of the sorted values `allowed`, each
    point not allowed moved to the nearest allowed value (the lower on a tie)."""
    grid = np.array(log_grid(int(allowed[0]), int(allowed[-1]), points))
    nearest = np.abs(grid[:, None] - allowed[None, :]).argmin(axis=1)
    return tuple(int(v) for v in np.unique(allowed[nearest]))


def value_ranges(values: np.ndarray) -> str:
    """Sorted whole numbers as ranges: [1, 2, 3, 7, 9, 10] -> "1-3, 7, 9-10"."""
    breaks = np.flatnonzero(np.diff(values) != 1)
    starts = np.concatenate([[0], breaks + 1])
    stops = np.concatenate([breaks, [len(values) - 1]])
    return ", ".join(str(values[a]) if a == b else f"{values[a]}-{values[b]}"
                     for a, b in zip(starts, stops, strict=True))


def values_text(values) -> str:
    """Grid values as a set: "{1, 2, 4}"."""
    return "{" + ", ".join(str(int(v)) for v in sorted(values)) + "}"
