"""The test-set kinds (`mlipdiv.design.kinds`): each held-out set is a small class, as
SchNetPack's splitting strategies, that carves itself out of a `Carving` and declares its leak
rules:

* CF (`ConformerSplit`): k conformers withheld from pool molecules, which keep the rest; by
  default from every pool molecule with more than k conformers (`cf_molecules="all"`), so that each
  design cell can be scored on unseen conformers of exactly its own training molecules. Pool
  conformers within 0.05 Angstrom RMSD of a withheld one are dropped (MD duplicates).
* ST (`StructureSplit`): whole molecules withheld whose Murcko scaffold stays in the pool.
* SF (`ScaffoldSplit`): whole ring-scaffold groups withheld (MoleculeNet / nablaDFT scaffold
  split); an all-acyclic store has no scaffold groups and SF is skipped with a message.
* OOD (`OutOfDistribution`): a registered shift (`mlipdiv.design.ood`) or a second store.

Whole-molecule sets (`WholeMoleculeSet`) move connectivity groups (molecules sharing the first
InChIKey block, so stereoisomers travel together). Carving order: OOD, SF, ST, CF. Defining a
kind registers it, in this module's order.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from mlipdiv.data.store import ConformerStore
from mlipdiv.design.kinds import Leak, TestSetKind
from mlipdiv.design.leaks import near_duplicate_conformers
from mlipdiv.design.ood import parse_ood
from mlipdiv.design.options import CF_ALL, CF_FIELD
from mlipdiv.design.split_sets import (
    ByMolecule,
    Carving,
    Splits,
    SplitSet,
    close_over_connectivity,
)
from mlipdiv.diversity.conformational import DUPLICATE_RMSD_ANGSTROM
from mlipdiv.errors import FieldError, MlipdivError


# ---------------------------------------------------------------- connectivity groups
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


# ---------------------------------------------------------------- skipped sets
class SplitSkipped(MlipdivError):
    """A requested test set cannot be made for this store (said, then skipped)."""


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
    """CF: `cf_conformers` conformers withheld from each of `cf_molecules` random pool
    molecules with at least one more conformer ("all": from every such molecule); pool
    conformers within 0.05 Angstrom RMSD of a withheld conformer are dropped. A molecule left
    without pool conformers is not used. Runs are scored on the CF molecules they trained on."""

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
        n_cf = (None if options.cf_molecules == CF_ALL else
                resolve_size(options.cf_molecules, carving.n_total, CF_FIELD))
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
            taken |= close_over_connectivity(groups[scaffold], candidates)
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
            closed = close_over_connectivity(keys, carving.candidates)
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
