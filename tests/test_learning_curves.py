"""Learning curves over molecules and conformers (issue 19): a fit that recovers known
exponents within its intervals, refuses exponents on their bounds and measures its own
leave-one-cell-out calibration; advice with intervals from the fit's samples, beyond the
measured range with a stated extrapolation; the adaptive pilot on a synthetic error function;
verify never comparing a design with itself."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest

from mlipdiv.errors import MlipdivError
from mlipdiv.study import advise
from mlipdiv.study.adaptive import AdaptiveState, Round, run_loop
from mlipdiv.study.advise import DataLimits, feasible_designs
from mlipdiv.study.curves import fit_results
from mlipdiv.study.fit import (
    EXPONENT_BOUNDS,
    FORMS,
    _fit_form,
    cell_arrays,
    fit_surface,
    log_predict,
)

TRUE = {"cf": (4.0, 0.1, 30.0, 0.6), "st": (60.0, 0.6, 8.0, 0.2)}  # a, alpha, b, beta


def true_error(split: str, m, c):
    a, alpha, b, beta = TRUE[split]
    return a * np.asarray(m, float) ** -alpha + b * np.asarray(c, float) ** -beta


def replicate_table(cells, split="st", replicates=3, noise=0.04, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame([dict(M=m, C=c, replicate=r, error=float(
        true_error(split, m, c) * np.exp(rng.normal(0, noise))))
        for m, c in cells for r in range(replicates)])


GRID = [(m, c) for m in (2, 4, 8, 16, 32, 64) for c in (1, 2, 4, 8, 16)]


@functools.cache
def known_fit(split="st"):
    return fit_surface(replicate_table(GRID, split), model="m", split=split, metric="e")


def test_fit_recovers_known_exponents_within_intervals():
    fit = known_fit("st")
    assert fit.form == "molecules+conformers" and fit.accepted
    for name, true in zip(("a", "alpha", "b", "beta"), TRUE["st"], strict=True):
        low, high = fit.params_ci[name]
        assert low <= true <= high, (name, true, low, high)
        assert low <= fit.params[name] <= high  # never widened, and still holds its estimate
    assert fit.cv_rmse_log["molecules+conformers"] < fit.cv_rmse_log["total-only"]


def test_exponent_on_a_bound_is_refused():
    # error falls with M^-3.5: beyond the plausible range, so the fit pins alpha at 2
    table = pd.DataFrame([dict(M=m, C=c, replicate=r, error=50.0 * m ** -3.5 * (1 + 0.01 * r))
                          for m, c in GRID for r in range(2)])
    fit = fit_surface(table, model="m", split="st", metric="e")
    assert "on its bound" in fit.candidates["molecules-only"].rejected
    for name in FORMS[fit.form].exponents:
        on_bound = any(abs(fit.params[name] - b) < 0.01 for b in EXPONENT_BOUNDS)
        assert not (fit.accepted and on_bound)
    if not fit.accepted:
        assert "no learning curve is a finding" in fit.note
        assert not fit.depends_on_split()


def test_leave_one_cell_out_predictions_and_coverage_are_computed_correctly():
    cells = [(m, c) for m in (2, 6, 24) for c in (1, 3, 9)]
    fit = fit_surface(replicate_table(cells), model="m", split="st", metric="e")
    assert len(fit.held_out) == fit.n_cells == 9
    inside = sum(h.ci_low <= h.measured <= h.ci_high for h in fit.held_out)
    assert fit.coverage == (inside, 9)
    assert inside >= 7  # a correctly specified curve: most held-out cells inside 95 %
    # each held-out prediction comes from a fit without that cell
    from mlipdiv.study.fit import cells_from_replicates
    table = cells_from_replicates(replicate_table(cells))
    table["log_value"] = np.log(table.value)
    held = fit.held_out[4]
    rest = table[~((table.M == held.M) & (table.C == held.C))]
    form = FORMS[fit.form]
    theta = _fit_form(form, *cell_arrays(rest)).theta
    predicted = float(np.exp(log_predict(form, theta, np.array([held.M]),
                                          np.array([held.C]))[0]))
    assert predicted == pytest.approx(held.predicted, rel=1e-4)


def test_advice_finds_the_known_optimum_with_an_honest_interval():
    fits = [known_fit("cf"), known_fit("st")]
    budget = 256
    advice = advise(fits, budget, weights={"cf": 1.0, "st": 1.0})
    m, c = feasible_designs(budget, 0.0, 1.0)
    truth = int(m[np.argmin(true_error("cf", m, c) + true_error("st", m, c))])
    assert advice.molecules_interval[0] <= truth <= advice.molecules_interval[1]
    assert advice.determined and advice.molecule_ratio <= 4
    assert advice.n_molecules * advice.conformers_per_molecule <= budget
    assert advice.extrapolation is None and not advice.next_cells


def test_advice_beyond_the_measured_range_states_its_extrapolation():
    fits = [known_fit("cf"), known_fit("st")]
    largest = max(m * c for m, c in GRID)
    far = advise(fits, 5 * largest, weights={"cf": 1.0, "st": 1.0},
                 limits=DataLimits(max_molecules=5000, max_conformers_per_molecule=None,
                                   source="the data source"))
    assert far.extrapolation and "5x the largest measured" in far.extrapolation
    assert far.molecules_interval[0] <= far.n_molecules <= far.molecules_interval[1] or any(
        "outside the interval" in w for w in far.warnings)
    with pytest.raises(MlipdivError, match="more than 10x the largest measured"):
        advise(fits, 11 * largest, weights={"cf": 1.0, "st": 1.0})
    capped = advise(fits, 5 * largest, weights={"st": 1.0},
                    limits=DataLimits(max_molecules=40, max_conformers_per_molecule=None))
    assert capped.n_molecules <= 40


# ---------------------------------------------------------------- the adaptive pilot
def test_adaptive_loop_converges_to_the_known_optimum_and_stops_by_its_criterion():
    budget, rng = 240, np.random.default_rng(3)
    measured: list[dict] = []

    def measure_cells(cells):
        for m, c in cells:
            for split in ("cf", "st"):
                for r in range(2):
                    measured.append(dict(model="m", selection="random-random", split=split,
                                         M=m, C=c, replicate=r, e=float(
                                             true_error(split, m, c)
                                             * np.exp(rng.normal(0, 0.1)))))

    # a pilot grid on one side of the optimum, too small to compare every form
    pilot = [(2, 120), (4, 60), (8, 30), (4, 1), (4, 4)]
    measure_cells(pilot)
    limits = DataLimits(max_molecules=240, max_conformers_per_molecule=240)
    history = []

    def refit():
        fits, _ = fit_results(pd.DataFrame(measured), "e")
        advice = advise(fits, budget, weights={"cf": 1.0, "st": 1.0}, limits=limits)
        history.append(advice)
        return [advice]

    def measure(current: Round):
        measure_cells(current.cells)

    saved = []
    state = run_loop(AdaptiveState(budget=budget, criterion="x"), refit=refit,
                     measure=measure, save=lambda s: saved.append(s.model_copy(deep=True)),
                     max_cells=10, per_round=2, max_ratio=4.0)
    m, c = feasible_designs(budget, 0.0, 1.0)
    total = true_error("cf", m, c) + true_error("st", m, c)
    truth = int(m[np.argmin(total)])
    final = history[-1]
    assert not history[0].determined and history[0].next_cells
    assert state.stopped.startswith("criterion met"), state.stopped
    assert final.determined and final.molecule_ratio <= 4
    # the advised design is as good as the true optimum (the objective is flat near it)
    advised = true_error("cf", final.n_molecules, final.conformers_per_molecule) + true_error(
        "st", final.n_molecules, final.conformers_per_molecule)
    assert advised <= 1.02 * total.min()
    assert truth / 1.5 <= final.n_molecules <= truth * 1.5
    assert 1 <= state.cells_added <= 10
    assert all(r.status == "done" and r.after for r in state.rounds)
    # no cell proposed twice, none already measured by the pilot grid
    proposed = [tuple(cell) for r in state.rounds for cell in r.cells]
    assert len(proposed) == len(set(proposed))
    assert not set(proposed) & set(pilot)


def test_adaptive_loop_stops_when_its_cell_budget_is_spent():
    calls = []

    def refit():
        from mlipdiv.study.advise import Advice, Estimate
        estimate = Estimate(value=1.0, ci_low=0.5, ci_high=2.0)
        calls.append(1)
        return [Advice(model="m", selection="s", metric="e", budget=100, weights={"st": 1},
                       cost_per_molecule=0, cost_per_conformer=1, n_molecules=10,
                       conformers_per_molecule=10, n_conformers=100, molecules_interval=(2, 50),
                       conformers_interval=(2, 50), predicted={"st": estimate},
                       weighted_error=estimate, neighbours=[], forms={"st": "x"},
                       determined=False, warnings=[],
                       next_cells=[(3 + len(calls), 5, 0.5), (40 + len(calls), 2, 0.2)])]

    state = run_loop(AdaptiveState(budget=100, criterion="x"), refit=refit,
                     measure=lambda r: None, save=lambda s: None, max_cells=3, per_round=2,
                     max_ratio=4.0)
    assert state.cells_added == 3 and state.stopped.startswith("cell budget spent")
    assert [len(r.cells) for r in state.rounds] == [2, 1]


# ---------------------------------------------------------------- verify's designs
def _advice_at(m: int):
    from mlipdiv.study.advise import Advice, Estimate
    estimate = Estimate(value=1.0, ci_low=0.5, ci_high=2.0)
    return Advice(model="m", selection="random-random", metric="e", budget=48, weights={"st": 1},
                  cost_per_molecule=0, cost_per_conformer=1, n_molecules=m,
                  conformers_per_molecule=48 // m, n_conformers=m * (48 // m),
                  molecules_interval=(m, m), conformers_interval=(1, 1),
                  predicted={"st": estimate}, weighted_error=estimate, neighbours=[],
                  forms={"st": "x"}, determined=True, warnings=[])


@pytest.mark.parametrize("advised", [2, 6, 12, 24, 48])
def test_verify_never_compares_a_design_with_itself(advised):
    from mlipdiv.study.config import parse_config
    from mlipdiv.study.verify import (
        ADVISED,
        CONFORMER_HEAVY,
        FEWER_STEP,
        MORE_STEP,
        STRUCTURE_HEAVY,
        verify_designs,
    )
    config = parse_config("[data]\nn_molecules = 100\nconformers = 16\n"
                          "[fixed_budget]\nbudget = 48\nmolecules = [2, 6, 24]\n")
    limits = DataLimits(max_molecules=24, max_conformers_per_molecule=30)
    targets = verify_designs(_advice_at(advised), config, limits, budget=48)
    assert targets[ADVISED] == advised
    assert len(set(targets.values())) == len(targets) >= 3
    if advised == 24:  # the structure-heavy extreme itself: compared one grid step below
        assert STRUCTURE_HEAVY not in targets and targets[FEWER_STEP] == 6
    if advised == 2:  # the conformer-heavy extreme itself: compared one grid step above
        assert CONFORMER_HEAVY not in targets and targets[MORE_STEP] == 6


def test_exponents_are_shared_across_splits_only_when_held_out_error_falls():
    from mlipdiv.study.curves import share_exponents
    from mlipdiv.study.fit import prepare_cells

    rng = np.random.default_rng(5)
    cells = [(m, c) for m in (2, 6, 24) for c in (1, 3, 9)]
    rows = [dict(model="m", selection="s", split=split, M=m, C=c, replicate=r,
                 e=float(scale * true_error("st", m, c) * np.exp(rng.normal(0, 0.12))))
            for split, scale in (("st", 1.0), ("sf", 1.6)) for m, c in cells for r in range(2)]
    table = pd.DataFrame(rows)
    fits, _ = fit_results(table, "e")
    by_split = {f.split: f for f in fits}
    shared = [f for f in fits if f.shared]
    for fit in shared:
        other = next(s for s in by_split if s != fit.split)
        exponent = fit.shared.split()[1]
        assert fit.params[exponent] == pytest.approx(by_split[other].params[exponent])
        joint, separate = (float(x) for x in
                           fit.shared.split("log error ")[1].split(" fitted")[0]
                           .split(" against "))
        assert joint < separate
    # the separate fits, offered again, are either kept or improved on held-out error
    separate_fits = [fit_surface(g.rename(columns={"e": "error"}), model="m", split=s,
                                 metric="e", selection="s")
                     for s, g in table.groupby("split")]
    again = share_exponents(separate_fits, {s: prepare_cells(
        g.rename(columns={"e": "error"})) for s, g in table.groupby("split")})
    assert [f.shared is None for f in again] in ([True, True], [False, False])


def test_verify_conformer_heavy_design_is_the_fewest_molecules_the_pool_can_supply():
    from mlipdiv.study.config import parse_config
    from mlipdiv.study.verify import CONFORMER_HEAVY, verify_designs
    config = parse_config("[data]\nn_molecules = 300\nconformers = 32\n"
                          "[fixed_budget]\nbudget = 240\nmolecules = [10, 30, 120]\n")
    limits = DataLimits(max_molecules=190, max_conformers_per_molecule=25)
    targets = verify_designs(_advice_at(120), config, limits, budget=480)
    assert targets[CONFORMER_HEAVY] == 20  # 480 / 25 conformers a molecule, not the grid's 10
