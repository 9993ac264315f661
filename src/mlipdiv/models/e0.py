"""Per-element reference energies (E0s) fitted by least squares on the training set only.

Every conformer gives one equation: sum_z count_z * E0_z = E. When the training compositions
cannot separate the elements (one molecule, or formulas that are multiples of each other), the
least-squares problem is rank deficient; then the E0s come from a ridge fit pulled toward the
mean energy per atom, and the result says so -- zeros are never fitted silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ase.data import chemical_symbols

from mlipdiv.data.store import MoleculeRecord
from mlipdiv.errors import MlipdivError

RIDGE = 1e-6  # relative to the mean squared atom count: small, only fixes null directions


@dataclass(frozen=True)
class E0Fit:
    """Fitted E0s (eV) by atomic number, whether the fit was regularised, and why."""

    energies: dict[int, float]
    regularised: bool
    note: str

    def as_dict(self) -> dict:
        return {"energies_ev": {chemical_symbols[z]: e for z, e in self.energies.items()},
                "regularised": self.regularised, "note": self.note}


def composition_matrix(records: Sequence[MoleculeRecord], elements: Sequence[int]) -> np.ndarray:
    """(n_conformers, n_elements) atom counts, one row per conformer."""
    rows = []
    for record in records:
        counts = [np.count_nonzero(record.atomic_numbers == z) for z in elements]
        rows.extend([counts] * record.n_conformers)
    return np.array(rows, dtype=np.float64)


def fit_e0(records: Sequence[MoleculeRecord], energies: np.ndarray | None = None) -> E0Fit:
    """Least-squares E0s over all labelled conformers of `records` (the training set); of
    `energies` (one per conformer, in record order) instead of their labels when given (a
    pretrained start's residuals: `models.pretrained`)."""
    if not records or not all(r.labelled for r in records):
        raise MlipdivError("E0 fit: the training set must be non-empty and labelled")
    elements = sorted({int(z) for r in records for z in r.atomic_numbers})
    counts = composition_matrix(records, elements)
    if energies is None:
        energies = np.concatenate([r.energy for r in records])
    rank = np.linalg.matrix_rank(counts)
    if rank == len(elements):
        solution = np.linalg.lstsq(counts, energies, rcond=None)[0]
        note = f"least squares on {len(energies)} conformers"
        return E0Fit(dict(zip(elements, map(float, solution), strict=True)), False, note)
    prior = np.full(len(elements), float(np.mean(energies / counts.sum(axis=1))))
    ridge = RIDGE * float(np.mean(counts.sum(axis=1) ** 2))
    lhs = counts.T @ counts + ridge * np.eye(len(elements))
    solution = np.linalg.solve(lhs, counts.T @ (energies - counts @ prior)) + prior
    names = ", ".join(chemical_symbols[z] for z in elements)
    note = (f"training compositions cannot separate the E0s of {names} (rank {rank} < "
            f"{len(elements)}): ridge fit toward the mean energy per atom")
    return E0Fit(dict(zip(elements, map(float, solution), strict=True)), True, note)
