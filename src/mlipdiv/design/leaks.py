"""The leak check (`mlipdiv check-leaks`): test sets must not leak into the training pool.

Every set is checked for overlap (no (inchikey, conformer) pair in the pool and in a test set);
each test-set kind adds its own declared rules (`mlipdiv.design.kinds`):

* connectivity (every whole-molecule set: ST, SF, OOD): no first InChIKey block (14
  characters; stereoisomers share it) of a withheld molecule occurs in the pool;
* scaffold (SF): no SF ring scaffold occurs in the pool;
* near_duplicate (CF): no pool conformer lies within 0.05 Angstrom heavy-atom RMSD of a CF
  conformer of the same molecule.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from mlipdiv.data.store import ConformerStore
from mlipdiv.design.kinds import Leak, test_set_kind
from mlipdiv.design.split_sets import Splits
from mlipdiv.diversity.conformational import (
    DUPLICATE_RMSD_ANGSTROM,
    ConformerGeometry,
    rmsd_lower_bounds,
)
from mlipdiv.errors import MlipdivError

__all__ = ["Leak", "assert_no_leaks", "find_leaks", "leak_report", "near_duplicate_conformers"]


def find_leaks(splits: Splits, threshold: float = DUPLICATE_RMSD_ANGSTROM) -> list[Leak]:
    """Every leak between the pool and the test sets (an empty list means the split is clean)."""
    leaks = _overlaps(splits)
    for name in splits.test_sets:
        leaks += test_set_kind(name).leaks(splits, threshold)
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


def near_duplicate_conformers(
    store: ConformerStore, key: str, withheld: np.ndarray, kept: np.ndarray,
    threshold: float = DUPLICATE_RMSD_ANGSTROM,
) -> list[tuple[int, int, float]]:
    """(kept conformer, withheld conformer, rmsd) for each kept conformer of a molecule within
    `threshold` Angstrom heavy-atom RMSD of a withheld one (store conformer indices).

    Pairs are screened first by a lower bound on their RMSD from positions alone
    (`rmsd_lower_bounds`); the symmetry-aware RDKit RMSD, and the RDKit molecule it needs,
    are computed only for pairs the bound cannot rule out, so the rule stays exact."""
    withheld, kept = np.asarray(withheld), np.asarray(kept)
    if len(kept) == 0 or len(withheld) == 0:
        return []
    numbers, positions = store.geometry(key)
    possible = rmsd_lower_bounds(numbers, positions[withheld], positions[kept]) < threshold
    if not possible.any():
        return []
    order = np.concatenate([withheld, kept])
    geometry = ConformerGeometry(store.molecule(key, order))
    found = geometry.near_duplicates(range(len(withheld)), range(len(withheld), len(order)),
                                     threshold, possible)
    return [(int(order[c]), int(order[r]), rmsd) for c, r, rmsd in found]
