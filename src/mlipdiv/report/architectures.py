"""The report's architecture comparison, drawn when a study trains several model families:
error vs M and vs C per architecture on one figure per test set, the advised (M*, C*) per
architecture with its interval, and a sentence computed from those intervals saying whether
the best split between molecules and conformers depends on the architecture. The same
comparison answers "Does pretraining move the optimum?" for a study with several starts
(`[models] start`), whose models are then "ani/scratch" and "ani/pretrained", and "Does the
cheap pilot's advice transfer?" for a study with several label sets (`[data] labels`), whose
models are then "ani/default" and "ani/dft"; that one also compares the fitted learning-curve
exponents of the levels from their intervals. Each comparison sets side by side the models
that differ only in its axis (`axis_group`)."""

from __future__ import annotations

import html
from collections.abc import Callable
from itertools import combinations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from mlipdiv.design.experiments import experiment as design_experiment
from mlipdiv.design.experiments import experiment_names
from mlipdiv.metrics.stats import metric_label
from mlipdiv.report.figures import _log_x, split_name
from mlipdiv.report.sections import Section
from mlipdiv.study.advise import Advice
from mlipdiv.study.fit import FORMS, SurfaceFit

BASELINE_SELECTION = "random-random"


def _selection(cells: pd.DataFrame) -> str:
    """The selection the comparison uses: random draws where the study made them."""
    selections = sorted(cells.selection.unique())
    return BASELINE_SELECTION if BASELINE_SELECTION in selections else selections[0]


def architecture_curves(cells: pd.DataFrame, split: str, metric: str) -> Figure | None:
    """One figure for one test set: a panel per experiment (error vs M, error vs C), a line
    per architecture with its 95 % interval."""
    rows = cells[(cells.split == split) & (cells.selection == _selection(cells))]
    experiments = [e for e in experiment_names() if (rows.experiment == e).any()]
    if rows.model.nunique() < 2 or not experiments:
        return None
    fig, axes = plt.subplots(1, len(experiments), figsize=(5.2 * len(experiments), 4),
                             squeeze=False)
    for ax, experiment in zip(axes[0], experiments, strict=True):
        axis = design_experiment(experiment).axis
        panel = rows[rows.experiment == experiment]
        for index, (model, line) in enumerate(panel.groupby("model")):
            line = line.sort_values(axis)
            ax.errorbar(line[axis], line.value,
                        yerr=[line.value - line.ci_low, line.ci_high - line.value],
                        marker="os^vD<>p"[index % 8], capsize=3, label=model)
        _log_x(ax, panel[axis])
        ax.set_yscale("log")
        ax.set_xlabel("molecules M" if axis == "M" else "conformers per molecule C")
        ax.set_ylabel(metric_label(metric))
        ax.set_title(f"{split_name(split)}: {experiment}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _disjoint(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[1] < b[0] or b[1] < a[0]


def _optimum(item: Advice) -> str:
    state = "determined" if item.determined else "not determined"
    return (f"{item.model}: M* = {item.n_molecules} ({item.molecules_interval[0]}–"
            f"{item.molecules_interval[1]}) × C* = {item.conformers_per_molecule} "
            f"({item.conformers_interval[0]}–{item.conformers_interval[1]}), {state}")


def axis_group(position: int | None) -> Callable[[str], str]:
    """The models compared along one axis: a model label ("ani/pretrained/dft") without its
    component at `position` (0 the architecture, 1 the start, -1 the label set); labels
    with the same rest are compared. None compares every model."""

    def rest(label: str) -> str:
        if position is None:
            return ""
        parts = label.split("/")
        del parts[position]
        return "/".join(parts)

    return rest


def _groups(items: list, group: Callable[[str], str]) -> dict[tuple[str, str], list]:
    """Advice or fits by (selection, the rest of their model label), each with several
    models."""
    grouped: dict[tuple[str, str], list] = {}
    for item in items:
        grouped.setdefault((item.selection, group(item.model)), []).append(item)
    return {key: found for key, found in sorted(grouped.items())
            if len({item.model for item in found}) > 1}


def optimum_comparison(advice: list[Advice], noun: str = "architecture",
                       differs: str = "differs", same: str = "same within intervals",
                       group: Callable[[str], str] | None = None) -> list[str]:
    """Per selection with several architectures (or starts, levels: `noun`; compared within
    `group`), one verdict computed from the 95 % intervals of their advised (M*, C*):
    `differs` when two determined optima's intervals are disjoint, "not determined: run K
    more cells" when an optimum is not determined (K = the distinct cells its Thompson
    sampling names), else `same`."""
    lines = []
    for (selection, rest), items in _groups(advice, group or axis_group(None)).items():
        optima = "; ".join(_optimum(item) for item in items)
        undetermined = [item for item in items if not item.determined]
        determined = [item for item in items if item.determined]
        differ = [(a.model, b.model) for a, b in combinations(determined, 2)
                  if _disjoint(a.molecules_interval, b.molecules_interval)
                  or _disjoint(a.conformers_interval, b.conformers_interval)]
        budget = f"budget {items[0].budget:g}, {selection}" + (f", {rest}" if rest else "")
        if differ:
            pairs = ", ".join(f"{a} vs {b}" for a, b in differ)
            verdict = (f"{differs}: the advised split differs between {noun}s beyond the "
                       f"95 % intervals ({pairs}), so the best balance of molecules and "
                       f"conformers depends on the {noun} here")
        elif undetermined:
            cells = {(m, c) for item in undetermined for m, c, _ in item.next_cells}
            names = ", ".join(item.model for item in undetermined)
            verdict = (f"not determined: the optimum of {names} is not determined, so "
                       f"whether it depends on the {noun} cannot be said; run "
                       f"{max(len(cells), 1)} more cell(s) (mlipdiv refine STUDY --cells "
                       f"{max(len(cells), 1)}" + (": " + ", ".join(
                           f"M = {m} × C = {c}" for m, c in sorted(cells)) if cells else "")
                       + ")")
        else:
            verdict = (f"{same}: the 95 % intervals of the advised splits "
                       "overlap, so these data do not show that the best balance of "
                       f"molecules and conformers depends on the {noun}")
        lines.append(f"{noun.capitalize()}s at {budget}: {optima}. Verdict: {verdict}.")
    return lines


def exponent_comparison(fits: list[SurfaceFit], noun: str, differs: str = "differs",
                        same: str = "same within intervals",
                        group: Callable[[str], str] | None = None) -> list[str]:
    """Per selection and test set with several models (compared within `group`), their
    fitted learning-curve exponents (alpha of M, beta of K, gamma of N) with 95 % intervals,
    and one verdict: `differs` when an exponent the models' accepted fits share has disjoint
    intervals, "not determined" when a fit was rejected or no exponent is shared, else
    `same`."""
    lines = []
    for (selection, rest), found in _groups(fits, group or axis_group(None)).items():
        for split in sorted({fit.split for fit in found}):
            fits_here = [fit for fit in found if fit.split == split]
            if len({fit.model for fit in fits_here}) < 2:
                continue
            accepted = [fit for fit in fits_here if fit.accepted]
            shared = set.intersection(*(set(FORMS[fit.form].exponents) for fit in accepted)) \
                if len(accepted) == len(fits_here) else set()
            values = "; ".join(
                f"{fit.model} ({fit.form}): " + ", ".join(
                    f"{name} = {fit.params[name]:.2f} [{fit.params_ci[name][0]:.2f}, "
                    f"{fit.params_ci[name][1]:.2f}]" for name in FORMS[fit.form].exponents)
                if fit.accepted else f"{fit.model}: no accepted fit"
                for fit in fits_here)
            apart = [f"{name} ({a.model} vs {b.model})" for name in sorted(shared)
                     for a, b in combinations(accepted, 2)
                     if _disjoint(a.params_ci[name], b.params_ci[name])]
            if apart:
                verdict = (f"{differs}: disjoint 95 % intervals of {', '.join(apart)}, so the "
                           f"learning curves fall at different rates between {noun}s")
            elif not shared:
                verdict = ("not determined: " + ("a fit was rejected" if len(accepted) <
                           len(fits_here) else "the chosen forms share no exponent")
                           + f", so the rates cannot be compared between {noun}s")
            else:
                verdict = (f"{same}: the 95 % intervals of {', '.join(sorted(shared))} "
                           f"overlap between {noun}s")
            where = f"{selection}" + (f", {rest}" if rest else "")
            lines.append(f"Fitted exponents, {split_name(split)} ({where}): {values}. "
                         f"Verdict: {verdict}.")
    return lines


def comparison_section(view, title: str, noun: str, differs: str = "differs",
                       same: str = "same within intervals", position: int | None = None,
                       exponents: bool = False, intro: str = "") -> Section:
    """The optima of the study's models (architectures, or one architecture's starts or
    levels of theory: `noun`; those differing only in the model label's component at
    `position`) compared from their intervals, with their fitted exponents when
    `exponents`, and their curves on one figure per test set."""
    metric = view.metric
    cells = view.cell_summary(metric)
    group = axis_group(position)
    lines = optimum_comparison(view.advice, noun, differs, same, group) or [
        f"No advice was fitted for several {noun}s, so their optima are not compared."]
    if exponents:
        lines += exponent_comparison(view.fits, noun, differs, same, group)
    section = Section(title, intro + "<ul>" + "".join(
        f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>")
    for split in cells.split.unique():
        figure = architecture_curves(cells, split, metric)
        if figure is not None:
            section.figures.append((
                f"{noun}s_{split}",
                f"{split_name(split)}: {metric_label(metric)} per {noun} vs each "
                "experiment's varied axis (M or C), random selection, mean over "
                "replicates with 95 % CI (hierarchical bootstrap)", figure))
    return section


def architectures_section(view) -> Section | None:
    """The comparison, or None when the study trained one architecture."""
    if len(set(view.results.model.str.split("/").str[0])) < 2:
        return None
    return comparison_section(view, "Architectures compared", "architecture", position=0)


def starts_section(view) -> Section | None:
    """Does pretraining move the optimum? The scratch and pretrained starts' optima compared
    (verdict "moves" / "same within intervals" / "not determined"), or None when the study
    trained from one start."""
    if len(view.config.models.starts()) < 2:
        return None
    return comparison_section(view, "Does pretraining move the optimum?", "start", "moves",
                              position=1)


def levels_section(view) -> Section | None:
    """Does the cheap pilot's advice transfer? The optima and fitted exponents of the
    study's label sets (levels of theory, `[data] labels`) compared on the same cells
    (verdict "transfers" / "differs" / "not determined"), or None with one label set."""
    label_sets = view.config.data.label_sets()
    if len(label_sets) < 2:
        return None
    levels = "; ".join(f"{name}: {view.levels.get(name, 'level of theory unrecorded')}"
                       for name in label_sets)
    intro = (f"<p>The same cells trained and scored on each label set ({html.escape(levels)})"
             "; each level's errors are against its own labels. Where the levels' advised "
             "(M*, C*) and learning-curve exponents agree within their 95 % intervals, the "
             "cheap level's pilot gives the expensive level's advice.</p>")
    return comparison_section(view, "Does the cheap pilot's advice transfer?", "level",
                              "differs", "transfers", position=-1, exponents=True,
                              intro=intro)
