"""Findings stated as numbers computed from a study's results; where an interval does not
exclude "no effect", the finding says the data do not support a trend."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlipdiv.design.experiments import experiment as design_experiment
from mlipdiv.design.kinds import test_set_kinds
from mlipdiv.errors import MlipdivError
from mlipdiv.metrics.hierarchical import trend_slope
from mlipdiv.report.tables import Z95
from mlipdiv.study.advise import Advice, describe_cell
from mlipdiv.study.fit import FORMS, NULL_FORM, SurfaceFit


def _split(name: str) -> str:
    """A test set's short label ("CF"); a file stem scored by `evaluate --data` as it is."""
    kinds = {kind.name: kind for kind in test_set_kinds()}
    return kinds[name].label if name in kinds else name


def trend_findings(terms: pd.DataFrame, metric_label: str, root: bool = False,
                   seed: int = 0) -> list[str]:
    """Per experiment, model, selection and split: the slope of log error on the log of the
    experiment's axis (M or C) with its 95 % interval from the hierarchical
    bootstrap (replicates, then test molecules, drawn jointly for all cells). A trend is
    stated only when the interval excludes zero. `terms` as `tables.metric_terms`."""
    lines = []
    for (experiment, model, selection, split), group in terms.groupby(
            ["experiment", "model", "selection", "split"], sort=True):
        axis = design_experiment(experiment).axis
        points = group.drop_duplicates("cell").set_index("cell")[axis]
        if points.nunique() < 2:
            continue
        where = f"{experiment}, {model}, {selection}: {_split(split)} {metric_label}"
        try:
            trend = trend_slope(group[["cell", "replicate", "inchikey", "num", "den"]],
                                points.to_dict(), root=root, seed=seed)
        except MlipdivError as exc:
            lines.append(f"{where}: no slope ({exc}).")
            continue
        numbers = (f"slope of log error on log {axis} {trend.slope:.2f} (95 % CI "
                   f"{trend.ci_low:.2f} to {trend.ci_high:.2f}) over {trend.n_cells} cells")
        numbers += (f" × {trend.n_replicates} replicates" if trend.n_replicates > 1 else
                    "; one replicate, so the interval ignores training variability")
        if trend.direction == "unsupported":
            lines.append(f"{where}: {numbers}; the interval includes 0, so these data do not "
                         f"support a trend with {axis}.")
        else:
            lines.append(f"{where}: error {trend.direction} as {axis} grows ({numbers}).")
    return lines


def _parameter(fit: SurfaceFit, name: str) -> str:
    low, high = fit.params_ci[name]
    return f"{fit.params[name]:.2f} (95 % CI {low:.2f}–{high:.2f})"


_VARIABLE = {"M": "M", "K": "K", "N": "N_eff"}


def _curve(fit: SurfaceFit) -> str:
    """The chosen learning curve with its exponents, e.g. "error ∝ M^-0.61 (...) + K^-0.3"."""
    terms = [f"{_VARIABLE[variable]}^-{_parameter(fit, exponent)}"
             for _, exponent, variable in FORMS[fit.form].terms]
    return "error ∝ " + " + ".join(terms)


def surface_findings(fits: list[SurfaceFit], skipped: list[str]) -> list[str]:
    """Per split: the chosen learning curve with its exponents, the held-out error of every
    candidate form, which were rejected and why, and the measured calibration (held-out cells
    inside their 95 % predictive interval)."""
    lines = []
    for fit in fits:
        scores = ", ".join(f"{name} {c.cv_rmse_log:.3f}" + (" (rejected)" if c.rejected else "")
                           for name, c in fit.candidates.items() if c.cv_rmse_log is not None)
        inside, held = fit.coverage
        head = (f"{fit.model} ({fit.selection}), {_split(fit.split)}: leave-one-cell-out "
                f"cross-validation over {fit.n_cells} cells (held-out RMSE of log error: "
                f"{scores}) chose {fit.form}; {inside} of {held} held-out cells inside their "
                f"95 % predictive interval; K = {fit.conformer_axis} (K = C^{fit.kappa:.2f})")
        rejected = "; ".join(f"{name}: {c.rejected}" for name, c in fit.candidates.items()
                             if c.rejected)
        if not fit.accepted:
            lines.append(f"{head}. {fit.note}.")
            continue
        body = (f"{_curve(fit)}; between-cell scatter tau {fit.tau:.3f} (log units); intervals "
                f"from the {fit.uncertainty.split(' (')[0]}")
        if fit.form == NULL_FORM:
            body += (": error depends on the total N only, so these data do not show that "
                     "splitting N between molecules and conformers matters for this split")
        if fit.shared:
            body += f"; {fit.shared}"
        if fit.alternatives:
            body += (f"; held-out error cannot tell it from {', '.join(fit.alternatives)} "
                     "(one-standard-error rule), so the advice's intervals mix their samples")
        if not fit.all_forms_compared:
            body += ("; too few cells to cross-validate every form, so the form is not "
                     "established")
        lines.append(f"{head}; {body}" + (f" (rejected forms — {rejected})" if rejected else "")
                     + ".")
    lines += [f"No surface: {reason}." for reason in skipped]
    return lines


def advice_findings(advice: list[Advice]) -> list[str]:
    """The advised (M, C) per model with predicted errors and any warnings."""
    lines = []
    for item in advice:
        predicted = "; ".join(f"{_split(s)} {e.value:.3g} (95 % CI {e.ci_low:.3g}–"
                              f"{e.ci_high:.3g})" for s, e in item.predicted.items())
        lines.append(
            f"{item.model} ({item.selection}), budget {item.budget:g}: M = {item.n_molecules} "
            f"molecules × C = {item.conformers_per_molecule} conformers (M interval "
            f"{item.molecules_interval[0]}–{item.molecules_interval[1]}, C interval "
            f"{item.conformers_interval[0]}–{item.conformers_interval[1]}); predicted "
            f"{predicted}; " + ("determined." if item.determined else "not determined" + (
                "; to narrow it, run next: " + ", ".join(
                    describe_cell(*cell) for cell in item.next_cells) if item.next_cells
                else "")
                + "."))
        lines += [f"Warning ({item.model}): {warning}." for warning in item.warnings]
    return lines


def selection_findings(cells: pd.DataFrame, metric_label: str,
                       baseline: str = "random-random") -> list[str]:
    """Each diversity-aware selection against random draws of the same cells: the geometric
    mean error ratio over matched (experiment, M, C) cells per model and split."""
    keys = ["experiment", "model", "split", "M", "C"]
    base = cells[cells.selection == baseline].set_index(keys)
    lines = []
    for selection in sorted(set(cells.selection) - {baseline}):
        other = cells[cells.selection == selection].set_index(keys)
        matched = other.merge(base, left_index=True, right_index=True, suffixes=("_s", "_b"))
        for (model, split), group in matched.groupby(level=["model", "split"]):
            difference = group.log_value_s - group.log_value_b
            se = float(np.sqrt((group.log_se_s ** 2 + group.log_se_b ** 2).sum())) / len(group)
            value = float(np.exp(difference.mean()))
            low, high = (float(np.exp(difference.mean() + sign * Z95 * se)) for sign in (-1, 1))
            verdict = ("lower error than random" if high < 1 else "higher error than random"
                       if low > 1 else "no difference these data support")
            lines.append(f"{model}, {_split(split)} {metric_label}: {selection} vs {baseline} "
                         f"over {len(group)} matched cells, error ratio {value:.2f} (95 % CI "
                         f"{low:.2f}–{high:.2f}): {verdict}.")
    return lines
