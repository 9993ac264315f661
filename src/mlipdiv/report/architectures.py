"""The report's architecture comparison, drawn when a study trains several model families:
error vs M and vs C per architecture on one figure per test set, the advised (M*, C*) per
architecture with its interval, and a sentence computed from those intervals saying whether
the best split between molecules and conformers depends on the architecture. The same
comparison answers "Does pretraining move the optimum?" for a study with several starts
(`[models] start`), whose models are then "ani/scratch" and "ani/pretrained"."""

from __future__ import annotations

import html
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


def _disjoint(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[1] < b[0] or b[1] < a[0]


def _optimum(item: Advice) -> str:
    state = "determined" if item.determined else "not determined"
    return (f"{item.model}: M* = {item.n_molecules} ({item.molecules_interval[0]}–"
            f"{item.molecules_interval[1]}) × C* = {item.conformers_per_molecule} "
            f"({item.conformers_interval[0]}–{item.conformers_interval[1]}), {state}")


def optimum_comparison(advice: list[Advice], noun: str = "architecture",
                       differs: str = "differs") -> list[str]:
    """Per selection with several architectures (or starts: `noun`), one verdict computed
    from the 95 % intervals of their advised (M*, C*): `differs` when two determined optima's
    intervals are disjoint, "not determined: run K more cells" when an optimum is not
    determined (K = the distinct cells its Thompson sampling names), else "same within
    intervals"."""
    lines = []
    by_selection: dict[str, list[Advice]] = {}
    for item in advice:
        by_selection.setdefault(item.selection, []).append(item)
    for selection, items in sorted(by_selection.items()):
        if len({item.model for item in items}) < 2:
            continue
        optima = "; ".join(_optimum(item) for item in items)
        undetermined = [item for item in items if not item.determined]
        determined = [item for item in items if item.determined]
        differ = [(a.model, b.model) for a, b in combinations(determined, 2)
                  if _disjoint(a.molecules_interval, b.molecules_interval)
                  or _disjoint(a.conformers_interval, b.conformers_interval)]
        budget = f"budget {items[0].budget:g}, {selection}"
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
            verdict = ("same within intervals: the 95 % intervals of the advised splits "
                       "overlap, so these data do not show that the best balance of "
                       f"molecules and conformers depends on the {noun}")
        lines.append(f"{noun.capitalize()}s at {budget}: {optima}. Verdict: {verdict}.")
    return lines


def comparison_section(view, title: str, noun: str, differs: str = "differs") -> Section:
    """The optima of the study's models (architectures, or one architecture's starts:
    `noun`) compared from their intervals, with their curves on one figure per test set."""
    metric = view.metric
    cells = view.cell_summary(metric)
    lines = optimum_comparison(view.advice, noun, differs) or [
        f"No advice was fitted for several {noun}s, so their optima are not compared."]
    section = Section(title, "<ul>" + "".join(
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
    return comparison_section(view, "Architectures compared", "architecture")


def starts_section(view) -> Section | None:
    """Does pretraining move the optimum? The scratch and pretrained starts' optima compared
    (verdict "moves" / "same within intervals" / "not determined"), or None when the study
    trained from one start."""
    if len(view.config.models.starts()) < 2:
        return None
    return comparison_section(view, "Does pretraining move the optimum?", "start", "moves")
