"""Test-set kinds: every held-out set (CF, ST, SF, OOD) is one class that says what it is, how
it is carved out of a store and which leak rules guard it.

A kind declares, as class attributes checked when the class is defined:

* `name` ("cf": its file in SPLITS, its config key, its result rows), `label` ("CF"),
  `title` ("unseen conformers");
* `order`: where it is listed (manifests, configs, results, reports: CF, ST, SF, OOD) and
  `carve_order`: when it is carved (shifts first, CF last: CF draws from what the others leave);
* `whole_molecules`: it withholds whole molecules (then "connectivity" must be among its leak
  rules: no stereoisomer of a withheld molecule may stay in the pool);
* `leak_rules`: the names of its rules; rule `x` is the method `x_leaks(splits, threshold)`.
  Every set is also checked for overlapping (inchikey, conformer) pairs;
* `scored_on_training_molecules`: a run is scored only on the set's molecules it trained on
  (CF: unseen conformers *of the cell's own molecules*);
* `advice_weight`: its weight in `advise` when the user gives none (0: not weighted).

Defining a subclass registers it; `test_set_names()` is what splits, configs, the leak check,
the metrics and the report iterate, and `scored_sets` is how a run is scored on a split's test
sets. The concrete kinds live in `test_sets.py`, which the package `mlipdiv.design` imports, so
the registry is full whenever this module is in use.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from mlipdiv.design.split_sets import Carving, Splits, SplitSet
from mlipdiv.errors import MlipdivError

DECLARED = ("name", "label", "title", "order", "carve_order", "whole_molecules", "leak_rules")
REGISTERED: dict[str, type[TestSetKind]] = {}


@dataclass(frozen=True)
class Leak:
    """One violation: its kind, the test set and what leaked."""

    kind: str
    test_set: str
    detail: str

    def __str__(self) -> str:
        return f"{self.test_set}: {self.kind}: {self.detail}"


class TestSetKind(ABC):
    """One kind of held-out test set (see the module docstring for what it declares)."""

    __test__ = False  # not a pytest test class, despite the name

    name: ClassVar[str]
    label: ClassVar[str]
    title: ClassVar[str]
    order: ClassVar[int]
    carve_order: ClassVar[int]
    whole_molecules: ClassVar[bool]
    leak_rules: ClassVar[tuple[str, ...]]
    scored_on_training_molecules: ClassVar[bool] = False
    advice_weight: ClassVar[float] = 1.0

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:  # an intermediate base, not a kind
            return
        missing = [attribute for attribute in DECLARED if not hasattr(cls, attribute)]
        if missing:
            raise TypeError(f"test-set kind {cls.__name__} must declare {', '.join(missing)}")
        if cls.whole_molecules and "connectivity" not in cls.leak_rules:
            raise TypeError(f"test-set kind {cls.name} withholds whole molecules, so its leak "
                            "rules must include 'connectivity'")
        unknown = [r for r in cls.leak_rules if not callable(getattr(cls, f"{r}_leaks", None))]
        if unknown:
            raise TypeError(f"test-set kind {cls.name}: no method for leak rule(s) "
                            f"{', '.join(f'{r}_leaks' for r in unknown)}")
        if REGISTERED.setdefault(cls.name, cls) is not cls:
            raise TypeError(f"test-set kind {cls.name} is defined twice "
                            f"({REGISTERED[cls.name].__name__}, {cls.__name__})")

    @classmethod
    @abstractmethod
    def carve(cls, carving: Carving) -> None:
        """Carve this set (when the options ask for it) from `carving`'s candidates or pool,
        recording it there; say why in `carving.messages` when it is skipped."""

    @classmethod
    def leaks(cls, splits: Splits, threshold: float) -> list[Leak]:
        """Every leak of this set against the pool, by the kind's declared rules."""
        return [leak for rule in cls.leak_rules
                for leak in getattr(cls, f"{rule}_leaks")(splits, threshold)]

    @classmethod
    def connectivity_leaks(cls, splits: Splits, threshold: float) -> list[Leak]:
        """No first InChIKey block (14 characters; stereoisomers share it) of a withheld
        molecule occurs in the pool."""
        pool_blocks = {key[:14] for key in splits.pool_set.by_molecule}
        return [Leak("connectivity", cls.name, f"{key} shares block {key[:14]} with the pool")
                for key in splits.sets[cls.name].by_molecule if key[:14] in pool_blocks]


def test_set_kinds(carving: bool = False) -> list[type[TestSetKind]]:
    """The registered kinds in listing order (with `carving`: in the order they are carved)."""
    return sorted(REGISTERED.values(),
                  key=lambda kind: kind.carve_order if carving else kind.order)


def test_set_names() -> tuple[str, ...]:
    """The names of the registered kinds in listing order ("cf", "st", "sf", "ood")."""
    return tuple(kind.name for kind in test_set_kinds())


def default_advice_weights() -> dict[str, float]:
    """The advice weights used when none are given: each kind's `advice_weight`, where > 0."""
    return {kind.name: kind.advice_weight for kind in test_set_kinds() if kind.advice_weight > 0}


def test_set_kind(name: str) -> type[TestSetKind]:
    """The kind called `name`; MlipdivError naming the choices."""
    kinds = {kind.name: kind for kind in test_set_kinds()}
    if name not in kinds:
        raise MlipdivError(f"'{name}' is not a test set (choose from {', '.join(kinds)})")
    return kinds[name]


def scored_sets(splits: Splits, trained_on: Iterable[str] | None
                ) -> Iterator[tuple[str, SplitSet, bool]]:
    """(name, set, restricted) for each test set of `splits` as a run is scored on it: a kind
    scored on training molecules (CF) keeps only the run's own training molecules `trained_on`
    (when known: then `restricted` is True)."""
    for name, split_set in splits.test_sets.items():
        if trained_on is not None and test_set_kind(name).scored_on_training_molecules:
            yield name, split_set.restricted(trained_on), True
        else:
            yield name, split_set, False
