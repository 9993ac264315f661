"""`mlipdiv split`: held-out test sets carved out of a store, the rest left as the training pool.

Each test set is one test-set kind (`mlipdiv.design.kinds`): a small class, as SchNetPack's
splitting strategies, that carves itself and declares its leak rules:

* CF (`ConformerSplit`): k conformers withheld from pool molecules, which keep the rest; by
  default from every pool molecule with more than k conformers (`cf="all"`), so that each
  design cell can be scored on unseen conformers of exactly its own training molecules. Pool
  conformers within 0.05 Angstrom RMSD of a withheld one are dropped (MD duplicates).
* ST (`StructureSplit`): whole molecules withheld whose Murcko scaffold stays in the pool.
* SF (`ScaffoldSplit`): whole ring-scaffold groups withheld (MoleculeNet / nablaDFT scaffold
  split); an all-acyclic store has no scaffold groups and SF is skipped with a message.
* OOD (`OutOfDistribution`): a registered shift (`OodShift`: `SizeShift`, `ElementShift`,
  `ClusterShift`) or a second store.

Whole-molecule sets move connectivity groups (molecules sharing the first InChIKey block, so
stereoisomers travel together). Carving order: OOD, SF, ST, CF. A SPLITS directory holds the
(inchikey, conformer) pairs of each set as Parquet, the per-molecule table, and a manifest with
the options, seed, counts and the store's checksum; it is written only after the leak check
passes, and loading it against a changed store is refused.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from ase.data import atomic_numbers as symbol_to_number
from ase.data import chemical_symbols

from mlipdiv.atomic import atomic_directory
from mlipdiv.data.store import ConformerStore, MoleculeRecord
from mlipdiv.design.kinds import (
    Leak,
    TestSetKind,
    test_set_kind,
    test_set_kinds,
    test_set_names,
)
from mlipdiv.design.leaks import assert_no_leaks, near_duplicate_conformers
from mlipdiv.diversity.conformational import DUPLICATE_RMSD_ANGSTROM
from mlipdiv.diversity.structural import morgan_fingerprint, scaffolds
from mlipdiv.errors import FieldError, MlipdivError, check_seed
from mlipdiv.files import read_json, read_parquet, reading
from mlipdiv.locking import locks_output

SPLITS_FORMAT = "mlipdiv-splits"
MANIFEST = "manifest.json"
MOLECULE_TABLE = "molecules.parquet"

ByMolecule = dict[str, np.ndarray]  # inchikey -> conformer indices
CF_ALL = "all"  # every eligible pool molecule withholds CF conformers
# the CF size as errors name it: `split.cf` renders as the flag --cf (the config key is
# split.cf_molecules)
CF_FIELD = "split.cf"


# ---------------------------------------------------------------- sets and their files
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

    def records(self) -> Iterator[MoleculeRecord]:
        """The set's conformers, one molecule record at a time."""
        with ConformerStore(self.store_path) as store:
            for key, indices in self.by_molecule.items():
                yield store.molecule(key, indices)

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

    def scored_sets(self, trained_on: Iterable[str] | None
                    ) -> Iterator[tuple[str, SplitSet, bool]]:
        """(name, set, restricted) for each test set as a run is scored on it: a kind scored
        on training molecules (CF) keeps only the run's own training molecules `trained_on`
        (when known: then `restricted` is True)."""
        for name, split_set in self.test_sets.items():
            if trained_on is not None and test_set_kind(name).scored_on_training_molecules:
                yield name, split_set.restricted(trained_on), True
            else:
                yield name, split_set, False

    def records(self, name: str) -> Iterator[MoleculeRecord]:
        """Records of "pool" or a test set, read from the store that set comes from."""
        if name not in self.sets:
            raise MlipdivError(f"{self.path}: no set '{name}' (has {', '.join(self.sets)})")
        return self.sets[name].records()

SPLITS_REMEDY = "rerun `mlipdiv split` (a study: rerun it with --force)"


def load_splits(path: str | os.PathLike, verify: bool = True) -> Splits:
    """Read a SPLITS directory; with `verify`, refuse it if a store changed since the split."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise MlipdivError(f"{path}: not a SPLITS directory (no {MANIFEST})")
    manifest = read_json(manifest_path, "splits manifest", SPLITS_REMEDY)
    with reading(manifest_path, "splits manifest", SPLITS_REMEDY):
        if manifest.get("format") != SPLITS_FORMAT:
            raise MlipdivError(f"{manifest_path}: not an mlipdiv splits manifest")
        store_path = _resolve_store(path, manifest["store"])
        ood_store = manifest.get("ood_store")
        ood_path = _resolve_store(path, ood_store) if ood_store else store_path
        if verify:
            _verify_checksum(store_path, manifest["store"])
            if ood_store:
                _verify_checksum(ood_path, ood_store)
    sets = {}
    for name in ("pool", *test_set_names()):
        file = path / f"{name}.parquet"
        if file.is_file():
            sets[name] = SplitSet(name, ood_path if name == "ood" else store_path,
                                  read_pairs(file))
        elif name == "pool" or name in manifest.get("counts", {}):
            raise MlipdivError(f"{file}: missing split table; {SPLITS_REMEDY}")
    molecules = read_parquet(path / MOLECULE_TABLE, "splits molecule table", SPLITS_REMEDY)
    return Splits(path, store_path, sets, molecules, manifest)


def read_pairs(path: Path) -> ByMolecule:
    """(inchikey, conformer) pairs of a Parquet file grouped by molecule (file order kept)."""
    with reading(path, "split table", SPLITS_REMEDY):
        table = pq.read_table(path).to_pandas()
        grouped: ByMolecule = {}
        for key, frame in table.groupby("inchikey", sort=False):
            grouped[str(key)] = frame["conformer"].to_numpy(dtype=np.int64)
    return grouped


def write_pairs(by_molecule: ByMolecule, path: Path) -> None:
    keys = [k for k, v in by_molecule.items() for _ in range(len(v))]
    indices = np.concatenate(list(by_molecule.values())) if by_molecule else np.empty(0, int)
    table = pa.table({"inchikey": pa.array(keys, pa.string()).dictionary_encode(),
                      "conformer": pa.array(indices.astype(np.int32))})
    pq.write_table(table, path)


def _resolve_store(splits_dir: Path, entry: dict) -> Path:
    relative = splits_dir / entry["relative_path"]
    return relative if relative.exists() else Path(entry["path"])


def _verify_checksum(store_path: Path, entry: dict) -> None:
    """The store's checksum (without the damaged molecules the split left out) must be the
    manifest's."""
    with ConformerStore(store_path) as store:
        if store.checksum(entry.get("damaged_molecules", ())) != entry["checksum"]:
            raise MlipdivError(
                f"{store_path}: the store changed since the split was made (checksum mismatch); "
                "split it again"
            )


def _store_entry(store: ConformerStore, splits_dir: Path) -> dict:
    absolute = store.path.resolve()
    return {"path": str(absolute),
            "relative_path": os.path.relpath(absolute, splits_dir.resolve()),
            "checksum": store.checksum(),
            **({"damaged_molecules": sorted(store.damaged)} if store.damaged else {})}


# ---------------------------------------------------------------- the molecule table
def molecule_table(store: ConformerStore) -> pd.DataFrame:
    """One row per molecule from group attributes and atomic numbers only (no positions):
    inchikey, connectivity block, smiles, scaffolds, heavy atoms, elements, conformers."""
    rows = []
    for key, smiles, numbers, n_conformers in store.overview():
        murcko, generic = scaffolds(smiles)
        rows.append({
            "inchikey": key, "connectivity": key[:14], "smiles": smiles,
            "scaffold": murcko, "generic_scaffold": generic,
            "n_heavy_atoms": int((numbers > 1).sum()),
            "elements": ",".join(sorted({chemical_symbols[int(z)] for z in numbers})),
            "n_conformers": n_conformers,
        })
    return pd.DataFrame(rows, columns=["inchikey", "connectivity", "smiles", "scaffold",
                                       "generic_scaffold", "n_heavy_atoms", "elements",
                                       "n_conformers"])


def _close_over_connectivity(keys: set[str], candidates: set[str]) -> set[str]:
    """Add the candidate molecules that share a connectivity block with `keys`."""
    blocks = {k[:14] for k in keys}
    return keys | {k for k in candidates if k[:14] in blocks}


def _units(candidates: set[str]) -> dict[str, list[str]]:
    """Candidate molecules grouped by connectivity block (a block's molecules move together)."""
    units: dict[str, list[str]] = {}
    for key in sorted(candidates):
        units.setdefault(key[:14], []).append(key)
    return units


# ---------------------------------------------------------------- sizes
def resolve_size(value: float, total: int, field: str) -> int:
    """A size given as a fraction (0 < value < 1) or a count (whole number >= 1) of `total`;
    errors name it `field`."""
    if not np.isfinite(value) or value < 0:
        raise FieldError(field, value, "must be a fraction in (0, 1) or a count >= 1")
    if value == 0:
        return 0
    if value < 1:
        return max(1, round(value * total))
    if value != int(value):
        raise FieldError(field, value, "a count must be a whole number")
    if value > total:
        raise FieldError(field, int(value), f"exceeds the store's {total} molecules")
    return int(value)


# ---------------------------------------------------------------- carving
class SplitSkipped(MlipdivError):
    """A requested test set cannot be made for this store (said, then skipped)."""


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
        keys = _close_over_connectivity(keys, self.candidates)
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


# ---------------------------------------------------------------- the test-set kinds
class WholeMoleculeSet(TestSetKind):
    """A kind that withholds whole molecules chosen by `withhold` from the candidates."""

    whole_molecules = True
    size_field: ClassVar[str]  # its size option in SplitOptions, named in errors as split.X

    @classmethod
    def carve(cls, carving: Carving) -> None:
        value = getattr(carving.options, cls.size_field)
        n_molecules = resolve_size(value, carving.n_total, f"split.{cls.size_field}")
        if n_molecules == 0:
            return
        try:
            keys = cls.withhold(carving.table, carving.candidates, carving.rng, n_molecules)
        except SplitSkipped as skipped:
            carving.messages.append(str(skipped))
            return
        carving.withhold_molecules(cls.name, keys)

    @classmethod
    @abstractmethod
    def withhold(cls, table: pd.DataFrame, candidates: set[str], rng: np.random.Generator,
                 n_molecules: int) -> set[str]:
        """Keys of the molecules this set takes from `candidates`."""


class ConformerSplit(TestSetKind):
    """CF: `cf_conformers` conformers withheld from each of `cf` random pool molecules with at
    least one more conformer (`cf="all"`: from every such molecule); pool conformers within
    0.05 Angstrom RMSD of a withheld conformer are dropped. A molecule left without pool
    conformers is not used. Runs are scored on the CF molecules they trained on."""

    name = "cf"
    label = "CF"
    title = "unseen conformers"
    order, carve_order = 0, 3
    whole_molecules = False
    leak_rules = ("near_duplicate",)
    scored_on_training_molecules = True

    @classmethod
    def carve(cls, carving: Carving) -> None:
        options = carving.options
        n_cf = None if options.cf == CF_ALL else resolve_size(options.cf, carving.n_total,
                                                              CF_FIELD)
        pool = carving.training_pool()
        if n_cf == 0:
            return
        cf, carving.pool, carving.extra["cf_near_duplicates_dropped"] = cls.withhold(
            carving.store, pool, carving.rng, n_cf, options.cf_conformers)
        carving.sets[cls.name] = SplitSet(cls.name, carving.store_path, cf)

    @staticmethod
    def withhold(store: ConformerStore, pool: ByMolecule, rng: np.random.Generator,
                 n_molecules: int | None, conformers: int,
                 duplicate_rmsd: float = DUPLICATE_RMSD_ANGSTROM,
                 ) -> tuple[ByMolecule, ByMolecule, int]:
        """(withheld, pool after withholding, number of near-duplicates dropped)."""
        if conformers < 1:
            raise FieldError("split.cf_conformers", conformers, "must be at least 1")
        eligible = [k for k in sorted(pool) if len(pool[k]) > conformers]
        withheld: ByMolecule = {}
        pool = dict(pool)
        dropped = 0
        wanted = len(eligible) if n_molecules is None else n_molecules
        for key in rng.permutation(eligible) if eligible else []:
            if len(withheld) >= wanted:
                break
            available = pool[key]
            chosen = np.sort(rng.choice(available, conformers, replace=False))
            kept = np.setdiff1d(available, chosen)
            duplicates = np.array(sorted({p for p, _, _ in near_duplicate_conformers(
                store, key, chosen, kept, duplicate_rmsd)}), dtype=np.int64)
            if len(duplicates) == len(kept):
                continue
            withheld[key] = chosen
            pool[key] = np.setdiff1d(kept, duplicates)
            dropped += len(duplicates)
        if n_molecules is None and not withheld:
            raise FieldError(CF_FIELD, CF_ALL, "no pool molecule has more than cf_conformers "
                             f"{conformers} distinct conformers")
        if n_molecules is not None and len(withheld) < n_molecules:
            raise FieldError(CF_FIELD, n_molecules, f"only {len(withheld)} pool molecules "
                             f"have more than cf_conformers {conformers} distinct conformers")
        return withheld, pool, dropped

    @classmethod
    def near_duplicate_leaks(cls, splits: Splits, threshold: float) -> list[Leak]:
        """No pool conformer within `threshold` heavy-atom RMSD of a CF conformer."""
        pool = splits.pool_set.by_molecule
        leaks = []
        with ConformerStore(splits.store_path) as store:
            for key, withheld in splits.sets[cls.name].by_molecule.items():
                kept = pool.get(key, np.empty(0, np.int64))
                leaks += [Leak("near_duplicate", cls.name, f"{key} pool conformer {p} is "
                               f"{rmsd:.3f} Å from CF conformer {w}")
                          for p, w, rmsd in near_duplicate_conformers(store, key, withheld, kept,
                                                                      threshold)]
        return leaks


class StructureSplit(WholeMoleculeSet):
    """ST: connectivity groups withheld only while another group with their scaffold (the empty
    one for acyclic molecules) stays in the pool."""

    name = "st"
    label = "ST"
    title = "unseen molecules"
    order, carve_order = 1, 2
    size_field = "st"
    leak_rules = ("connectivity",)

    @classmethod
    def withhold(cls, table, candidates, rng, n_molecules):
        scaffold_of = dict(zip(table["inchikey"], table["scaffold"], strict=True))
        units = _units(candidates)
        remaining: dict[str, int] = {}
        for members in units.values():
            remaining[scaffold_of[members[0]]] = remaining.get(scaffold_of[members[0]], 0) + 1
        taken: set[str] = set()
        for block in rng.permutation(sorted(units)):
            if len(taken) >= n_molecules:
                break
            scaffold = scaffold_of[units[block][0]]
            if remaining[scaffold] > 1:
                remaining[scaffold] -= 1
                taken.update(units[block])
        if len(taken) < n_molecules:
            raise FieldError("split.st", n_molecules, f"only {len(taken)} molecules can "
                             "be withheld with their scaffold still in the pool")
        return taken


class ScaffoldSplit(WholeMoleculeSet):
    """SF: whole Murcko-scaffold groups, in random order, until `sf` molecules are reached; at
    least one ring scaffold stays in the pool. Acyclic molecules are never an SF group, and
    an all-acyclic store has no SF set (skipped with a message)."""

    name = "sf"
    label = "SF"
    title = "unseen scaffolds"
    order, carve_order = 2, 1
    size_field = "sf"
    leak_rules = ("connectivity", "scaffold")

    @classmethod
    def withhold(cls, table, candidates, rng, n_molecules):
        rows = table[table["inchikey"].isin(candidates) & (table["scaffold"] != "")]
        groups = {s: set(f["inchikey"]) for s, f in rows.groupby("scaffold")}
        if len(groups) < 2:
            raise SplitSkipped(f"SF: the pool has {len(groups)} ring scaffold(s); a scaffold "
                               "split needs at least 2, so SF is skipped")
        taken: set[str] = set()
        for scaffold in rng.permutation(sorted(groups))[:-1]:
            if len(taken) >= n_molecules:
                break
            taken |= _close_over_connectivity(groups[scaffold], candidates)
        if len(taken) < n_molecules:
            raise FieldError("split.sf", n_molecules, f"only {len(taken)} molecules can "
                             "be withheld while one ring scaffold stays in the pool")
        return taken

    @classmethod
    def scaffold_leaks(cls, splits: Splits, threshold: float) -> list[Leak]:
        """No SF ring scaffold occurs in the pool."""
        table = splits.molecules
        scaffold_of = dict(zip(table["inchikey"], table["scaffold"], strict=True))
        pool_scaffolds = {scaffold_of.get(key, "") for key in splits.pool_set.by_molecule}
        sf_scaffolds = {scaffold_of.get(key, "")
                        for key in splits.sets[cls.name].by_molecule} - {""}
        return [Leak("scaffold", cls.name, f"scaffold {s} occurs in the pool")
                for s in sorted(sf_scaffolds & pool_scaffolds)]


class OutOfDistribution(TestSetKind):
    """OOD: the molecules an `OodShift` selects (`split.ood`, e.g. `size:9`), or every
    molecule of a second store (`split.ood_store`) whose connectivity block does not occur in
    the main store (the overlap is dropped and counted)."""

    name = "ood"
    label = "OOD"
    title = "out of distribution"
    order, carve_order = 3, 0
    whole_molecules = True
    leak_rules = ("connectivity",)
    advice_weight = 0.0

    @classmethod
    def carve(cls, carving: Carving) -> None:
        options = carving.options
        if options.ood_store:
            pairs, carving.extra["ood_overlap_dropped"] = cls.external_pairs(
                Path(options.ood_store), carving.table)
            carving.sets[cls.name] = SplitSet(cls.name, Path(options.ood_store), pairs)
        elif options.ood:
            keys = parse_ood(options.ood).withhold(carving.table, carving.candidates,
                                                   carving.rng)
            closed = _close_over_connectivity(keys, carving.candidates)
            if not closed or closed == carving.candidates:
                raise FieldError("split.ood", options.ood, f"selects {len(closed)} of "
                                 f"{carving.n_total} molecules; it must leave some in the pool")
            carving.withhold_molecules(cls.name, closed)

    @staticmethod
    def external_pairs(path: Path, main_table: pd.DataFrame) -> tuple[ByMolecule, int]:
        """(every conformer of the second store's molecules new to the main store, the number
        of its molecules dropped because their connectivity block is in the main store)."""
        blocks = set(main_table["connectivity"])
        kept: ByMolecule = {}
        dropped = 0
        with ConformerStore(path) as store:
            for key, n in store.conformer_counts().items():
                if key[:14] in blocks:
                    dropped += 1
                else:
                    kept[key] = np.arange(n)
        if not kept:
            raise FieldError("split.ood_store", path, "every molecule also occurs in the "
                             "main store (by connectivity); no OOD set is left")
        return kept, dropped


# ---------------------------------------------------------------- OOD shifts
OOD_SHIFTS: dict[str, type[OodShift]] = {}


class OodShift(ABC):
    """A distribution shift chosen by `split.ood = "KIND[:ARGUMENT]"`: declares its `kind`
    and `syntax`, parses its argument and picks the OOD molecules. Defining a subclass
    registers it."""

    kind: ClassVar[str]
    syntax: ClassVar[str]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not hasattr(cls, "kind") or not hasattr(cls, "syntax"):
            raise TypeError(f"OOD shift {cls.__name__} must declare kind and syntax")
        if OOD_SHIFTS.setdefault(cls.kind, cls) is not cls:
            raise TypeError(f"OOD shift {cls.kind} is defined twice")

    @classmethod
    @abstractmethod
    def parse(cls, argument: str) -> OodShift:
        """The shift for the text after `KIND:` (ValueError when it is malformed)."""

    @abstractmethod
    def withhold(self, table: pd.DataFrame, candidates: set[str],
                 rng: np.random.Generator) -> set[str]:
        """Keys of the candidate molecules outside the training distribution."""


@dataclass
class SizeShift(OodShift):
    """OOD `size:MIN_HEAVY`: molecules with at least MIN_HEAVY heavy atoms."""

    min_heavy_atoms: int
    kind: ClassVar[str] = "size"
    syntax: ClassVar[str] = "size:MIN_HEAVY"

    @classmethod
    def parse(cls, argument):
        if int(argument) < 1:
            raise ValueError(argument)
        return cls(int(argument))

    def withhold(self, table, candidates, rng):
        rows = table[table["inchikey"].isin(candidates)]
        return set(rows.loc[rows["n_heavy_atoms"] >= self.min_heavy_atoms, "inchikey"])


@dataclass
class ElementShift(OodShift):
    """OOD `elements:S,Cl`: molecules containing any of the elements."""

    elements: tuple[str, ...]
    kind: ClassVar[str] = "elements"
    syntax: ClassVar[str] = "elements:S,Cl"

    @classmethod
    def parse(cls, argument):
        elements = tuple(e.strip() for e in argument.split(",") if e.strip())
        if not elements or any(e not in symbol_to_number for e in elements):
            raise ValueError(argument)
        return cls(elements)

    def withhold(self, table, candidates, rng):
        rows = table[table["inchikey"].isin(candidates)]
        wanted = set(self.elements)
        has = rows["elements"].map(lambda e: bool(wanted & set(e.split(","))))
        return set(rows.loc[has, "inchikey"])


@dataclass
class ClusterShift(OodShift):
    """OOD `cluster[:K]`: k-means (K clusters) on Morgan fingerprints; the cluster whose centroid
    lies farthest from the centroid of all other molecules, among clusters holding at most half
    of the molecules."""

    n_clusters: int = 8
    kind: ClassVar[str] = "cluster"
    syntax: ClassVar[str] = "cluster[:K]"

    @classmethod
    def parse(cls, argument):
        if argument and int(argument) < 2:
            raise ValueError(argument)
        return cls(int(argument)) if argument else cls()

    def withhold(self, table, candidates, rng):
        from scipy.sparse import csr_matrix  # only this shift needs scipy.sparse / sklearn
        from sklearn.cluster import KMeans

        rows = table[table["inchikey"].isin(candidates)].reset_index(drop=True)
        n_clusters = min(self.n_clusters, len(rows))
        if n_clusters < 2:
            raise FieldError("split.ood", "cluster", "needs at least 2 molecules")
        bits = [list(morgan_fingerprint(s).GetOnBits()) for s in rows["smiles"]]
        matrix = csr_matrix(
            (np.ones(sum(map(len, bits)), np.float32),
             np.concatenate([np.asarray(b, np.int64) for b in bits]),
             np.cumsum([0, *map(len, bits)])),
            shape=(len(rows), 2048),
        )
        labels = KMeans(n_clusters, n_init=3, random_state=int(rng.integers(2**31))).fit_predict(
            matrix)
        total = np.asarray(matrix.sum(axis=0)).ravel()
        best, best_distance = None, -1.0
        for label in range(n_clusters):
            members = labels == label
            if not 0 < members.sum() <= len(rows) / 2:
                continue
            inside = np.asarray(matrix[members].sum(axis=0)).ravel()
            distance = np.linalg.norm(inside / members.sum()
                                      - (total - inside) / (len(rows) - members.sum()))
            if distance > best_distance:
                best, best_distance = label, distance
        return set(rows.loc[labels == best, "inchikey"])


def ood_syntax() -> str:
    """The accepted `split.ood` forms, e.g. "size:MIN_HEAVY, elements:S,Cl or cluster[:K]"."""
    forms = [cls.syntax for cls in OOD_SHIFTS.values()]
    return ", ".join(forms[:-1]) + f" or {forms[-1]}" if len(forms) > 1 else forms[0]


def parse_ood(spec: str) -> OodShift:
    """The registered shift `spec` names (`size:9`, `elements:S,Cl`, `cluster`...)."""
    kind, _, argument = spec.partition(":")
    if kind in OOD_SHIFTS:
        try:
            return OOD_SHIFTS[kind].parse(argument)
        except ValueError:
            pass
    raise FieldError("split.ood", spec, f"expected {ood_syntax()}")


# ---------------------------------------------------------------- making a split
@dataclass(frozen=True)
class SplitOptions:
    """Sizes are fractions (0 < x < 1) or counts (>= 1) of the store's molecules; 0 = none.
    `cf="all"` (the default) withholds CF conformers from every pool molecule that has more
    than `cf_conformers`."""

    cf: float | str = CF_ALL
    cf_conformers: int = 2
    st: float = 0.1
    sf: float = 0.1
    ood: str | None = None
    ood_store: Path | None = None
    seed: int = 0

    def check(self) -> None:
        check_seed(self.seed)
        if isinstance(self.cf, str) and self.cf != CF_ALL:
            raise FieldError(CF_FIELD, self.cf, "expected 'all', a fraction or a count")
        sizes = (("cf", self.cf), ("st", self.st), ("sf", self.sf))
        fractions = {name: v for name, v in sizes if not isinstance(v, str) and 0 < v < 1}
        if sum(fractions.values()) > 1:
            raise MlipdivError(f"{' + '.join(fractions)}: fractions sum to "
                               f"{sum(fractions.values()):.3g}, above the limit 1")
        if self.ood and self.ood_store:
            raise MlipdivError("ood and ood_store: give one OOD shift, not both")


@locks_output("out")
def make_splits(store_path: str | os.PathLike, out: str | os.PathLike,
                options: SplitOptions = SplitOptions(),
                skip_damaged: bool = False) -> tuple[Splits, list[str]]:
    """Carve the test sets (each registered kind in its carving order), run the leak check,
    and write SPLITS only if it passes. Returns the splits and the messages about skipped
    sets. With `skip_damaged`, the store's damaged molecules are left out of every set
    (named in the manifest's store entry and the messages)."""

    options.check()
    out = Path(out)
    store_path = Path(store_path)
    with ConformerStore(store_path, skip_damaged=skip_damaged) as store:
        if store.damaged:
            carving_messages = [f"{len(store.damaged)} damaged molecule(s) of {store_path} "
                                f"skipped: {', '.join(store.damaged)}"]
        else:
            carving_messages = []
        if len(store) == 0:
            raise MlipdivError(f"{store_path}: the store holds no molecules")
        table = molecule_table(store)
        carving = Carving(options, store, store_path, table, np.random.default_rng(options.seed),
                          set(table["inchikey"]))
        for kind in test_set_kinds(carving=True):
            kind.carve(carving)
        carving.sets["pool"] = SplitSet("pool", store_path, carving.training_pool())
        manifest = {
            "format": SPLITS_FORMAT, "version": 1,
            "store": _store_entry(store, out),
            "ood_store": None,
            "options": {**options.__dict__, "ood_store": str(options.ood_store or "") or None},
            "seed": options.seed,
            "skipped": carving_messages + carving.messages,
            **carving.extra,
        }
    if options.ood_store:
        with ConformerStore(options.ood_store) as ood:
            manifest["ood_store"] = _store_entry(ood, out)
    ordered = {name: carving.sets[name] for name in ("pool", *test_set_names())
               if name in carving.sets}
    manifest["counts"] = {name: {"molecules": s.n_molecules, "conformers": s.n_conformers}
                          for name, s in ordered.items()}
    splits = Splits(out, store_path, ordered, table, manifest)
    assert_no_leaks(splits)
    write_splits(splits)
    return splits, carving_messages + carving.messages


def write_splits(splits: Splits) -> None:
    """Write the directory next to its target and move it into place."""
    out = splits.path
    if out.exists() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise MlipdivError(f"{out}: exists and is not a SPLITS directory; not overwriting it")
    with atomic_directory(out) as tmp:
        for name, split_set in splits.sets.items():
            write_pairs(split_set.by_molecule, tmp / f"{name}.parquet")
        splits.molecules.to_parquet(tmp / MOLECULE_TABLE, index=False)
        (tmp / MANIFEST).write_text(json.dumps(splits.manifest, indent=1, default=str))

