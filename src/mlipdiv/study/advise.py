"""Budget advice: the (M, C) that minimises the weighted predicted error under a QM budget.

The cost of a dataset is `cost_per_molecule·M + cost_per_conformer·M·C` (by default one unit
per conformer, so the budget is N = M·C). Every feasible integer M is scored with the fitted
learning curves of the weighted splits; the same search over each fit's uncertainty samples
gives the distribution of the optimum, whose 2.5/97.5 percentiles are its interval (never
widened: when the best fit's optimum falls outside them, a warning says so).

The advice may go beyond the measured cells, up to EXTRAPOLATION_LIMIT times the largest
measured N: M is bounded by what the team can obtain (`DataLimits`: the study's pool, the data
source's molecules, or a stated maximum), and a sentence says how far the advice extrapolates.
It is *determined* only when every weighted curve was accepted (no exponent on a bound), at
least one says the split matters, and the optimum's interval spans at most MAX_MOLECULE_RATIO
in M; otherwise the advice names the cells that would narrow it (where the fit's samples put
the optimum, Thompson sampling).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel

from mlipdiv.design.kinds import default_advice_weights, test_set_names
from mlipdiv.errors import FieldError, MlipdivError
from mlipdiv.study.fit import FORMS, SurfaceFit

MAX_CANDIDATES = 4000
EXTRAPOLATION_LIMIT = 10.0  # the largest budget advised, as a multiple of the largest measured N
MAX_MOLECULE_RATIO = 4.0  # a determined optimum's M interval spans at most this factor
NEXT_CELLS = 4  # cells named as "run next" when the advice is not determined


class Estimate(BaseModel):
    """A value with a 95 % interval."""

    value: float
    ci_low: float
    ci_high: float


class DataLimits(BaseModel):
    """What the team can obtain: molecules, and conformers per molecule (None: unbounded, new
    conformers can be generated), and where the bound comes from."""

    max_molecules: int
    max_conformers_per_molecule: int | None
    source: str = "the study's training pool"


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
    # how far the advice reaches beyond the measured cells, in words (None: within them)
    extrapolation: str | None = None
    # when not determined: unmeasured (M, C) cells at this budget where the fits' samples most
    # often put the optimum (Thompson sampling), with the share of samples that did
    next_cells: list[tuple[int, int, float]] = []
    limits: DataLimits | None = None

    @property
    def molecule_ratio(self) -> float:
        """How many-fold the optimum's M interval spans."""
        return self.molecules_interval[1] / max(self.molecules_interval[0], 1)


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
    `selection`) under `budget`, within what the team can obtain (`limits`) and up to
    EXTRAPOLATION_LIMIT times the largest measured N. `results` (the study's table) supplies
    the measured neighbours of the optimum."""
    models = sorted({f.model for f in fits})
    if not models:
        raise MlipdivError("advice: the study has no fitted error surfaces")
    model = model or models[0]
    if model not in models:
        raise FieldError("model", repr(model), f"the study has fits for {', '.join(models)}")
    weights = weights or default_advice_weights()
    selected = _select_fits(fits, model, selection, weights)
    first = next(iter(selected.values()))
    largest = max(f.grid_total[1] for f in selected.values())
    if budget / cost_per_conformer > EXTRAPOLATION_LIMIT * largest:
        raise FieldError("budget", f"{budget:g}", f"more than {EXTRAPOLATION_LIMIT:g}x the "
                         f"largest measured training set (N = {largest:g}); measure larger "
                         "cells first (mlipdiv refine) or advise at a budget up to "
                         f"{EXTRAPOLATION_LIMIT * largest * cost_per_conformer:g}")
    molecules, conformers = _supported(feasible_designs(budget, cost_per_molecule,
                                                        cost_per_conformer), limits, budget)

    def weighted(predict, m=molecules, c=conformers) -> np.ndarray:
        return sum(weights[s] * predict(fit, m, c) for s, fit in selected.items())

    objective = weighted(lambda f, m, c: f.predict(m, c))
    sampled = weighted(lambda f, m, c: f.predict_samples(m, c))
    splits_matter = any(f.depends_on_split() for f in selected.values())
    accepted = all(f.accepted and f.all_forms_compared for f in selected.values())
    if splits_matter:
        best = int(np.argmin(objective))
        sample_best = np.argmin(sampled, axis=1)
    else:  # error depends on N only: every split is as good, stay in the measured M range
        best = _middle(molecules, _measured_range(selected, "grid_molecules"))
        sample_best = np.full(len(sampled), best)
    best_m, best_c = int(molecules[best]), int(conformers[best])
    m_low, m_high = np.percentile(molecules[sample_best], [2.5, 97.5])
    c_low, c_high = np.percentile(conformers[sample_best], [2.5, 97.5])
    interval_m = (int(np.floor(m_low)), int(np.ceil(m_high)))
    interval_c = (int(np.floor(c_low)), int(np.ceil(c_high)))
    narrow = interval_m[1] / max(interval_m[0], 1) <= MAX_MOLECULE_RATIO
    determined = accepted and splits_matter and narrow
    predicted = {s: _estimate(float(f.predict(best_m, best_c)),
                              f.predict_samples(best_m, best_c)) for s, f in selected.items()}
    extrapolation = _extrapolation(selected, budget / cost_per_conformer, best_m, best_c)
    return Advice(
        model=model, selection=selection, metric=first.metric, budget=budget,
        weights=weights, cost_per_molecule=cost_per_molecule,
        cost_per_conformer=cost_per_conformer, n_molecules=best_m,
        conformers_per_molecule=best_c, n_conformers=best_m * best_c,
        molecules_interval=interval_m, conformers_interval=interval_c,
        predicted=predicted, weighted_error=_estimate(float(objective[best]), sampled[:, best]),
        neighbours=_neighbours(results, first, best_m, best_c, selected),
        forms={s: f.form for s, f in selected.items()}, determined=determined,
        warnings=_warnings(selected, (best_m, best_c), interval_m, accepted, splits_matter,
                           narrow, extrapolation)
        + _at_limit((best_m, best_c), (molecules, conformers), limits),
        extrapolation=extrapolation,
        next_cells=[] if determined else thompson_cells(
            molecules[sample_best], conformers[sample_best], _measured_cells(selected),
            NEXT_CELLS, (molecules, conformers)),
        limits=limits)


def thompson_cells(sample_m: np.ndarray, sample_c: np.ndarray,
                   measured: set[tuple[float, float]], count: int,
                   feasible: tuple[np.ndarray, np.ndarray] | None = None
                   ) -> list[tuple[int, int, float]]:
    """Thompson sampling: the `count` (M, C) most often optimal across the fits' samples that
    are not measured yet, with the share of samples that put the optimum there. A cell within
    15 % in M (and in C) of a measured or already chosen one counts as that one. When the
    samples agree on measured cells only, the unmeasured `feasible` designs nearest (in log M)
    to the most sampled optimum follow, with share 0."""
    pairs, counts = np.unique(np.stack([sample_m, sample_c], axis=1), axis=0,
                              return_counts=True)
    order = np.argsort(-counts, kind="stable")
    candidates = [(int(pairs[i][0]), int(pairs[i][1]), float(counts[i] / len(sample_m)))
                  for i in order]
    if feasible is not None:
        top = candidates[0][0]
        near = np.argsort(np.abs(np.log(feasible[0] / top)), kind="stable")
        candidates += [(int(feasible[0][i]), int(feasible[1][i]), 0.0) for i in near]
    chosen: list[tuple[int, int, float]] = []
    for m, c, share in candidates:
        taken = measured | {(a, b) for a, b, _ in chosen}
        if not any(abs(np.log(m / a)) < 0.15 and abs(np.log(c / b)) < 0.15 for a, b in taken):
            chosen.append((m, c, share))
        if len(chosen) == count:
            break
    return chosen


def describe_cell(m: int, c: int, share: float) -> str:
    """A proposed cell in words: where the samples put the optimum, or its nearest neighbour."""
    why = (f"{share:.0%} of the curves' samples put the optimum there" if share > 0 else
           "unmeasured, next to the most sampled optimum")
    return f"M = {m} × C = {c} ({why})"


def _measured_cells(selected: dict[str, SurfaceFit]) -> set[tuple[float, float]]:
    return {(h.M, h.C) for f in selected.values() for h in f.held_out}


def _at_limit(best: tuple[int, int], designs: tuple[np.ndarray, np.ndarray],
              limits: DataLimits | None) -> list[str]:
    """A warning when the optimum sits within 10 % of the most molecules, or of the most
    conformers per molecule, the team can obtain (when that limit, not the budget, binds)."""
    if limits is None:
        return []
    warnings = []
    molecules, conformers = designs
    if molecules.max() >= 0.99 * limits.max_molecules and best[0] >= 0.9 * molecules.max():
        warnings.append(f"the optimum sits at the most molecules obtainable (M = {best[0]}, "
                        f"{limits.source}): with more molecules available the advice would "
                        "move towards them")
    most_c = limits.max_conformers_per_molecule
    if most_c is not None and conformers.max() >= 0.99 * most_c and best[1] >= 0.9 * most_c:
        warnings.append(f"the optimum sits at the most conformers a molecule offers (C = "
                        f"{best[1]}, {limits.source}): with more conformers per molecule the "
                        "advice would move towards them")
    return warnings


def _middle(molecules: np.ndarray, m_range: tuple[float, float]) -> int:
    return int(np.argmin(np.abs(np.log(molecules / np.sqrt(np.prod(m_range))))))


def _supported(designs: tuple[np.ndarray, np.ndarray], limits: DataLimits | None,
               budget: float) -> tuple[np.ndarray, np.ndarray]:
    """The candidate designs the team can obtain."""
    molecules, conformers = designs
    if limits is None:
        return molecules, conformers
    keep = molecules <= limits.max_molecules
    if limits.max_conformers_per_molecule is not None:
        keep &= conformers <= limits.max_conformers_per_molecule
    if not keep.any():
        most = ("" if limits.max_conformers_per_molecule is None else
                f", at most {limits.max_conformers_per_molecule} conformers each")
        raise MlipdivError(f"advice at budget {budget:g}: no design fits {limits.source} "
                           f"({limits.max_molecules} molecules{most})")
    return molecules[keep], conformers[keep]


def _estimate(value: float, samples: np.ndarray) -> Estimate:
    low, high = np.percentile(samples, [2.5, 97.5])
    return Estimate(value=value, ci_low=float(low), ci_high=float(high))


def _measured_range(selected: dict[str, SurfaceFit], name: str) -> tuple[float, float]:
    """The smallest and largest measured M ("grid_molecules"), C ("grid_conformers") or N."""
    return (min(getattr(f, name)[0] for f in selected.values()),
            max(getattr(f, name)[1] for f in selected.values()))


def _extrapolation(selected: dict[str, SurfaceFit], n_conformers: float, molecules: int,
                   conformers: int) -> str | None:
    """One sentence on how far the advice reaches beyond the measured cells, or None."""
    parts = []
    for label, value, (low, high) in (
            ("the budget N", n_conformers, _measured_range(selected, "grid_total")),
            ("M", molecules, _measured_range(selected, "grid_molecules")),
            ("C", conformers, _measured_range(selected, "grid_conformers"))):
        if value > high * 1.0001:
            parts.append(f"{label} = {value:g} is {value / high:.3g}x the largest measured "
                         f"({high:g})")
        elif value < low * 0.9999:
            parts.append(f"{label} = {value:g} is below the smallest measured ({low:g})")
    if not parts:
        return None
    return ("extrapolating: " + "; ".join(parts) + ". The prediction assumes the fitted "
            "learning curves hold beyond the measured cells; its intervals come from the fits' "
            "samples and do not include a change of form")


def _warnings(selected: dict[str, SurfaceFit], optimum: tuple[int, int],
              interval_m: tuple[int, int], accepted: bool, splits_matter: bool, narrow: bool,
              extrapolation: str | None) -> list[str]:
    warnings = []
    if not accepted:
        rejected = [f"{s}: {f.note}" for s, f in selected.items() if not f.accepted]
        rejected += [f"{s}: {f.n_cells} cells are too few to compare every form (the richest "
                     f"needs {max(len(form.params) for form in FORMS.values()) + 2})"
                     for s, f in selected.items() if f.accepted and not f.all_forms_compared]
        warnings.append("not determined: " + "; ".join(rejected))
    if not splits_matter:
        warnings.append("not determined: every weighted split is best fitted by the total-only "
                        "form, so the data show no effect of splitting N between molecules and "
                        "conformers (M is put in the middle of the measured range)")
    elif not narrow:
        warnings.append(f"not determined: the optimum's M interval {interval_m[0]}-"
                        f"{interval_m[1]} spans more than {MAX_MOLECULE_RATIO:g}x")
    if not interval_m[0] <= optimum[0] <= interval_m[1]:
        warnings.append(f"the best fit's optimum M = {optimum[0]} lies outside the interval "
                        f"of the fits' samples ({interval_m[0]}-{interval_m[1]}): the "
                        "uncertainty is skewed")
    if extrapolation:
        warnings.append(extrapolation)
    return warnings
