"""The report's "Adaptive pilot" section, drawn when the study's adaptive loop (config
`[adaptive]` or `mlipdiv refine`) added cells: each round's cells and why, and how the
optimum and its interval moved, as a table and a figure."""

from __future__ import annotations

import html

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from mlipdiv.report.sections import Section
from mlipdiv.study.adaptive import AdaptiveState, load_state


def _optima(items) -> str:
    return "; ".join(f"{o.model}: M* = {o.n_molecules} × C* = {o.conformers_per_molecule} "
                     f"({o.molecules_interval[0]}–{o.molecules_interval[1]}, "
                     f"{'determined' if o.determined else 'not determined'})" for o in items)


def rounds_table(state: AdaptiveState) -> str:
    def cells(r) -> str:
        return html.escape(", ".join(f"M = {m} × C = {c}" for m, c in r.cells))

    rows = "".join(
        f"<tr><td>{r.index}</td><td>{cells(r)}</td><td>{html.escape(r.why)}</td><td>{html.escape(_optima(r.after))}</td>"
        f"<td>{r.status}</td></tr>" for r in state.rounds)
    return ("<table><tr><th>round</th><th>cells added</th><th>why</th>"
            f"<th>optimum after the round (M interval)</th><th>status</th></tr>{rows}</table>")


def optimum_trace(state: AdaptiveState) -> Figure | None:
    """M* and its 95 % interval per model after each round (round 0: before the first)."""
    if not state.rounds:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.8))
    stages = [state.rounds[0].before] + [r.after for r in state.rounds]
    models = sorted({o.model for stage in stages for o in stage})
    for index, model in enumerate(models):
        points = [(i, o) for i, stage in enumerate(stages) for o in stage if o.model == model]
        x = [i + 0.08 * index for i, _ in points]
        m = [o.n_molecules for _, o in points]
        low = [o.n_molecules - o.molecules_interval[0] for _, o in points]
        high = [o.molecules_interval[1] - o.n_molecules for _, o in points]
        ax.errorbar(x, m, yerr=[low, high], marker="os^vD"[index % 5], capsize=3, label=model)
    ax.set(yscale="log", xlabel="round (0: the grid alone)", ylabel="advised molecules M*")
    ax.set_xticks(range(len(stages)))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def adaptive_section(view) -> Section | None:
    """The adaptive pilot's rounds, or None when it did not run."""
    state = load_state(view.paths.adaptive)
    if state is None:
        return None
    text = (f"<p>After the grid, the adaptive pilot refitted the learning curves at the study's "
            f"budget ({state.budget:g}) and, while the advice was not determined, trained the "
            "cells where the curves' uncertainty samples most often put the optimum (Thompson "
            f"sampling). Stopping criterion: {html.escape(state.criterion)}. Added "
            f"{state.cells_added} design point(s) in {len(state.rounds)} round(s); stopped: "
            f"{html.escape(state.stopped or 'not yet (interrupted; rerun to resume)')}. Final: "
            f"{html.escape(_optima(state.final))}. The pilot's cells enter the learning-curve fit "
            "and the advice; the experiments' trends are computed on the grid alone.</p>"
            + rounds_table(state))
    section = Section("Adaptive pilot", text)
    figure = optimum_trace(state)
    if figure is not None:
        section.figures.append(("adaptive_optimum", "advised M* with its 95 % interval after "
                                "each round of the adaptive pilot", figure))
    return section
