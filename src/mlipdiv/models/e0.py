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


def fit_e0(records: Sequence[MoleculeRecord], energies: np.ndarray | None = None) -> E0Fit:
    """Least-squares E0s over all labelled conformers of `records` (the training set); of
    `energies` (one per conformer, in record order) instead of their labels when given (a
    pretrained start's residuals: `models.pretrained`)."""
    if not records or not all(r.labelled for r in records):
        raise MlipdivError("E0 fit: the training set must be non-empty and labelled")
    elements = sorted({int(z) for r in records for z in r.atomic_numbers})
    sizes = [r.n_conformers for r in records]
    if energies is None:
        energies = np.concatenate([r.energy for r in records])
    sums = [float(part.sum()) for part in np.split(energies, np.cumsum(sizes)[:-1])]
    return fit_e0_grouped(elements, [r.atomic_numbers for r in records], sizes, sums)


def fit_e0_grouped(elements: Sequence[int], numbers: Sequence[np.ndarray],
                   n_conformers: Sequence[int], energy_sums: Sequence[float]) -> E0Fit:
    """The least-squares E0s of `fit_e0` from one group of conformers of one composition at
    a time: its atomic numbers, conformer count and energy sum (eV) -- all the fit needs, so
    a store can be fitted without holding its conformers (`models.streaming`). Groups of no
    conformers are left out. The fit is the conformer-by-conformer one: sum_i (E_i - c.E0)^2
    over a group is n (mean E - c.E0)^2 plus a constant, a weighted fit of the means."""
    kept = [i for i, n in enumerate(n_conformers) if n > 0]
    counts = np.array([[np.count_nonzero(numbers[i] == z) for z in elements] for i in kept],
                      dtype=np.float64).reshape(len(kept), len(elements))
    weights = np.array([n_conformers[i] for i in kept], dtype=np.float64)
    sums = np.array([energy_sums[i] for i in kept], dtype=np.float64)
    n_total = int(weights.sum())
    rank = np.linalg.matrix_rank(counts)
    if rank == len(elements):
        root = np.sqrt(weights)
        solution = np.linalg.lstsq(counts * root[:, None], sums / root, rcond=None)[0]
        note = f"least squares on {n_total} conformers"
        return E0Fit(dict(zip(elements, map(float, solution), strict=True)), False, note)
    atoms = counts.sum(axis=1)
    prior = np.full(len(elements), float(np.sum(sums / atoms) / n_total))
    ridge = RIDGE * float(np.sum(weights * atoms ** 2) / n_total)
    lhs = (counts * weights[:, None]).T @ counts + ridge * np.eye(len(elements))
    solution = np.linalg.solve(lhs, counts.T @ (sums - weights * (counts @ prior))) + prior
    names = ", ".join(chemical_symbols[z] for z in elements)
    note = (f"training compositions cannot separate the E0s of {names} (rank {rank} < "
            f"{len(elements)}): ridge fit toward the mean energy per atom")
    return E0Fit(dict(zip(elements, map(float, solution), strict=True)), True, note)
