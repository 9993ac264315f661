"""Metrics against hand-computed values, and the cluster bootstrap over molecules."""

from __future__ import annotations

import numpy as np
import pytest

from mlipdiv.metrics import (
    MoleculeErrors,
    cluster_bootstrap,
    molecule_spearman,
    split_estimates,
)


def molecule(n_atoms: int, reference, predicted, force_error: float = 0.0) -> MoleculeErrors:
    reference, predicted = np.asarray(reference, float), np.asarray(predicted, float)
    forces = np.zeros((len(reference), n_atoms, 3))
    return MoleculeErrors(n_atoms, reference, predicted, forces, forces + force_error)


def test_hand_computed_errors():
    # A: 2 atoms, errors +10, -20, +10 meV; B: 4 atoms, errors +40, +40 meV
    a = molecule(2, [0.0, 0.1, 0.3], [0.010, 0.080, 0.310], force_error=0.005)
    b = molecule(4, [1.0, 1.2], [1.040, 1.240], force_error=-0.010)
    est = split_estimates([a, b], n_resamples=200)
    assert est["energy_mae_mev"].value == pytest.approx((10 + 20 + 10 + 40 + 40) / 5)
    assert est["energy_rmse_mev"].value == pytest.approx(np.sqrt((100 + 400 + 100 + 3200) / 5))
    assert est["energy_mae_mev_per_atom"].value == pytest.approx((5 + 10 + 5 + 10 + 10) / 5)
    assert est["energy_rmse_mev_per_atom"].value == pytest.approx(
        np.sqrt((25 + 100 + 25 + 100 + 100) / 5))
    # force components: A 3 conf x 2 atoms x 3 = 18 at 5 meV/A, B 2 x 4 x 3 = 24 at 10 meV/A
    assert est["forces_mae_mev_per_angstrom"].value == pytest.approx((18 * 5 + 24 * 10) / 42)
    assert est["forces_rmse_mev_per_angstrom"].value == pytest.approx(
        np.sqrt((18 * 25 + 24 * 100) / 42))
    # relative energies: A's errors minus their mean 0 -> 10, 20, 10; B's constant shift -> 0
    assert est["conformational_energy_mae_mev"].value == pytest.approx((10 + 20 + 10) / 5)
    # ranks: A reference order 0 < 0.1 < 0.3, predicted 0.010 < 0.080 < 0.310: rho 1;
    # B has two conformers: no Spearman
    assert est["spearman_mean"].value == pytest.approx(1.0)


def test_spearman_per_molecule_averaged():
    same = molecule(1, [0.0, 1.0, 2.0, 3.0], [0.0, 1.1, 2.2, 3.3])
    reversed_ = molecule(1, [0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0])
    assert molecule_spearman(same.reference_energy, same.predicted_energy) == 1.0
    assert split_estimates([same, reversed_])["spearman_mean"].value == pytest.approx(0.0)
    assert molecule_spearman(np.array([1.0, 1.0, 1.0]), np.array([0.0, 1.0, 2.0])) is None


def test_equal_errors_give_zero_width_interval():
    molecules = [molecule(3, [0.0, 1.0, 2.0], [0.006, 1.006, 2.006]) for _ in range(5)]
    est = split_estimates(molecules)["energy_mae_mev_per_atom"]
    assert est.value == est.ci_low == est.ci_high == pytest.approx(2.0)


def test_bootstrap_resamples_molecules_not_conformers():
    # molecule A: one conformer, error 0; molecule B: 99 conformers, error 1.
    # Resampling molecules gives {AA, AB, BB} -> 0, 0.99, 1 with probabilities 1/4, 1/2, 1/4,
    # so the 95 % interval spans [0, 1]; resampling conformers would give about 0.99 +- 0.02.
    num, den = np.array([0.0, 99.0]), np.array([1.0, 99.0])
    est = cluster_bootstrap(num, den, n_resamples=2000, seed=1)
    assert est.value == pytest.approx(0.99)
    assert est.ci_low == 0.0 and est.ci_high == 1.0


def test_bootstrap_interval_covers_value_and_is_reproducible():
    rng = np.random.default_rng(3)
    num, den = rng.uniform(0, 10, 30), rng.integers(1, 5, 30).astype(float)
    first = cluster_bootstrap(num, den, root=True, seed=7)
    assert first.ci_low < first.value < first.ci_high
    assert first == cluster_bootstrap(num, den, root=True, seed=7)


def test_empty_metric_is_none():
    est = split_estimates([molecule(2, [0.0], [0.1])])
    assert est["conformational_energy_mae_mev"].value is None
    assert est["spearman_mean"] == est["conformational_energy_mae_mev"]
