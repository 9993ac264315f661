"""The leak check (`mlipdiv check-leaks`): test sets must not leak into the training pool.

* overlap: no (inchikey, conformer) pair is in the pool and in a test set;
* connectivity: no first InChIKey block (14 characters; stereoisomers share it) of an ST, SF
  or OOD molecule occurs in the pool;
* scaffold: no SF ring scaffold occurs in the pool;
* near_duplicate: no pool conformer lies within 0.05 Angstrom heavy-atom RMSD of a CF conformer
  of the same molecule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from mlipdiv.data.store import ConformerStore
from mlipdiv.diversity.conformational import DUPLICATE_RMSD_ANGSTROM, ConformerGeometry
from mlipdiv.errors import MlipdivError

if TYPE_CHECKING:  # splits.py runs this check on every split it makes
    from mlipdiv.design.splits import Splits

WHOLE_MOLECULE_SETS = ("st", "sf", "ood")


@dataclass(frozen=True)
class Leak:
    """One violation: its kind, the test set and what leaked."""

    kind: str
    test_set: str
    detail: str

    def __str__(self) -> str:
        return f"{self.test_set}: {self.kind}: {self.detail}"


def find_leaks(splits: Splits, threshold: float = DUPLICATE_RMSD_ANGSTROM) -> list[Leak]:
    """Every leak between the pool and the test sets (an empty list means the split is clean)."""
    pool = splits.pool_set.by_molecule
    leaks = _overlaps(splits)
    pool_blocks = {key[:14] for key in pool}
    for name in WHOLE_MOLECULE_SETS:
        if name in splits.sets:
            leaks += [Leak("connectivity", name, f"{key} shares block {key[:14]} with the pool")
                      for key in splits.sets[name].by_molecule if key[:14] in pool_blocks]
    if "sf" in splits.sets:
        table = splits.molecules
        scaffold_of = dict(zip(table["inchikey"], table["scaffold"], strict=True))
        pool_scaffolds = {scaffold_of.get(key, "") for key in pool}
        sf_scaffolds = {scaffold_of.get(key, "") for key in splits.sets["sf"].by_molecule} - {""}
        leaks += [Leak("scaffold", "sf", f"scaffold {s} occurs in the pool")
                  for s in sorted(sf_scaffolds & pool_scaffolds)]
    if "cf" in splits.sets:
        leaks += _near_duplicates(splits, threshold)
    return leaks


def assert_no_leaks(splits: Splits) -> None:
    """Raise MlipdivError naming the first leak (and how many) if the split leaks."""
    leaks = find_leaks(splits)
    if leaks:
        raise MlipdivError(f"{splits.path}: split not written/used: {len(leaks)} leak(s), first "
                           f"{leaks[0]}")


def leak_report(splits: Splits) -> dict:
    """The check as a JSON-ready object: ok, counts per kind, the leaks."""
    leaks = find_leaks(splits)
    kinds: dict[str, int] = {}
    for leak in leaks:
        kinds[leak.kind] = kinds.get(leak.kind, 0) + 1
    return {"splits": str(splits.path), "ok": not leaks, "n_leaks": len(leaks),
            "by_kind": kinds, "leaks": [asdict(leak) for leak in leaks],
            "sets_checked": sorted(splits.test_sets)}


def _overlaps(splits: Splits) -> list[Leak]:
    pool = splits.pool_set.by_molecule
    leaks = []
    for name, test in splits.test_sets.items():
        if test.store_path != splits.store_path:
            continue  # a second store: its pairs index other data, identity is checked by block
        for key, indices in test.by_molecule.items():
            shared = np.intersect1d(indices, pool.get(key, np.empty(0, np.int64)))
            leaks += [Leak("overlap", name, f"{key} conformer {int(i)} is also in the pool")
                      for i in shared]
    return leaks


def _near_duplicates(splits: Splits, threshold: float) -> list[Leak]:
    pool = splits.pool_set.by_molecule
    leaks = []
    with ConformerStore(splits.store_path) as store:
        for key, withheld in splits.sets["cf"].by_molecule.items():
            kept = pool.get(key, np.empty(0, np.int64))
            leaks += [Leak("near_duplicate", "cf", f"{key} pool conformer {p} is {rmsd:.3f} Å "
                           f"from CF conformer {w}")
                      for p, w, rmsd in near_duplicate_conformers(store, key, withheld, kept,
                                                                  threshold)]
    return leaks


def near_duplicate_conformers(
    store: ConformerStore, key: str, withheld: np.ndarray, kept: np.ndarray,
    threshold: float = DUPLICATE_RMSD_ANGSTROM,
) -> list[tuple[int, int, float]]:
    """(kept conformer, withheld conformer, rmsd) for each kept conformer of a molecule within
    `threshold` Angstrom heavy-atom RMSD of a withheld one (store conformer indices)."""
    if len(kept) == 0 or len(withheld) == 0:
        return []
    order = np.concatenate([withheld, kept])
    geometry = ConformerGeometry(store.molecule(key, order))
    found = geometry.near_duplicates(range(len(withheld)), range(len(withheld), len(order)),
                                     threshold)
    return [(int(order[c]), int(order[r]), rmsd) for c, r, rmsd in found]
