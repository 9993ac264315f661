"""The report's figures (matplotlib, Agg): each function returns a Figure or None when the
study has nothing to draw for it."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mlipdiv.design.experiments import experiment as design_experiment  # noqa: E402
from mlipdiv.design.kinds import test_set_kinds  # noqa: E402
from mlipdiv.study.advise import Advice  # noqa: E402
from mlipdiv.study.fit import SurfaceFit  # noqa: E402


def split_colour(name: str) -> str | None:
    """A test set's colour: matplotlib's cycle colour of the kind's listing order."""
    kinds = {kind.name: kind for kind in test_set_kinds()}
    return f"C{kinds[name].order}" if name in kinds else None


def split_name(name: str) -> str:
    """A test set as figures name it: "CF (unseen conformers)"."""
    kinds = {kind.name: kind for kind in test_set_kinds()}
    return f"{kinds[name].label} ({kinds[name].title})" if name in kinds else name

DIVERSITY_LABELS = {"n_scaffolds": "scaffolds", "mean_tanimoto_distance": "mean Tanimoto distance",
                    "median_rmsd_angstrom": "median RMSD (Å)",
                    "quests_entropy_nats": "QUESTS entropy (nats)",
                    "effective_conformers_per_molecule": "effective C (0.05 Å)",
                    "distinct_geometries_per_molecule": "distinct C (0.5 Å)"}


def _log_x(ax, values: pd.Series) -> None:
    """A log x axis ticked at the measured values, written as plain numbers."""
    ax.set_xscale("log")
    ax.set_xticks(sorted(values.unique()))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def experiment_curves(cells: pd.DataFrame, experiment: str, metric_label: str) -> Figure | None:
    """Error vs the experiment's varied axis (M or C), one panel per
    model and selection, one line per split, 95 % intervals as error bars."""
    rows = cells[cells.experiment == experiment]
    if rows.empty:
        return None
    axis = design_experiment(experiment).axis
    panels = sorted(rows.groupby(["model", "selection"]).groups)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4), squeeze=False)
    for ax, (model, selection) in zip(axes[0], panels, strict=True):
        panel = rows[(rows.model == model) & (rows.selection == selection)]
        for split, line in panel.groupby("split"):
            line = line.sort_values(axis)
            ax.errorbar(line[axis], line.value,
                        yerr=[line.value - line.ci_low, line.ci_high - line.value],
                        marker="o", capsize=3, color=split_colour(split),
                        label=split_name(split))
        _log_x(ax, panel[axis])
        ax.set_yscale("log")
        ax.set_xlabel("molecules M" if axis == "M" else "conformers per molecule C")
        ax.set_ylabel(metric_label)
        ax.set_title(f"{experiment}: {model}, {selection}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _grid(fits: list[SurfaceFit]) -> tuple[np.ndarray, np.ndarray]:
    m_low = min(f.grid_molecules[0] for f in fits) / 2
    m_high = max(f.grid_molecules[1] for f in fits) * 2
    c_low = max(min(f.grid_conformers[0] for f in fits) / 2, 1.0)
    c_high = max(f.grid_conformers[1] for f in fits) * 2
    return np.geomspace(max(m_low, 1.0), m_high, 90), np.geomspace(c_low, c_high, 90)


def optimum_path(fits: list[SurfaceFit], weights: dict[str, float], molecules: np.ndarray,
                 budgets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each budget N, the M (on the `molecules` grid) minimising the weighted error along
    C = N / M; returns (M*, C*)."""
    weighted = [f for f in fits if weights.get(f.split, 0) > 0]
    best_m, best_c = [], []
    for budget in budgets:
        conformers = budget / molecules
        feasible = conformers >= 1
        error = sum(weights[f.split] * f.predict(molecules[feasible], conformers[feasible])
                    for f in weighted)
        index = int(np.argmin(error))
        best_m.append(molecules[feasible][index])
        best_c.append(conformers[feasible][index])
    return np.array(best_m), np.array(best_c)


def surface_map(fits: list[SurfaceFit], cells: pd.DataFrame, advice: Advice | None,
                weights: dict[str, float], dataset_point: tuple[float, float] | None,
                metric_label: str) -> Figure | None:
    """Contours of each split's fitted error over (M, C) for one model, with iso-budget lines,
    the optimum path, the measured cells, this dataset and the advised optimum."""
    if not fits:
        return None
    molecules, conformers = _grid(fits)
    mesh_m, mesh_c = np.meshgrid(molecules, conformers)
    budgets = np.geomspace(molecules[0] * conformers[0], molecules[-1] * conformers[-1], 7)[1:-1]
    path = optimum_path(fits, weights, molecules, np.geomspace(budgets[0], budgets[-1], 25))
    fig, axes = plt.subplots(1, len(fits), figsize=(4.6 * len(fits), 4.2), squeeze=False)
    for ax, fit in zip(axes[0], fits, strict=True):
        surface = fit.predict(mesh_m, mesh_c)
        low = float(surface.min())
        high = max(float(surface.max()), low * 1.01)  # a flat surface still needs levels
        filled = ax.contourf(mesh_m, mesh_c, surface, levels=np.geomspace(low, high, 12),
                             cmap="viridis", norm=matplotlib.colors.LogNorm())
        fig.colorbar(filled, ax=ax, label=metric_label, format="%.3g")
        for budget in budgets:
            ax.plot(molecules, budget / molecules, color="white", lw=0.7, ls=":")
            ax.annotate(f"N={budget:.0f}", (molecules[-1], budget / molecules[-1]),
                        color="white", fontsize=7, ha="right", va="bottom")
        ax.plot(*path, color="red", lw=1.5, label="optimum path")
        measured = cells[(cells.model == fit.model) & (cells.split == fit.split)
                         & (cells.selection == fit.selection)]
        ax.scatter(measured.M, measured.C, c="black", s=18, label="measured cells")
        if dataset_point:
            ax.scatter(*dataset_point, marker="s", c="white", edgecolors="black", s=50,
                       label="this dataset")
        if advice is not None:
            ax.scatter(advice.n_molecules, advice.conformers_per_molecule, marker="*", s=160,
                       c="red", edgecolors="white", label="advised optimum")
        ax.set(xscale="log", yscale="log", xlim=(molecules[0], molecules[-1]),
               ylim=(conformers[0], conformers[-1]), xlabel="molecules M",
               ylabel="conformers per molecule C")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        status = "" if fit.accepted else " (rejected: not a finding)"
        ax.set_title(f"{split_name(fit.split)}\n{fit.form}{status}", fontsize=9)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"fitted error surfaces: {fits[0].model} ({fits[0].selection})", fontsize=10)
    fig.tight_layout()
    return fig


def held_out_plot(fits: list[SurfaceFit], metric_label: str) -> Figure | None:
    """Leave-one-cell-out calibration: per split, each held-out cell's predicted error with
    its 95 % predictive interval against the measured error (the diagonal is perfect)."""
    fits = [f for f in fits if f.held_out]
    if not fits:
        return None
    fig, axes = plt.subplots(1, len(fits), figsize=(3.8 * len(fits), 3.6), squeeze=False)
    for ax, fit in zip(axes[0], fits, strict=True):
        measured = np.array([h.measured for h in fit.held_out])
        predicted = np.array([h.predicted for h in fit.held_out])
        inside = np.array([h.inside for h in fit.held_out])
        errors = [predicted - [h.ci_low for h in fit.held_out],
                  [h.ci_high for h in fit.held_out] - predicted]
        ax.errorbar(measured, predicted, yerr=np.maximum(errors, 0), fmt="none",
                    ecolor="grey", capsize=2)
        ax.scatter(measured[inside], predicted[inside], c="tab:blue", s=16, label="inside")
        ax.scatter(measured[~inside], predicted[~inside], c="tab:red", s=16, label="outside")
        span = [min(measured.min(), predicted.min()) / 1.2,
                max(measured.max(), predicted.max()) * 1.2]
        ax.plot(span, span, color="black", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel=f"measured {metric_label}",
               ylabel="held-out prediction")
        k, n = fit.coverage
        ax.set_title(f"{split_name(fit.split)}: {fit.form}\n{k} of {n} inside 95 %",
                     fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def datasets_map(public: pd.DataFrame, cells: pd.DataFrame,
                 dataset_point: tuple[float, float] | None, advice: Advice | None) -> Figure:
    """Public QM datasets on the molecules × conformers-per-molecule plane (log-log), with
    iso-budget lines, this study's cells and dataset, and the advised optimum."""
    fig, ax = plt.subplots(figsize=(8, 6))
    known = public.dropna(subset=["molecules"])
    for approximate, marker_face in ((False, "tab:purple"), (True, "none")):
        rows = known[known.approximate == approximate]
        ax.scatter(rows.molecules, rows.conformers_per_molecule, s=45, marker="o",
                   facecolors=marker_face, edgecolors="tab:purple",
                   label="public dataset" + (" (approximate count)" if approximate else ""))
    for row in known.itertuples():
        ax.annotate(row.name, (row.molecules, row.conformers_per_molecule), fontsize=8,
                    xytext=(4, 3), textcoords="offset points")
    molecules = np.geomspace(1, 1e7, 50)
    for exponent in range(2, 9):
        ax.plot(molecules, 10.0 ** exponent / molecules, color="grey", lw=0.6, ls=":")
        ax.annotate(f"N=1e{exponent}", (10.0 ** (exponent / 2), 10.0 ** (exponent / 2)),
                    fontsize=7, color="grey", rotation=-35)
    if not cells.empty:
        ax.scatter(cells.M, cells.C, c="black", s=12, label="study cells")
    if dataset_point:
        ax.scatter(*dataset_point, marker="s", c="white", edgecolors="black", s=60,
                   label="this dataset")
    if advice is not None:
        ax.scatter(advice.n_molecules, advice.conformers_per_molecule, marker="*", s=200,
                   c="red", edgecolors="black", label=f"advised optimum (N={advice.budget:g})")
    missing = public[public.molecules.isna()].name.tolist()
    title = "public QM datasets on the molecules × conformers plane"
    if missing:
        title += f"\n(not placed, molecule count not reported: {', '.join(missing)})"
    ax.set(xscale="log", yscale="log", xlim=(1, 1e7), ylim=(0.5, 1e6), xlabel="molecules M",
           ylabel="conformers per molecule C", title=title)
    ax.title.set_fontsize(9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def cell_diversity(results: pd.DataFrame) -> Figure | None:
    """Each cell's own diversity figures against the varied axis of its experiment."""
    columns = [c for c in DIVERSITY_LABELS if f"div_{c}" in results.columns]
    if not columns:
        return None
    cells = results.drop_duplicates("cell")
    experiments = sorted(cells.experiment.unique())
    fig, axes = plt.subplots(len(experiments), len(columns),
                             figsize=(3.4 * len(columns), 3.0 * len(experiments)), squeeze=False)
    for row_axes, experiment in zip(axes, experiments, strict=True):
        rows = cells[cells.experiment == experiment]
        axis = design_experiment(experiment).axis
        for ax, column in zip(row_axes, columns, strict=True):
            for selection, group in rows.groupby("selection"):
                ax.scatter(group[axis], group[f"div_{column}"], s=20, label=selection)
            _log_x(ax, rows[axis])
            ax.set_xlabel(axis)
            ax.set_ylabel(DIVERSITY_LABELS[column], fontsize=8)
            ax.set_title(experiment, fontsize=8)
        row_axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def parity(title: str, reference_energy: np.ndarray, predicted_energy: np.ndarray,
           reference_forces: np.ndarray, predicted_forces: np.ndarray,
           splits: np.ndarray, split_of_force: np.ndarray) -> Figure:
    """Conformer-energy (each molecule's mean removed, meV) and force-component parity plots,
    coloured by test split."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    for ax, ref, pred, labels, unit in (
            (left, reference_energy, predicted_energy, splits,
             "energy − molecule mean (meV)"),
            (right, reference_forces, predicted_forces, split_of_force, "force (eV/Å)")):
        for split in np.unique(labels):
            mask = labels == split
            ax.scatter(ref[mask], pred[mask], s=6, alpha=0.6, color=split_colour(split),
                       label=split.upper())
        span = [float(np.nanmin([ref.min(), pred.min()])),
                float(np.nanmax([ref.max(), pred.max()]))]
        ax.plot(span, span, color="black", lw=0.8)
        ax.set(xlabel=f"reference {unit}", ylabel=f"predicted {unit}")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def verify_bars(result) -> Figure:
    """The compared designs of one verification (a `VerifyResult`): weighted held-out error
    with its 95 % interval, one bar per design."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    designs = {d.label: d for d in result.designs}
    values = result.comparison.designs
    labels = [f"{v.label}\nM={designs[v.label].n_molecules}, "
              f"C={designs[v.label].conformers_per_molecule:.3g}" for v in values]
    heights = np.array([v.value for v in values])
    errors = np.array([[v.value - v.ci_low for v in values], [v.ci_high - v.value for v in values]])
    colours = ["tab:red" if v.label == "advised" else "tab:grey" for v in values]
    ax.bar(labels, heights, yerr=errors, capsize=4, color=colours)
    ax.set_ylabel(f"weighted {result.metric}")
    ax.set_title(f"N = {result.budget}, {result.model}", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
