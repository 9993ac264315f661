"""The hierarchical bootstrap over replicates and test molecules, on synthetic terms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlipdiv.errors import MlipdivError
from mlipdiv.metrics import SlopeEstimate, cluster_bootstrap, hierarchical_bootstrap, trend_slope
from mlipdiv.metrics import hierarchical as hierarchical_module


def make_terms(num: dict[str, np.ndarray], den: np.ndarray | None = None) -> pd.DataFrame:
    """Terms from cell -> (n_replicates, n_molecules) num arrays; den 1 unless given."""
    frames = []
    for cell, values in num.items():
        values = np.atleast_2d(values)
        n_rep, n_mol = values.shape
        d = np.ones_like(values) if den is None else np.broadcast_to(den, values.shape)
        frames.append(pd.DataFrame({
            "cell": cell, "replicate": np.repeat(np.arange(n_rep), n_mol),
            "inchikey": np.tile([f"KEY{m:04d}" for m in range(n_mol)], n_rep),
            "num": values.reshape(-1), "den": np.asarray(d, float).reshape(-1)}))
    return pd.concat(frames, ignore_index=True)


def width(row) -> float:
    return float(row.ci_high - row.ci_low)


@pytest.mark.parametrize("root", [False, True])
def test_one_replicate_is_a_molecule_bootstrap(root):
    rng = np.random.default_rng(0)
    num, den = rng.gamma(2.0, 1.0, 200), rng.integers(1, 6, 200).astype(float)
    row = hierarchical_bootstrap(make_terms({"A": num}, den), root=root, n_resamples=2000,
                                 seed=1).iloc[0]
    plain = num.sum() / den.sum()
    assert row.value == pytest.approx(np.sqrt(plain) if root else plain, rel=1e-12)
    assert (row.n_replicates, row.n_molecules, row.training_variability) == (1, 200, False)
    cluster = cluster_bootstrap(num, den, root=root, n_resamples=2000, seed=1)
    # Poisson vs multinomial weights: same interval up to Monte Carlo noise
    assert width(row) == pytest.approx(cluster.ci_high - cluster.ci_low, rel=0.2)
    assert row.ci_low < row.value < row.ci_high


def test_disagreeing_replicates_widen_the_interval():
    rng = np.random.default_rng(2)
    base = rng.gamma(2.0, 1.0, 200)
    agree = np.tile(base, (5, 1))
    factors = np.array([0.5, 0.75, 1.0, 1.25, 1.5])  # mean 1: same errors on average
    disagree = factors[:, None] * base
    # pooled over replicates every molecule has the same terms in both configurations, so a
    # bootstrap of test molecules alone gives them the same interval
    pooled = [cluster_bootstrap(x.sum(axis=0), np.full(200, 5.0), seed=3)
              for x in (agree, disagree)]
    assert (pooled[0].ci_low, pooled[0].ci_high) == pytest.approx(
        (pooled[1].ci_low, pooled[1].ci_high))
    table = hierarchical_bootstrap(make_terms({"agree": agree, "disagree": disagree}), seed=3)
    first, second = table.iloc[0], table.iloc[1]
    assert first.value == pytest.approx(second.value)
    assert second.training_variability and second.n_replicates == 5
    assert width(second) > 2 * width(first)
    assert second.ci_low <= second.value <= second.ci_high


def test_shared_test_set_error_does_not_average_over_replicates():
    # five identical replicates scored on one test split: the test set's sampling error is
    # common to all of them, so the interval is that of one replicate, not 1/sqrt(5) of it
    rng = np.random.default_rng(4)
    base = rng.gamma(2.0, 1.0, 150)
    one = hierarchical_bootstrap(make_terms({"A": base}), n_resamples=2000).iloc[0]
    five = hierarchical_bootstrap(make_terms({"A": np.tile(base, (5, 1))}),
                                  n_resamples=2000).iloc[0]
    per_slot = hierarchical_bootstrap(make_terms({"A": np.tile(base, (5, 1))}),
                                      n_resamples=2000, molecules="per_slot").iloc[0]
    assert width(five) == pytest.approx(width(one), rel=0.15)
    assert width(per_slot) < 0.7 * width(five)


def trend_terms(exponent: float, replicate_noise: float, seed: int) -> tuple[pd.DataFrame, dict]:
    rng = np.random.default_rng(seed)
    axis_values = [8, 16, 32, 64, 128, 256]
    base = rng.gamma(3.0, 1.0, 120)
    num = {}
    for a in axis_values:
        replicate = np.exp(rng.normal(0, replicate_noise, (3, 1)))
        molecule = np.exp(rng.normal(0, 0.2, (3, 120)))
        num[f"M{a}"] = base * a ** exponent * replicate * molecule
    return make_terms(num), {f"M{a}": float(a) for a in axis_values}


def test_trend_slope_recovers_a_known_exponent():
    terms, axis = trend_terms(-0.5, 0.1, seed=5)
    estimate = trend_slope(terms, axis, seed=6)
    assert isinstance(estimate, SlopeEstimate)
    assert estimate.slope == pytest.approx(-0.5, abs=0.05)
    assert estimate.ci_low < -0.5 < estimate.ci_high
    assert estimate.ci_low <= estimate.slope <= estimate.ci_high
    assert estimate.direction == "falls"
    assert (estimate.n_cells, estimate.n_replicates, estimate.n_resamples_used) == (6, 3, 1000)
    rising = trend_slope(terms.assign(num=terms.num ** -1), axis, seed=6)
    assert rising.direction == "rises" and rising.slope > 0


def test_flat_noisy_trend_is_unsupported():
    terms, axis = trend_terms(0.0, 0.3, seed=7)
    estimate = trend_slope(terms, axis, seed=8)
    assert estimate.ci_low < 0 < estimate.ci_high
    assert estimate.direction == "unsupported"


@pytest.mark.parametrize(("root", "expected"), [(False, 1.0), (True, 0.5)])
def test_joint_draws_pair_the_cells(root, expected):
    # cell B = 2 x cell A for every molecule of every replicate, with replicates that differ:
    # each cell alone has a wide interval, but resampled together their ratio is always 2
    rng = np.random.default_rng(9)
    a = rng.gamma(2.0, 1.0, (4, 80)) * np.array([[0.5], [1.0], [1.5], [3.0]])
    terms = make_terms({"A": a, "B": 2 * a})
    cells = hierarchical_bootstrap(terms, root=root)
    assert (cells.ci_high - cells.ci_low).min() > 0.1 * cells.value.min()
    estimate = trend_slope(terms, {"A": 1.0, "B": 2.0}, root=root)
    assert estimate.slope == pytest.approx(expected)
    assert estimate.ci_high - estimate.ci_low < 1e-9
    assert estimate.ci_low == pytest.approx(expected) and estimate.direction == "rises"


def test_reproducible_with_a_seed():
    terms, axis = trend_terms(-0.3, 0.2, seed=10)
    first = hierarchical_bootstrap(terms, root=True, n_resamples=300, seed=11)
    pd.testing.assert_frame_equal(first, hierarchical_bootstrap(terms, root=True,
                                                                n_resamples=300, seed=11))
    other = hierarchical_bootstrap(terms, root=True, n_resamples=300, seed=12)
    assert not np.allclose(first.ci_low, other.ci_low)
    assert trend_slope(terms, axis, n_resamples=300, seed=11) == \
        trend_slope(terms, axis, n_resamples=300, seed=11)


def test_chunking_does_not_change_the_draws(monkeypatch):
    terms, _ = trend_terms(-0.3, 0.2, seed=13)
    whole = hierarchical_bootstrap(terms, n_resamples=200, seed=14, molecules="per_slot")
    monkeypatch.setattr(hierarchical_module, "_CHUNK_ELEMENTS", 1)
    pd.testing.assert_frame_equal(whole, hierarchical_bootstrap(
        terms, n_resamples=200, seed=14, molecules="per_slot"))


def test_empty_rows_and_unbalanced_cells():
    rng = np.random.default_rng(15)
    num = rng.gamma(2.0, 1.0, (2, 30))
    terms = make_terms({"A": num, "B": num[:1]})
    # den 0 rows contribute nothing, whatever their num; molecule 0 is unscored in cell A
    terms.loc[(terms.cell == "A") & (terms.inchikey == "KEY0000"), ["num", "den"]] = [99.0, 0]
    table = hierarchical_bootstrap(terms, n_resamples=400).set_index("cell")
    expected_a = np.mean([row[1:].sum() / 29 for row in num])
    assert table.loc["A", "value"] == pytest.approx(expected_a)
    assert table.loc["A", "n_molecules"] == 29 and table.loc["B", "n_molecules"] == 30
    assert table.loc["B", "n_replicates"] == 1 and not table.loc["B", "training_variability"]
    assert table.loc["B", "value"] == pytest.approx(num[0].mean())
    assert np.isfinite(table[["ci_low", "ci_high"]].to_numpy()).all()
    assert (table.ci_low <= table.value).all() and (table.value <= table.ci_high).all()


def test_interval_always_covers_the_value():
    # few molecules, heavy tails, two replicates: a skewed resampled statistic
    rng = np.random.default_rng(16)
    for seed in range(20):
        num = rng.pareto(1.5, (2, 6)) + 0.01
        row = hierarchical_bootstrap(make_terms({"A": num}), root=True, n_resamples=100,
                                     seed=seed).iloc[0]
        assert row.ci_low <= row.value <= row.ci_high
    assert hierarchical_module.cover(5.0, 6.0, 9.0) == (5.0, 9.0)
    assert hierarchical_module.cover(5.0, 1.0, 4.0) == (1.0, 5.0)


def test_bad_input_raises():
    terms = make_terms({"A": np.ones((2, 5)), "B": np.ones((2, 5))})
    with pytest.raises(MlipdivError, match="at least 2"):
        trend_slope(terms, {"A": 4.0, "B": 4.0})
    with pytest.raises(MlipdivError, match="cell B has no axis value"):
        trend_slope(terms, {"A": 4.0})
    with pytest.raises(MlipdivError, match="missing column"):
        hierarchical_bootstrap(terms.drop(columns="den"))
    with pytest.raises(MlipdivError, match="den"):
        hierarchical_bootstrap(terms.assign(den=-1.0))
