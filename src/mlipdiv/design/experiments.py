"""The two experiments and the selection strategies, each one class that registers itself.

An `Experiment` says what it holds fixed (`fixed_field`: the budget N, or the molecules M),
which quantity its grid varies (`axis`: "M" or "C", the grid option `grid_field`), where the
study config keeps it (`config_key`), and how a grid value becomes a cell's size. The
planner in `designs.py` asks it; nothing else branches on an experiment's name.

A `MoleculeSelection` orders a replicate's pool molecules (the first M are a cell's), a
`ConformerSelection` orders one molecule's pool conformers (the first C are its training
conformers). Config choices, CLI errors and the design's checks come from these registries.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mlipdiv.diversity.structural import maxmin_order
from mlipdiv.errors import FieldError

if TYPE_CHECKING:  # the planner hands itself to the strategies
    from mlipdiv.data.store import ConformerStore
    from mlipdiv.design.designs import DesignOptions, _Planner


def _register(registry: dict, cls: type, what: str, declared: tuple[str, ...]) -> None:
    """Check a strategy class's declarations and add it to its registry by `name`."""
    if "name" not in cls.__dict__:  # an intermediate base
        return
    missing = [attribute for attribute in declared if not hasattr(cls, attribute)]
    if missing:
        raise TypeError(f"{what} {cls.__name__} must declare {', '.join(missing)}")
    if registry.setdefault(cls.name, cls) is not cls:
        raise TypeError(f"{what} {cls.name} is defined twice")


def _choose(registry: dict, name: str, field: str):
    if name not in registry:
        raise FieldError(field, name, f"choose from {', '.join(registry)}")
    return registry[name]


# ---------------------------------------------------------------- experiments
EXPERIMENTS: dict[str, type[Experiment]] = {}


class Experiment(ABC):
    """One experiment design (see the module docstring for what it declares)."""

    name: ClassVar[str]
    axis: ClassVar[str]  # the quantity the grid varies: "M" or "C"
    fixed_field: ClassVar[str]  # the DesignOptions field held fixed: "budget" or "molecules"
    fixed_words: ClassVar[str]  # how errors name it: "a budget", "M"
    grid_field: ClassVar[str]  # the grid option (flag --molecules-grid / --conformers-grid)
    config_key: ClassVar[str]  # its section in a study config: "fixed_budget"
    config_grid_key: ClassVar[str]  # the grid's key in that section

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        _register(EXPERIMENTS, cls, "experiment", ("axis", "fixed_field", "fixed_words",
                                                   "grid_field", "config_key",
                                                   "config_grid_key"))

    @classmethod
    def field(cls, name: str) -> str:
        """An option of this experiment as errors name it: `fixed_budget.budget`."""
        return f"{cls.config_key}.{name}"

    @classmethod
    def check(cls, options: DesignOptions) -> None:
        """The fixed quantity is given and positive."""
        value = getattr(options, cls.fixed_field)
        if value is None or value < 1:
            raise FieldError(cls.field(cls.fixed_field), value,
                             f"{cls.name} needs {cls.fixed_words} >= 1")

    @classmethod
    @abstractmethod
    def check_sizes(cls, planner: _Planner) -> None:
        """The pool can hold the fixed quantity and the grid (FieldError naming what not)."""

    @classmethod
    @abstractmethod
    def largest_m(cls, planner: _Planner) -> int:
        """Molecules the largest cell of a replicate needs."""

    @classmethod
    @abstractmethod
    def automatic_grid(cls, planner: _Planner) -> tuple[int, ...]:
        """Log-spaced grid values between the smallest and largest cell the pool can fill,
        only values the pool can fill (`planner.grid_note` says which were left out)."""

    @classmethod
    @abstractmethod
    def what_fits(cls, planner: _Planner, value: int) -> str:
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


class FixedBudget(Experiment):
    """N training conformers; for each M of the grid, M molecules × C = N / M conformers."""

    name = "fixed-budget"
    axis = "M"
    fixed_field = "budget"
    fixed_words = "a budget"
    grid_field = "fixed_budget.molecules_grid"
    config_key = "fixed_budget"
    config_grid_key = "molecules"

    @classmethod
    def check_sizes(cls, planner):
        options, n_pool = planner.options, len(planner.keys)
        budget, total = options.budget, int(planner.available.sum())
        if budget + planner.n_valid(budget) > total:
            raise FieldError(cls.field("budget"), budget, f"with {planner.n_valid(budget)} "
                             f"validation conformers it exceeds the pool's {total} conformers")
        for m in options.grid or ():
            if m > budget:
                raise FieldError(cls.grid_field, f"M={m}", f"larger than budget {budget} gives "
                                 "C = 0 conformers per molecule")
            if m > n_pool:
                raise FieldError(cls.grid_field, f"M={m}", f"the pool has only {n_pool} "
                                 "molecules")

    @classmethod
    def largest_m(cls, planner):
        options = planner.options
        return max(options.grid or [min(options.budget, len(planner.keys))])

    @classmethod
    def automatic_grid(cls, planner):
        options, budget = planner.options, planner.options.budget
        ms = np.arange(1, min(budget, len(planner.keys)) + 1)
        fits = planner.fillable(ms)
        if not fits.any():
            raise FieldError(cls.field("budget"), budget, "no molecule count M lets the "
                             "pool's molecules hold it; use allow_short or a smaller budget")
        # capacity falls as M grows (a molecule short of conformers enters the order) while
        # the conformers each molecule needs fall too: the fitting M need not be one range
        fitting = ms[fits]
        inside = ms[(ms > fitting[0]) & (ms < fitting[-1])]
        left_out = np.setdiff1d(inside, fitting)
        planner.grid_note = (
            f"automatic grid: {fits.sum()} of the M from 1 to {ms[-1]} can be filled from "
            f"every replicate's molecule order ({value_ranges(fitting)})"
            + (f"; M = {value_ranges(left_out)} left out (a molecule among the first M holds "
               "too few conformers)" if len(left_out) else ""))
        return log_grid_within(fitting, options.grid_points)

    @classmethod
    def what_fits(cls, planner, value):
        ms = np.arange(1, min(planner.options.budget, len(planner.keys)) + 1)
        fitting = ms[planner.fillable(ms)]
        if not len(fitting):
            return (f"no M fills budget {planner.options.budget}; use allow_short or a "
                    "smaller budget")
        above = fitting[fitting > value]
        nearest = (f"the smallest M above {value} that fits is {above[0]}; " if len(above)
                   and above[0] != fitting[0] else "")
        return (f"{nearest}the smallest M that fits budget {planner.options.budget} is "
                f"{fitting[0]} (M that fit: {value_ranges(fitting)})")

    @classmethod
    def cell_size(cls, options, value):
        return value, options.budget


class FixedMolecules(Experiment):
    """M molecules; for each C of the grid, C conformers per molecule."""

    name = "fixed-molecules"
    axis = "C"
    fixed_field = "molecules"
    fixed_words = "M"
    grid_field = "fixed_molecules.conformers_grid"
    config_key = "fixed_molecules"
    config_grid_key = "conformers"

    @classmethod
    def check_sizes(cls, planner):
        n_pool = len(planner.keys)
        if planner.options.molecules > n_pool:
            raise FieldError(cls.field("molecules"), planner.options.molecules,
                             f"the pool has only {n_pool} molecules")

    @classmethod
    def largest_m(cls, planner):
        return planner.options.molecules

    @classmethod
    def automatic_grid(cls, planner):
        options, capacity = planner.options, planner.capacity()
        m = options.molecules
        cs = np.arange(1, int(capacity[m - 1]) + 1)  # C + validation fit the smallest of M
        fits = planner.fillable(cs)
        if not fits.any():
            raise FieldError(cls.field("molecules"), m, f"the first {m} molecules hold "
                             f"{int(capacity[m - 1])} conformer(s), too few for C = 1 plus "
                             "validation; use allow_short or a smaller M")
        planner.grid_note = (f"automatic grid: C from 1 to {int(cs[fits][-1])}, the most the "
                             f"first {m} molecules of every replicate's order hold")
        return log_grid(1, int(cs[fits][-1]), options.grid_points)

    @classmethod
    def what_fits(cls, planner, value):
        m = planner.options.molecules
        cs = np.arange(1, value)
        fitting = cs[planner.fillable(cs)]
        largest = int(fitting[-1]) if len(fitting) else None
        if largest is None:
            return f"no C fits M = {m}; use allow_short or a smaller M"
        return f"the largest C that fits M = {m} is {largest}"

    @classmethod
    def cell_size(cls, options, value):
        return options.molecules, options.molecules * value


def experiment(name: str) -> type[Experiment]:
    """The experiment called `name`; FieldError naming the choices."""
    return _choose(EXPERIMENTS, name, "design.experiment")


def experiment_names() -> tuple[str, ...]:
    """The registered experiments, in report order."""
    return tuple(EXPERIMENTS)


# ---------------------------------------------------------------- selections
MOLECULE_SELECTIONS: dict[str, type[MoleculeSelection]] = {}
CONFORMER_SELECTIONS: dict[str, type[ConformerSelection]] = {}


class MoleculeSelection(ABC):
    """How a replicate orders the pool's molecules; a cell takes the first M."""

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        _register(MOLECULE_SELECTIONS, cls, "molecule selection", ())

    @classmethod
    @abstractmethod
    def order(cls, planner: _Planner, shuffled: list[str], n_needed: int,
              replicate: int) -> list[str]:
        """Every pool molecule, `shuffled` (the replicate's random order) reordered."""


class RandomMolecules(MoleculeSelection):
    """The replicate's random order."""

    name = "random"

    @classmethod
    def order(cls, planner, shuffled, n_needed, replicate):
        return shuffled


class MaxMinMolecules(MoleculeSelection):
    """RDKit MaxMinPicker on Morgan fingerprints over the shuffled pool (the replicate's seed
    picks the start) for the first `n_needed`, then the rest in random order."""

    name = "maxmin"

    @classmethod
    def order(cls, planner, shuffled, n_needed, replicate):
        picked = maxmin_order([planner.fingerprint(k) for k in shuffled], n_needed,
                              seed=planner.options.seed * 1000 + replicate)
        chosen = [shuffled[i] for i in picked]
        chosen_set = set(chosen)
        return chosen + [k for k in shuffled if k not in chosen_set]


class ConformerSelection(ABC):
    """How one molecule's pool conformers are ordered; a cell takes the first C."""

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        _register(CONFORMER_SELECTIONS, cls, "conformer selection", ())

    @classmethod
    @abstractmethod
    def order(cls, store: ConformerStore, key: str, available: np.ndarray,
              rng: np.random.Generator, n_needed: int) -> np.ndarray:
        """The store indices `available` reordered."""


class RandomConformers(ConformerSelection):
    """A random permutation."""

    name = "random"

    @classmethod
    def order(cls, store, key, available, rng, n_needed):
        return rng.permutation(available)


class FarthestConformers(ConformerSelection):
    """scikit-matter FPS on sorted inverse interatomic distances for the first `n_needed`
    (from a random start), then the rest in random order."""

    name = "farthest"

    @classmethod
    def order(cls, store, key, available, rng, n_needed):
        record = store.molecule(key, available)
        order = farthest_point_order(record.positions, min(n_needed, len(available)),
                                     int(rng.integers(len(available))))
        rest = np.setdiff1d(np.arange(len(available)), order)
        return available[np.concatenate([order, rng.permutation(rest)])]


def inverse_distance_descriptor(positions: np.ndarray) -> np.ndarray:
    """Sorted inverse interatomic distances per conformer, (n_conf, n_pairs): invariant to
    rotation, translation and atom permutation."""
    i, j = np.triu_indices(positions.shape[1], k=1)
    distances = np.linalg.norm(positions[:, i] - positions[:, j], axis=-1)
    return np.sort(1.0 / distances, axis=1)


def farthest_point_order(positions: np.ndarray, n_select: int, first: int) -> np.ndarray:
    """Indices of `n_select` conformers in farthest-point order (scikit-matter FPS) in the
    inverse-distance descriptor, starting from conformer `first`."""
    from skmatter.sample_selection import FPS  # scikit-matter is slow to import

    if n_select <= 1 or len(positions) == 1:
        return np.array([first])[:n_select]
    selector = FPS(n_to_select=n_select, initialize=int(first))
    selector.fit(inverse_distance_descriptor(positions))
    return np.asarray(selector.selected_idx_, dtype=np.int64)


def molecule_selection(name: str) -> type[MoleculeSelection]:
    """The molecule selection called `name`; FieldError naming the choices."""
    return _choose(MOLECULE_SELECTIONS, name, "design.molecule_selection")


def conformer_selection(name: str) -> type[ConformerSelection]:
    """The conformer selection called `name`; FieldError naming the choices."""
    return _choose(CONFORMER_SELECTIONS, name, "design.conformer_selection")
