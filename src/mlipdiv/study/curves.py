"""A study's learning curves: each split's curve fitted on its own (`fit.fit_surface`), then
exponents shared across splits where that lowers the held-out error.

After each split's curve is chosen on its own, the exponents that two or more accepted curves
carry on the same variable (e.g. the M exponent alpha of ST and SF) are fitted jointly: one
shared exponent, each split keeping its own amplitudes and its own between-cell scatter tau.
Both fits are scored by the same leave-one-cell-out cross-validation (one (M, C) left out of
every split at once); the joint fit replaces the separate curves only when its pooled held-out
RMSE of log error is lower, and each curve then says what it shares (`SurfaceFit.shared`).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from mlipdiv.errors import MlipdivError
from mlipdiv.metrics.cells import cell_summary
from mlipdiv.study.fit import (
    BOUND_TOLERANCE,
    EFFECTIVE_AXIS,
    EFFECTIVE_COLUMN,
    EXPONENT_BOUNDS,
    FORMS,
    N_CV_SAMPLES,
    N_SAMPLES,
    NOMINAL_AXIS,
    HeldOut,
    SurfaceFit,
    cell_arrays,
    cells_from_replicates,
    draw_truncated,
    fit_surface,
    log_predict,
    natural_params,
    param_bounds,
    prepare_cells,
    sample_columns,
)


@dataclass(frozen=True)
class _Layout:
    """Where each split's parameters sit in the joint vector."""

    splits: list[str]
    index: dict[str, list[int]]  # split -> joint positions of its form's parameters
    size: int
    shared: tuple[str, ...]  # the exponent shared, with its variable


def _candidates(fits: dict[str, SurfaceFit]) -> list[tuple[tuple[str, str], tuple[str, ...]]]:
    """Every (exponent, variable) carried by two or more accepted curves, with every subset
    of two or more of those splits that could share it."""
    keyed: dict[tuple[str, str], list[str]] = {}
    for split, fit in fits.items():
        for _, exponent, variable in FORMS[fit.form].terms:
            keyed.setdefault((exponent, variable), []).append(split)
    return [(key, subset) for key, splits in sorted(keyed.items())
            for size in range(2, len(splits) + 1) for subset in combinations(splits, size)]


def _layout(fits: dict[str, SurfaceFit], key: tuple[str, str], sharing: tuple[str, ...]
            ) -> _Layout:
    """The joint vector of `fits` with exponent `key` shared by the splits in `sharing`."""
    index, size, shared_at = {}, 0, None
    for split, fit in fits.items():
        places = []
        for _, exponent, variable in FORMS[fit.form].terms:
            places.append(size)
            size += 1
            if (exponent, variable) == key and split in sharing:
                if shared_at is None:
                    shared_at, size = size, size + 1
                places.append(shared_at)
            else:
                places.append(size)
                size += 1
        index[split] = places
    return _Layout(list(fits), index, size, (f"{key[0]} (on {key[1]})",))


def _bounds(layout: _Layout, fits: dict[str, SurfaceFit]) -> tuple[np.ndarray, np.ndarray]:
    lower, upper = np.full(layout.size, -np.inf), np.full(layout.size, np.inf)
    for split in layout.splits:
        low, high = param_bounds(FORMS[fits[split].form])
        lower[layout.index[split]], upper[layout.index[split]] = low, high
    return lower, upper


def _solve(layout, fits, cells, start):
    def residuals(theta):
        parts = []
        for split in layout.splits:
            m, k, y, s = cell_arrays(cells[split])
            sigma = np.sqrt(s ** 2 + fits[split].tau ** 2)
            parts.append((log_predict(FORMS[fits[split].form], theta[layout.index[split]],
                                      m, k) - y) / sigma)
        return np.concatenate(parts)

    lower, upper = _bounds(layout, fits)
    return least_squares(residuals, np.clip(start, lower, upper), bounds=(lower, upper),
                         method="trf", x_scale="jac")


def _start(layout: _Layout, fits: dict[str, SurfaceFit]) -> np.ndarray:
    """The separate fits' parameters (log amplitudes), shared exponents averaged."""
    values: dict[int, list[float]] = {}
    for split in layout.splits:
        fit = fits[split]
        theta = np.array([fit.params[p] for p in FORMS[fit.form].params])
        theta[0::2] = np.log(theta[0::2])
        for position, value in zip(layout.index[split], theta, strict=True):
            values.setdefault(position, []).append(float(value))
    return np.array([np.mean(values[i]) for i in range(layout.size)])


def _on_bound(layout: _Layout, theta: np.ndarray, fits: dict[str, SurfaceFit]) -> bool:
    for split in layout.splits:
        exponents = theta[layout.index[split]][1::2]
        if any(abs(e - b) < BOUND_TOLERANCE for e in exponents for b in EXPONENT_BOUNDS):
            return True
    return False


def _cross_validate(layout, fits, cells, start, rng) -> dict[str, list[HeldOut]]:
    """Leave one (M, C) out of every split at once; predictive intervals as in fit.py."""
    keys = sorted({(m, c) for table in cells.values() for m, c in zip(table.M, table.C,
                                                                       strict=True)})
    held: dict[str, list[HeldOut]] = {split: [] for split in layout.splits}
    lower, upper = _bounds(layout, fits)
    for m_out, c_out in keys:
        train = {s: t[~((m_out == t.M) & (c_out == t.C))] for s, t in cells.items()}
        result = _solve(layout, fits, train, start)
        draws = draw_truncated(result.x, np.linalg.pinv(result.jac.T @ result.jac), lower,
                               upper, N_CV_SAMPLES, rng)
        for split in layout.splits:
            test = cells[split][(m_out == cells[split].M) & (c_out == cells[split].C)]
            if test.empty:
                continue
            form = FORMS[fits[split].form]
            m, k, y, s = cell_arrays(test)
            point = log_predict(form, result.x[layout.index[split]], m, k)
            samples = natural_params(form, draws[:, layout.index[split]])
            sampled = np.log(np.maximum(form.function(sample_columns(samples), m, k), 1e-300))
            predictive = sampled + rng.normal(size=sampled.shape) * np.sqrt(
                fits[split].tau ** 2 + s ** 2)
            low, high = np.percentile(predictive, [2.5, 97.5], axis=0)
            held[split] += [HeldOut(M=float(m[j]), C=float(test.C.iloc[j]),
                                    measured=float(np.exp(y[j])),
                                    predicted=float(np.exp(point[j])),
                                    ci_low=float(np.exp(low[j])), ci_high=float(np.exp(high[j])),
                                    inside=bool(low[j] <= y[j] <= high[j]))
                            for j in range(len(test))]
    return held


def _rmse(held: list[HeldOut]) -> float:
    return float(np.sqrt(np.mean([np.log(h.predicted / h.measured) ** 2 for h in held])))


def share_exponents(fits: list[SurfaceFit], cells: dict[str, pd.DataFrame],
                    seed: int = 0) -> list[SurfaceFit]:
    """The fits of one (model, selection), with exponents shared across splits where that
    lowers the pooled held-out RMSE of log error (else the fits unchanged). `cells` holds each
    split's prepared design points (`fit.prepare_cells`)."""
    accepted = {f.split: f for f in fits if f.accepted and f.held_out and f.split in cells}
    cells = {split: cells[split] for split in accepted}
    rng = np.random.default_rng(seed)
    best = None
    for key, sharing in _candidates(accepted):
        group = {s: accepted[s] for s in sharing}
        layout = _layout(group, key, sharing)
        result = _solve(layout, group, cells, _start(layout, group))
        if _on_bound(layout, result.x, group):
            continue
        held = _cross_validate(layout, group, {s: cells[s] for s in sharing}, result.x, rng)
        joint = _rmse([h for s in sharing for h in held[s]])
        separate = _rmse([h for s in sharing for h in accepted[s].held_out])
        if joint < separate and (best is None or joint - separate < best[0] - best[1]):
            best = (joint, separate, layout, result, held, sharing)
    if best is None:
        return fits
    joint, separate, layout, result, held, sharing = best
    lower, upper = _bounds(layout, {s: accepted[s] for s in sharing})
    draws = draw_truncated(result.x, np.linalg.pinv(result.jac.T @ result.jac), lower, upper,
                           N_SAMPLES, rng)
    replaced = {}
    for split in layout.splits:
        fit, form = accepted[split], FORMS[accepted[split].form]
        samples = natural_params(form, draws[:, layout.index[split]])
        low, high = np.percentile(samples, [2.5, 97.5], axis=0)
        others = ", ".join(s for s in sharing if s != split)
        replaced[split] = fit.model_copy(update={
            "params": dict(zip(form.params, map(float, natural_params(
                form, result.x[layout.index[split]])), strict=True)),
            "params_ci": {p: (float(a), float(b))
                          for p, a, b in zip(form.params, low, high, strict=True)},
            "samples": samples.tolist(), "held_out": held[split],
            "shared": (f"exponent {layout.shared[0]} fitted jointly with {others}: pooled "
                       f"held-out RMSE of log error {joint:.3f} against {separate:.3f} fitted "
                       "separately")})
    return [replaced.get(f.split, f) for f in fits]


# ---------------------------------------------------------------- a study's fits
def _cells(results: pd.DataFrame, molecules: pd.DataFrame | None, metric: str,
           seed: int) -> tuple[pd.DataFrame, str]:
    """One row per (model, selection, split, M, C) with value, log_se and K, and the name of
    the conformer axis used."""
    effective = EFFECTIVE_COLUMN in results and results[EFFECTIVE_COLUMN].notna().all()
    keys = ["model", "selection", "split", "M", "C"]
    k = (results.groupby(keys)[EFFECTIVE_COLUMN].mean() if effective
         else results.groupby(keys)["C"].mean()).rename("K")
    if molecules is not None and not molecules.empty and f"num_{metric}" in molecules:
        summary = cell_summary(results, molecules, metric, seed=seed)
        # a design point measured by both experiments with one shared run counts once
        summary = summary.drop_duplicates(keys + ["value"])
    else:
        frames = []
        for key, group in results.rename(columns={metric: "error"}).groupby(keys[:3]):
            points = cells_from_replicates(group[["M", "C", "replicate", "error"]]
                                           .groupby(["M", "C", "replicate"], as_index=False)
                                           .mean())
            frames.append(points.drop(columns="K").assign(**dict(zip(keys[:3], key,
                                                                       strict=True))))
        summary = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
            columns=keys + ["value", "log_se"])
    cells = summary.merge(k.reset_index(), on=keys, how="left")
    cells["K"] = cells.K.fillna(cells.C).clip(lower=1.0)
    return cells, EFFECTIVE_AXIS if effective else NOMINAL_AXIS


def fit_results(results: pd.DataFrame, metric: str, seed: int = 0,
                molecules: pd.DataFrame | None = None) -> tuple[list[SurfaceFit], list[str]]:
    """A learning curve per (model, selection, split) of a results table (columns model,
    selection, split, M, C, replicate and the metric; the effective-conformer column when
    present) weighted by the per-cell hierarchical bootstrap of `molecules` (the per-molecule
    error terms; without them, by the replicates' spread), exponents shared across the splits
    of a (model, selection) when that lowers the held-out error. Returns the fits and, for each
    (model, selection, split) that could not be fitted, one line saying why."""
    if metric not in results.columns:
        raise MlipdivError(f"metric {metric!r} is not a column of the results table")
    cells, axis = _cells(results, molecules, metric, seed)
    fits, skipped = [], []
    for (model, selection), pair in cells.groupby(["model", "selection"]):
        group_fits, prepared = [], {}
        for split, group in pair.groupby("split"):
            try:
                group_fits.append(fit_surface(group, model=model, split=split, metric=metric,
                                              selection=selection, conformer_axis=axis,
                                              seed=seed))
                prepared[split] = prepare_cells(group)
            except MlipdivError as exc:
                skipped.append(str(exc))
        fits += share_exponents(group_fits, prepared, seed)
    return fits, skipped
