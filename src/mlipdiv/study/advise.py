"""Budget advice: the (M, C) that minimises the weighted predicted error under a QM budget.

The cost of a dataset is `cost_per_molecule·M + cost_per_conformer·M·C` (by default one unit
per conformer, so the budget is N = M·C). Every feasible integer M is scored with the fitted
surfaces of the weighted splits; the same search over the fits' uncertainty samples gives the
interval of the optimum and of its predicted errors.

The search stays within what the data support: M within the measured M range and within the
pool's molecules, C within the conformers the pool holds per molecule (`DataLimits`). When the
surfaces would put the optimum beyond the measured M range, the advice says so as a direction
("more molecules than measured") and reports the edge of the range, not an extrapolated number
with an interval that means nothing. Every interval contains its estimate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel

from mlipdiv.design.kinds import default_advice_weights, test_set_names
from mlipdiv.errors import FieldError, MlipdivError
from mlipdiv.metrics.hierarchical import cover
from mlipdiv.study.fit import SurfaceFit

MAX_CANDIDATES = 4000


class Estimate(BaseModel):
    """A value with a 95 % interval."""

    value: float
    ci_low: float
    ci_high: float


class DataLimits(BaseModel):
    """What the training pool can hold: molecules, and training conformers per molecule."""

    max_molecules: int
    max_conformers_per_molecule: int


class Neighbour(BaseModel):
    """A measured cell near the optimum: its (M, C) and, per split, measured vs predicted."""

    n_molecules: int
    conformers_per_molecule: float
    measured: dict[str, float]
    predicted: dict[str, float]


class Advice(BaseModel):
    """The advised (M, C) for one model under one budget."""

    model: str
    selection: str
    metric: str
    budget: float
    weights: dict[str, float]
    cost_per_molecule: float
    cost_per_conformer: float
    n_molecules: int
    conformers_per_molecule: int
    n_conformers: int
    molecules_interval: tuple[int, int]
    conformers_interval: tuple[int, int]
    predicted: dict[str, Estimate]
    weighted_error: Estimate
    neighbours: list[Neighbour]
    forms: dict[str, str]
    determined: bool
    warnings: list[str]
    # None when the optimum lies inside the measured M range; else e.g. "more molecules than
    # measured (M > 16)": the fits point beyond the data, n_molecules is the range's edge
    direction: str | None = None
    limits: DataLimits | None = None


def parse_weights(text: str) -> dict[str, float]:
    """`cf=1,st=2,sf=0.5` -> {"cf": 1.0, ...}; MlipdivError naming the bad item."""
    weights = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if (not sep or name.strip() not in test_set_names()
                or not np.isfinite(weight) or weight < 0):
            raise FieldError("advice.weights", f"item {item!r}", "expected SPLIT=WEIGHT with "
                             f"SPLIT one of {', '.join(test_set_names())} and WEIGHT a finite "
                             "number >= 0")
        weights[name.strip()] = weight
    if not any(weights.values()):
        raise FieldError("advice.weights", None, "at least one weight must be positive")
    return weights


def feasible_designs(budget: float, cost_per_molecule: float,
                     cost_per_conformer: float) -> tuple[np.ndarray, np.ndarray]:
    """Candidate integer (M, C) pairs spending at most `budget`, C as large as it allows."""
    if cost_per_conformer <= 0:
        raise FieldError("advice.cost_per_conformer", cost_per_conformer, "must be > 0")
    if cost_per_molecule < 0:
        raise FieldError("advice.cost_per_molecule", cost_per_molecule, "must be >= 0")
    max_molecules = int(budget // (cost_per_molecule + cost_per_conformer))
    if max_molecules < 1:
        raise FieldError("budget", f"{budget:g}", "not enough for one molecule with one "
                         "conformer at the given costs")
    molecules = np.unique(np.round(np.geomspace(1, max_molecules, MAX_CANDIDATES)).astype(int))
    conformers = np.floor((budget - cost_per_molecule * molecules)
                          / (cost_per_conformer * molecules)).astype(int)
    keep = conformers >= 1
    return molecules[keep], conformers[keep]


def _select_fits(fits: list[SurfaceFit], model: str, selection: str,
                 weights: dict[str, float]) -> dict[str, SurfaceFit]:
    by_split = {f.split: f for f in fits if f.model == model and f.selection == selection}
    missing = [s for s, w in weights.items() if w > 0 and s not in by_split]
    if missing:
        raise MlipdivError(f"advice for {model} ({selection}): no fitted surface for split(s) "
                           f"{', '.join(missing)} (weights name them)")
    return {s: by_split[s] for s, w in weights.items() if w > 0}


def _neighbours(results: pd.DataFrame | None, fit: SurfaceFit, molecules: int,
                conformers: int, selected: dict[str, SurfaceFit]) -> list[Neighbour]:
    """The (up to three) measured cells closest to the optimum in log M, log C."""
    if results is None:
        return []
    metric = fit.metric
    rows = results[(results.model == fit.model) & (results.selection == fit.selection)
                   & results.split.isin(list(selected))]
    cells = rows.groupby(["M", "C", "split"])[metric]
    means = cells.mean().unstack("split")
    if means.empty:
        return []
    m = means.index.get_level_values(0).to_numpy(float)
    c = means.index.get_level_values(1).to_numpy(float)
    distance = np.hypot(np.log(m / molecules), np.log(c / conformers))
    found = []
    for position in np.argsort(distance)[:3]:
        cell_m, cell_c = int(m[position]), float(c[position])
        measured = {s: float(v) for s, v in means.iloc[position].items() if np.isfinite(v)}
        found.append(Neighbour(
            n_molecules=cell_m, conformers_per_molecule=cell_c, measured=measured,
            predicted={s: float(selected[s].predict(cell_m, cell_c)) for s in measured}))
    return found


def advise(fits: list[SurfaceFit], budget: float, *, model: str | None = None,
           selection: str = "random-random", weights: dict[str, float] | None = None,
           cost_per_molecule: float = 0.0, cost_per_conformer: float = 1.0,
           results: pd.DataFrame | None = None, limits: DataLimits | None = None) -> Advice:
    """The (M, C) minimising the weighted predicted error of `model` (cells drawn with
    `selection`) under `budget`, searched within the measured M range and the pool's `limits`.
    `results` (the study's table) supplies the measured neighbours of the optimum.
    """
    models = sorted({f.model for f in fits})
    if not models:
        raise MlipdivError("advice: the study has no fitted error surfaces")
    model = model or models[0]
    if model not in models:
        raise FieldError("model", repr(model), f"the study has fits for {', '.join(models)}")
    weights = weights or default_advice_weights()
    selected = _select_fits(fits, model, selection, weights)
    first = next(iter(selected.values()))
    molecules, conformers = _supported(feasible_designs(budget, cost_per_molecule,
                                                        cost_per_conformer), limits, budget)
    m_range = _measured_range(selected, "grid_molecules")
    inside = (molecules >= m_range[0]) & (molecules <= m_range[1])
    if not inside.any():
        raise MlipdivError(f"advice at budget {budget:g}: no M within the measured "
                           f"{m_range[0]}..{m_range[1]} is affordable within the pool")

    def weighted(predict, m=molecules, c=conformers) -> np.ndarray:
        return sum(weights[s] * predict(fit, m, c) for s, fit in selected.items())

    objective = weighted(lambda f, m, c: f.predict(m, c))
    determined = any(f.depends_on_split() for f in selected.values())
    direction = None
    if determined:
        best = int(np.flatnonzero(inside)[np.argmin(objective[inside])])
        beyond = int(np.argmin(objective))
        if not inside[beyond] and objective[beyond] < objective[best]:
            direction = (f"more molecules than measured (M > {m_range[1]})"
                         if molecules[beyond] > m_range[1]
                         else f"fewer molecules than measured (M < {m_range[0]})")
    else:  # any split is as good: stay in the middle of the measured M range
        middle = np.sqrt(np.prod(m_range))
        best = int(np.argmin(np.abs(np.log(molecules / middle))))
    best_m, best_c = int(molecules[best]), int(conformers[best])
    sampled = weighted(lambda f, m, c: f.predict_samples(m, c), molecules[inside],
                       conformers[inside])
    sample_best = np.argmin(sampled, axis=1)
    m_low, m_high = _containing(np.percentile(molecules[inside][sample_best], [2.5, 97.5]),
                                best_m)
    c_low, c_high = _containing(np.percentile(conformers[inside][sample_best], [2.5, 97.5]),
                                best_c)
    sampled = weighted(lambda f, m, c: f.predict_samples(m, c))

    predicted = {s: _estimate(float(f.predict(best_m, best_c)),
                              f.predict_samples(best_m, best_c)) for s, f in selected.items()}
    total = _estimate(float(objective[best]), sampled[:, best])
    return Advice(
        model=model, selection=selection, metric=first.metric, budget=budget,
        weights=weights, cost_per_molecule=cost_per_molecule,
        cost_per_conformer=cost_per_conformer, n_molecules=best_m,
        conformers_per_molecule=best_c, n_conformers=best_m * best_c,
        molecules_interval=(int(round(m_low)), int(round(m_high))),
        conformers_interval=(int(round(c_low)), int(round(c_high))),
        predicted=predicted, weighted_error=total,
        neighbours=_neighbours(results, first, best_m, best_c, selected),
        forms={s: f.form for s, f in selected.items()}, determined=determined,
        warnings=_warnings(selected, best_m, best_c, determined, direction),
        direction=direction, limits=limits,
    )


def _supported(designs: tuple[np.ndarray, np.ndarray], limits: DataLimits | None,
               budget: float) -> tuple[np.ndarray, np.ndarray]:
    """The candidate designs the pool can hold."""
    molecules, conformers = designs
    if limits is None:
        return molecules, conformers
    keep = ((molecules <= limits.max_molecules)
            & (conformers <= limits.max_conformers_per_molecule))
    if not keep.any():
        raise MlipdivError(f"advice at budget {budget:g}: no design fits the pool "
                           f"({limits.max_molecules} molecules, at most "
                           f"{limits.max_conformers_per_molecule} training conformers each)")
    return molecules[keep], conformers[keep]


def _containing(interval, value: float) -> tuple[float, float]:
    """A sample-percentile interval widened to hold its point estimate (the best-fit
    parameters' prediction, which skewed samples can leave outside)."""
    return cover(value, *(float(v) for v in interval))


def _estimate(value: float, samples: np.ndarray) -> Estimate:
    low, high = _containing(np.percentile(samples, [2.5, 97.5]), value)
    return Estimate(value=value, ci_low=low, ci_high=high)


def _measured_range(selected: dict[str, SurfaceFit], name: str) -> tuple[float, float]:
    """The smallest and largest measured M ("grid_molecules") or C ("grid_conformers")."""
    return (min(getattr(f, name)[0] for f in selected.values()),
            max(getattr(f, name)[1] for f in selected.values()))


def _warnings(selected: dict[str, SurfaceFit], molecules: int, conformers: int,
              determined: bool, direction: str | None) -> list[str]:
    warnings = []
    if direction:
        warnings.append(f"the fitted surfaces favour {direction}; the advice is the edge of "
                        f"the measured range (M = {molecules}); measure beyond that edge to place "
                        "the optimum")
    if not determined:
        warnings.append("every weighted split is best fitted by the total-only form: the data "
                        "show no effect of splitting N between molecules and conformers, so "
                        "the advised split is not determined by them (M is put in the middle "
                        "of the measured range)")
    m_range = _measured_range(selected, "grid_molecules")
    c_range = _measured_range(selected, "grid_conformers")
    if not m_range[0] <= molecules <= m_range[1]:
        warnings.append(f"extrapolating: M = {molecules} lies outside the measured "
                        f"M = {m_range[0]}..{m_range[1]}")
    if not c_range[0] <= conformers <= c_range[1]:
        warnings.append(f"extrapolating: C = {conformers} lies outside the measured "
                        f"C = {c_range[0]:g}..{c_range[1]:g}")
    return warnings
