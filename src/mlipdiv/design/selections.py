"""The selection strategies, each one class that registers itself.

A `MoleculeSelection` orders a replicate's pool molecules (the first M are a cell's), a
`ConformerSelection` orders one molecule's pool conformers (the first C are its training
conformers). Config choices, CLI errors and the design's checks come from these registries.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from mlipdiv.data.store import ConformerStore
from mlipdiv.design.experiments.base import DesignPlanner
from mlipdiv.design.registry import choose, register
from mlipdiv.diversity.structural import maxmin_order

MOLECULE_SELECTIONS: dict[str, type[MoleculeSelection]] = {}
CONFORMER_SELECTIONS: dict[str, type[ConformerSelection]] = {}


class MoleculeSelection(ABC):
    """How a replicate orders the pool's molecules; a cell takes the first M."""

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        register(MOLECULE_SELECTIONS, cls, "molecule selection", ())

    @classmethod
    @abstractmethod
    def order(cls, planner: DesignPlanner, shuffled: list[str], n_needed: int,
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
        register(CONFORMER_SELECTIONS, cls, "conformer selection", ())

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
    return choose(MOLECULE_SELECTIONS, name, "design.molecule_selection")


def conformer_selection(name: str) -> type[ConformerSelection]:
    """The conformer selection called `name`; FieldError naming the choices."""
    return choose(CONFORMER_SELECTIONS, name, "design.conformer_selection")
