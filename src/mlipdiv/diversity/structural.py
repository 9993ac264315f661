"""Structural diversity: scaffolds, Morgan fingerprints and their Tanimoto distances.

Scaffolds are computed without stereochemistry, so stereoisomers share a scaffold; a molecule
without rings has the empty scaffold "".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from rdkit import Chem, DataStructs
from rdkit.Chem import rdFingerprintGenerator
from rdkit.Chem.Scaffolds import MurckoScaffold
from rdkit.SimDivFilters import rdSimDivPickers

from mlipdiv.data.identity import quiet_rdkit
from mlipdiv.errors import MlipdivError

MORGAN_RADIUS = 2
MORGAN_BITS = 2048
EXACT_TANIMOTO_LIMIT = 3000  # molecules; above this the mean distance is a random-pair estimate
TANIMOTO_SAMPLE_PAIRS = 200_000


GENERIC_CACHE_SIZE = 1 << 16
_GENERIC_SCAFFOLDS: dict[str, str] = {}


@lru_cache(maxsize=1)
def _morgan_generator():
    return rdFingerprintGenerator.GetMorganGenerator(radius=MORGAN_RADIUS, fpSize=MORGAN_BITS)


@quiet_rdkit()
def _mol(smiles: str) -> Chem.Mol:
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise MlipdivError(f"SMILES '{smiles}': RDKit cannot parse it")
    return mol


def morgan_fingerprint(smiles: str) -> DataStructs.ExplicitBitVect:
    """Morgan fingerprint (radius 2, 2048 bits) of a SMILES."""
    return _morgan_generator().GetFingerprint(_mol(smiles))


def scaffolds(smiles: str) -> tuple[str, str]:
    """(Murcko scaffold, generic scaffold) SMILES without stereo; ("", "") when acyclic."""
    core = MurckoScaffold.GetScaffoldForMol(_mol(smiles))
    if core.GetNumAtoms() == 0:
        return "", ""
    murcko = Chem.MolToSmiles(core, isomericSmiles=False)
    # a large store has far fewer scaffolds than molecules: one generic scaffold per Murcko
    # scaffold, made from the core itself (re-parsing its SMILES changes charged scaffolds)
    generic = _GENERIC_SCAFFOLDS.get(murcko)
    if generic is None:
        generic = Chem.MolToSmiles(MurckoScaffold.MakeScaffoldGeneric(core),
                                   isomericSmiles=False)
        if len(_GENERIC_SCAFFOLDS) < GENERIC_CACHE_SIZE:
            _GENERIC_SCAFFOLDS[murcko] = generic
    return murcko, generic


@dataclass(frozen=True)
class TanimotoEstimate:
    """Mean pairwise Tanimoto distance; `exact` when all pairs were used, else an unbiased
    estimate from `n_pairs` uniformly drawn distinct pairs."""

    value: float
    n_pairs: int
    exact: bool


def mean_tanimoto_distance(
    fingerprints: Sequence[DataStructs.ExplicitBitVect],
    *,
    exact_limit: int = EXACT_TANIMOTO_LIMIT,
    n_pairs: int = TANIMOTO_SAMPLE_PAIRS,
    seed: int = 0,
) -> TanimotoEstimate:
    """Mean of 1 - Tanimoto over distinct pairs of fingerprints (NaN for fewer than two)."""
    n = len(fingerprints)
    if n < 2:
        return TanimotoEstimate(float("nan"), 0, True)
    if n <= exact_limit:
        total = sum(
            sum(DataStructs.BulkTanimotoSimilarity(fingerprints[i], fingerprints[i + 1:]))
            for i in range(n - 1)
        )
        pairs = n * (n - 1) // 2
        return TanimotoEstimate(1.0 - total / pairs, pairs, True)
    rng = np.random.default_rng(seed)
    first = rng.integers(0, n, n_pairs)
    # second index drawn from the n-1 others: uniform over ordered distinct pairs
    second = (first + rng.integers(1, n, n_pairs)) % n
    similarity = [DataStructs.TanimotoSimilarity(fingerprints[i], fingerprints[j])
                  for i, j in zip(first.tolist(), second.tolist(), strict=True)]
    return TanimotoEstimate(1.0 - float(np.mean(similarity)), n_pairs, False)


def maxmin_order(
    fingerprints: Sequence[DataStructs.ExplicitBitVect], n_pick: int, seed: int
) -> list[int]:
    """Indices of `n_pick` fingerprints in RDKit MaxMin order (each pick is the one farthest,
    by Tanimoto distance, from those already picked), so every prefix is a MaxMin pick."""
    n_pick = min(n_pick, len(fingerprints))
    if n_pick == 0:
        return []
    picker = rdSimDivPickers.MaxMinPicker()
    return list(picker.LazyBitVectorPick(list(fingerprints), len(fingerprints), n_pick,
                                         seed=seed))
