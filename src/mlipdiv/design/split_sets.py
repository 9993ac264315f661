"""A split in memory: the sets it holds (`SplitSet`, `Splits`), the options it is made with
(`SplitOptions`) and the state of one being carved (`Carving`).

These data classes know nothing of the test-set kinds, the leak check or the SPLITS files:
`mlipdiv.design.kinds`, `leaks` and `test_sets` build on them, and `mlipdiv.design.splits`
reads and writes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from mlipdiv.data.store import ConformerStore, MoleculeRecord
from mlipdiv.design.options import SplitOptions
from mlipdiv.errors import MlipdivError

ByMolecule = dict[str, np.ndarray]
  # inchikey -> conformer indices


# ---------------------------------------------------------------- the sets of a split
@dataclass
class SplitSet:
    """One set of (inchikey, conformer index) pairs drawn from the store at `store_path`."""

    name: str
    store_path: Path
    by_molecule: ByMolecule

    @cached_property
    def pairs(self) -> list[tuple[str, int]]:
        return [(key, int(i)) for key, indices in self.by_molecule.items() for i in indices]

    @property
    def n_molecules(self) -> int:
        return len(self.by_molecule)

    @property
    def n_conformers(self) -> int:
        return int(sum(len(v) for v in self.by_molecule.values()))

    def records(self, labels: str | None = None) -> Iterator[MoleculeRecord]:
        """The set's conformers, one molecule record at a time, with the energies and forces
        of the store's label set `labels` (None: its default labels)."""
        with ConformerStore(self.store_path) as store:
            for key, indices in self.by_molecule.items():
                yield store.molecule(key, indices, labels=labels)

    def restricted(self, molecules: Iterable[str]) -> SplitSet:
        """The same set holding only the given molecules (e.g. a cell's training molecules)."""
        keep = set(molecules)
        return SplitSet(self.name, self.store_path,
                        {k: v for k, v in self.by_molecule.items() if k in keep})


@dataclass
class Splits:
    """A SPLITS directory: the training pool and the test sets (`test_set_names()`)."""

    path: Path
    store_path: Path
    sets: dict[str, SplitSet]
    molecules: pd.DataFrame
    manifest: dict = field(default_factory=dict)

    @property
    def pool(self) -> list[tuple[str, int]]:
        return self.sets["pool"].pairs

    @property
    def pool_set(self) -> SplitSet:
        return self.sets["pool"]

    @property
    def test_sets(self) -> dict[str, SplitSet]:
        return {name: s for name, s in self.sets.items() if name != "pool"}

    def records(self, name: str, labels: str | None = None) -> Iterator[MoleculeRecord]:
        """Records of "pool" or a test set, read from the store that set comes from (at label
        set `labels`; None: the default labels)."""
        if name not in self.sets:
            raise MlipdivError(f"{self.path}: no set '{name}' (has {', '.join(self.sets)})")
        return self.sets[name].records(labels)


# ---------------------------------------------------------------- options
# ---------------------------------------------------------------- carving
def close_over_connectivity(keys: set[str], candidates: set[str]) -> set[str]:
    """Add the candidate molecules that share a connectivity block with `keys`."""
    blocks = {k[:14] for k in keys}
    return keys | {k for k in candidates if k[:14] in blocks}


@dataclass
class Carving:
    """A split being carved: the options, the store and its molecule table, the molecules still
    free (`candidates`), the sets made so far, and what the manifest will say about them."""

    options: SplitOptions
    store: ConformerStore
    store_path: Path
    table: pd.DataFrame
    rng: np.random.Generator
    candidates: set[str]
    sets: dict[str, SplitSet] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)
    pool: ByMolecule | None = None  # made from the candidates when first asked for

    @property
    def n_total(self) -> int:
        return len(self.table)

    @cached_property
    def counts(self) -> dict[str, int]:
        return dict(zip(self.table["inchikey"], self.table["n_conformers"].astype(int),
                        strict=True))

    def withhold_molecules(self, name: str, keys: set[str]) -> None:
        """Record a whole-molecule set and take it out of the candidates; molecules sharing a
        connectivity block with a withheld one (stereoisomers) go with it."""
        keys = close_over_connectivity(keys, self.candidates)
        self.candidates -= keys
        self.sets[name] = SplitSet(name, self.store_path,
                                   {k: np.arange(self.counts[k]) for k in sorted(keys)})

    def training_pool(self) -> ByMolecule:
        """Every conformer of the molecules left once the whole-molecule sets are carved."""
        if self.pool is None:
            if not self.candidates:
                raise MlipdivError("st/sf/ood: no molecule is left for the training pool")
            self.pool = {k: np.arange(self.counts[k]) for k in sorted(self.candidates)}
        return self.pool
