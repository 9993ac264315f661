"""`mlipdiv report STUDY`: one self-contained HTML file (figures embedded as base64 PNG, no
network needed) plus each figure as a PNG beside it, built only from the study directory."""

from __future__ import annotations

import base64
import html
import io
from functools import cached_property
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mlipdiv.atomic import (
    atomic_directory,
    check_writable,
    disk_full_is_an_error,
    write_bytes_atomic,
    write_text_atomic,
)
from mlipdiv.data.store import ConformerStore
from mlipdiv.design import load_splits
from mlipdiv.design.experiments import experiment as design_experiment
from mlipdiv.design.experiments import experiment_names
from mlipdiv.errors import MlipdivError, first_line
from mlipdiv.files import read_json, read_parquet, reading
from mlipdiv.metrics.stats import is_root_metric, metric_label
from mlipdiv.models import load_run
from mlipdiv.report import figures
from mlipdiv.report.adaptive_section import adaptive_section
from mlipdiv.report.architectures import architectures_section, levels_section, starts_section
from mlipdiv.report.findings import (
    advice_findings,
    selection_findings,
    surface_findings,
    trend_findings,
)
from mlipdiv.report.sections import Section, drawn, log
from mlipdiv.report.tables import cell_summary, load_public_datasets, metric_terms
from mlipdiv.study.adaptive import CELL_PREFIX as ADAPTIVE_CELL_PREFIX
from mlipdiv.study.advise import Advice
from mlipdiv.study.cells import label_starts, model_label, with_placement_columns
from mlipdiv.study.config import StudyConfig, load_config
from mlipdiv.study.fit import load_fits
from mlipdiv.study.layout import RESTART_REMEDY, RESULTS_REMEDY, StudyPaths
from mlipdiv.study.plan import read_plan, study_wall_seconds
from mlipdiv.study.verify import load_verifications

PARITY_MOLECULES_PER_SPLIT = 20

# Runs first in <head>: records script and resource errors, marks figures that fail to decode,
# and leaves the counts on <body> (read by the headless-browser test).
CHECK_SCRIPT = """<script>
window.reportErrors = [];
window.addEventListener('error', function (e) {
  window.reportErrors.push(String(e.message || (e.target && e.target.alt) || e.type));
}, true);
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images), decoded = 0;
  images.forEach(function (img) {
    if (img.complete && img.naturalWidth > 0) { decoded += 1; return; }
    img.classList.add('broken');
    img.insertAdjacentText('afterend', 'figure failed to load: ' + img.alt);
  });
  document.body.setAttribute('data-images-decoded', decoded + '/' + images.length);
  document.body.setAttribute('data-errors', String(window.reportErrors.length));
});
</script>"""

STYLE = """<style>
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
figure { margin: 1em 0; } figure img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #555; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { border: 1px solid #ccc;
padding: 2px 6px; } .warning { color: #a40; } img.broken { outline: 3px solid red; }
</style>"""


class StudyView:
    """Everything the report reads from a study directory."""

    def __init__(self, root: Path):
        self.paths = StudyPaths(root)
        if not self.paths.results_parquet.exists():
            raise MlipdivError(f"{root}: no results.parquet; run `mlipdiv study` first")
        self.config: StudyConfig = load_config(self.paths.config, this_machine=False)
        # per (model, start, label set) where the study has several ("ani/pretrained/dft")
        starts, label_sets = self.config.models.starts(), self.config.data.label_sets()
        self.results = label_starts(with_placement_columns(read_parquet(
            self.paths.results_parquet, "study results", RESULTS_REMEDY)), starts, label_sets)
        if not self.paths.results_molecules.exists():
            raise MlipdivError(f"{self.paths.results_molecules}: missing; rerun `mlipdiv study` "
                               "(with --force if it was made by an older version)")
        self.molecules = label_starts(read_parquet(
            self.paths.results_molecules, "per-molecule results", RESULTS_REMEDY), starts,
            label_sets)
        self.metric = self.config.advice.metric
        self.fits, self.skipped = (load_fits(self.paths.fit) if self.paths.fit.exists()
                                   else ([], ["the study has no fit step output"]))
        self.advice = []
        if self.paths.advice.exists():
            advice = read_json(self.paths.advice, "advice", RESULTS_REMEDY)
            with reading(self.paths.advice, "advice", RESULTS_REMEDY):
                self.advice = [Advice.model_validate(a) for a in advice["advice"]]
        self.profile = (read_json(self.paths.profile, "dataset profile", RESTART_REMEDY)
                        if self.paths.profile.exists() else None)
        self._cells: dict[str, pd.DataFrame] = {}
        self.settings = read_json(self.paths.settings, "study settings", RESTART_REMEDY)

    @cached_property
    def levels(self) -> dict[str, str]:
        """{label set: its level of theory} of the store the study's cells drew from (empty
        when that store cannot be read any more)."""
        try:
            splits = load_splits(self.paths.splits, verify=False)
            with ConformerStore(splits.store_path) as store:
                return {name: str(p.get("level_of_theory", "?"))
                        for name, p in store.label_sets().items()}
        except MlipdivError:
            return {}

    @property
    def cells(self) -> pd.DataFrame:
        """Per-cell summary of the advice metric."""
        return self.cell_summary(self.metric)

    def cell_summary(self, metric: str) -> pd.DataFrame:
        """Per-cell values and hierarchical-bootstrap intervals of `metric` (cached)."""
        if metric not in self._cells:
            self._cells[metric] = cell_summary(self.results, self.molecules, metric,
                                               seed=self.config.seed)
        return self._cells[metric]

    def trends(self, metric: str) -> list[str]:
        """The trend sentences of `metric` (slopes with hierarchical-bootstrap intervals)."""
        # the trends are the grid's: the adaptive pilot's cells (other N) enter the fit only
        grid = self.results[~self.results.cell.str.startswith(ADAPTIVE_CELL_PREFIX)]
        return trend_findings(metric_terms(grid, self.molecules, metric),
                              metric_label(metric), root=is_root_metric(metric),
                              seed=self.config.seed)

    def dataset_point(self) -> tuple[float, float] | None:
        """This dataset on the molecules × conformers plane (from its profile)."""
        if not self.profile or "plane" not in self.profile:
            return None
        plane = self.profile["plane"]
        return float(plane["n_molecules"]), float(plane["mean_conformers_per_molecule"])


def _figure_html(name: str, caption: str, figure: Figure | bytes, figure_dir: Path) -> str:
    """Save one figure as PNG beside the report and return its embedded <figure>."""
    if isinstance(figure, Figure):
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110)
        import matplotlib.pyplot as plt

        plt.close(figure)
        data = buffer.getvalue()
    else:
        data = figure
    write_bytes_atomic(figure_dir / f"{name}.png", data)
    encoded = base64.b64encode(data).decode("ascii")
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _list(lines: list[str]) -> str:
    if not lines:
        return "<p>Nothing to state: the study has too few cells for this.</p>"
    return "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"


def setup_sentences(view: StudyView) -> list[str]:
    """The question and the setup in three sentences, generated from the config and results."""
    config, results = view.config, view.results
    data = config.data
    source = (f"{data.n_molecules} molecules from '{data.molecules}' × {data.conformers} "
              f"conformers labelled with {data.method}" if data.source == "generate"
              else f"the store {data.store}")
    test_sets = results.drop_duplicates("split").set_index("split")
    split_text = ", ".join(
        f"{s.upper()} ({int(row.n_molecules)} molecules, {int(row.n_conformers)} conformers)"
        for s, row in test_sets.iterrows())
    experiments = [kind.describe(section, results[results.experiment == kind.name])
                   for kind, section in config.experiment_sections().items()]
    models = ", ".join(f"{m} ({config.models.size})" for m in config.models.architectures)
    if len(config.models.starts()) > 1:
        models += (f", each trained from scratch and from the pretrained start "
                   f"{config.models.init_from} (e0 {config.models.e0}) on the same cells")
    elif config.models.init_from is not None:
        models += (f", fine-tuned from the pretrained start {config.models.init_from} "
                   f"(e0 {config.models.e0})")
    if len(config.data.label_sets()) > 1:
        models += (", each trained and scored on the label sets "
                   f"{', '.join(config.data.label_sets())} (levels of theory) on the same "
                   "cells")
    elif config.data.label_sets() != ["default"]:
        models += f", trained and scored on the label set {config.data.label_sets()[0]}"
    runs = results.drop_duplicates("run")  # cells sharing an identical training count once
    n_runs = len(runs)
    schedule = "; ".join(
        f"{model}: {s['steps']} optimiser steps for every cell, validation every "
        f"{s['steps_per_round']} steps" for model, s in
        view.settings.get("training_schedule", {}).items())
    replicates = ("" if config.design.replicates > 1 else
                  " With one replicate per cell, every interval covers the test molecules only "
                  "and ignores training variability (draws and seeds).")
    return [
        "Question: for a fixed QM budget, does an MLIP generalise better to unseen conformers "
        "(CF), molecules (ST), scaffolds (SF) and shifted data (OOD) when the budget buys more "
        "molecules (structural diversity) or more conformers per molecule (conformational "
        "diversity)?",
        f"Data: {source}; test sets {split_text}.",
        f"Setup: {'; '.join(experiments)}; {config.design.replicates} replicate(s) per cell, "
        f"selection {', '.join(sorted(results.selection.unique()))}; models {models}; "
        f"{n_runs} trainings, {runs.wall_time_s.sum():.0f}"
        " s of training in total." + plan_sentence(view, n_runs, runs.wall_time_s.sum()),
        f"Training compute is held equal: {schedule} (what the largest cell, "
        f"{config.largest_training_set()} conformers, needs for the size's epochs); early "
        "stopping on a cell's validation set may end it sooner. Intervals come from a "
        "hierarchical bootstrap: replicates, then test molecules, drawn jointly for all cells."
        + replicates,
    ]


def plan_sentence(view: StudyView, trainings: int, training_seconds: float) -> str:
    """The plan made when the study started (plan.json) next to what the run took: trainings,
    training seconds (the runs' wall_time_s) and the study's wall time (study.log)."""
    plan = read_plan(view.paths)
    if plan is None:
        return ""
    cpu = plan.layouts[0]
    estimate = ("no estimate" if cpu.wall_seconds is None
                else f"an estimated {cpu.wall_seconds:.0f} s on {cpu.name}")
    wall = study_wall_seconds(view.paths)
    took = f"{wall:.0f} s of wall time" if wall is not None else "its wall time unrecorded"
    return (f" The plan made at the start: {plan.trainings} trainings ({plan.trainings_left} "
            f"to run then), {plan.total_steps_left} optimiser steps, {estimate}; the run took "
            f"{trainings} trainings, {training_seconds:.0f} s of training and {took} (the last "
            "run in study.log).")


def _parity_data(view: StudyView, cell: str, model: str):

    row = view.results[(view.results.cell == cell) & (view.results.model == model)].iloc[0]
    run = load_run(row.run)
    splits = load_splits(view.paths.splits)
    energy_ref, energy_pred, energy_split = [], [], []
    force_ref, force_pred, force_split = [], [], []
    for name in splits.test_sets:
        records = list(islice(splits.records(name), PARITY_MOLECULES_PER_SPLIT))
        for record, prediction in zip(records, run.predict(records), strict=True):
            if prediction.out_of_domain:
                continue
            # each molecule's own mean removed (from reference and prediction): the per-element
            # reference energies would otherwise put every point on the diagonal
            energy_ref.append(1000 * (record.energy - record.energy.mean()))
            energy_pred.append(1000 * (prediction.mean_energy - prediction.mean_energy.mean()))
            energy_split += [name] * record.n_conformers
            force_ref.append(record.forces.ravel())
            force_pred.append(prediction.mean_forces.ravel())
            force_split += [name] * record.forces.size
    if not energy_ref:
        return None
    return (np.concatenate(energy_ref), np.concatenate(energy_pred),
            np.concatenate(force_ref), np.concatenate(force_pred),
            np.array(energy_split), np.array(force_split))


def parity_section(view: StudyView) -> Section:
    """Parity plots for the best and worst cells (weighted error of the first model)."""
    weights = view.config.advice.weights
    starts, label_sets = view.config.models.starts(), view.config.data.label_sets()
    model = model_label(view.config.models.architectures[0], starts[0], starts, label_sets[0],
                        label_sets)
    rows = view.results[(view.results.model == model) & view.results.split.isin(list(weights))]
    if rows.empty:
        return Section("Parity: best and worst cells", "<p>No scored cells to show.</p>")
    score = (rows.assign(weighted=rows[view.metric] * rows.split.map(weights))
             .groupby("cell").weighted.sum())
    section = Section("Parity: best and worst cells",
                      f"<p>Cells ranked by the weighted {html.escape(metric_label(view.metric))}"
                      f" of {model} (weights {weights}); up to {PARITY_MOLECULES_PER_SPLIT} "
                      "molecules per test split.</p>")
    for label, cell in (("best", score.idxmin()), ("worst", score.idxmax())):
        data = _parity_data(view, cell, model)
        if data is None:
            continue
        e_ref, e_pred, f_ref, f_pred, e_split, f_split = data
        title = f"{label} cell: {cell} ({model}), weighted error {score[cell]:.3g}"
        section.figures.append((f"parity_{label}", title,
                                figures.parity(title, e_ref, e_pred, f_ref, f_pred, e_split,
                                               f_split)))
    return section


def _experiment_section(view: StudyView) -> Section:
    metrics = list(dict.fromkeys(
        [view.metric] + [m for m in ("energy_mae_mev_per_atom", "forces_mae_mev_per_angstrom")
                         if m in view.results]))
    cells = {metric: view.cell_summary(metric) for metric in metrics}
    section = Section("The experiments", _list(
        [line for metric in metrics
         for line in view.trends(metric) + selection_findings(cells[metric],
                                                               metric_label(metric))])
        + _scoring_note(view) + _convergence_html(view) + _effective_conformers_html(view))
    for experiment in experiment_names():
        for metric in metrics:
            figure = figures.experiment_curves(cells[metric], experiment, metric_label(metric))
            if figure is not None:
                axis = f"{design_experiment(experiment).axis} (log axis)"
                section.figures.append((f"{experiment}_{metric}",
                                        f"{experiment}: {metric_label(metric)} vs {axis}, "
                                        "mean over replicates with 95 % CI (hierarchical "
                                        "bootstrap over replicates and test molecules)",
                                        figure))
    return section


def _scoring_note(view: StudyView) -> str:
    """Which molecules each cell's CF figure is computed on (its own training molecules)."""
    cf = view.results[view.results.split == "cf"]
    if cf.empty:
        return ""
    per_cell = (cf.groupby(["experiment", "M", "C"])[["n_molecules", "n_conformers"]].mean()
                .reset_index())
    rows = "".join(f"<tr><td>{html.escape(r.experiment)}</td><td>{r.M:g}</td><td>{r.C:g}</td>"
                   f"<td>{r.n_molecules:.1f}</td><td>{r.n_conformers:.1f}</td></tr>"
                   for r in per_cell.itertuples())
    return ("<p>CF is scored per cell on the withheld conformers of that cell's own training "
            "molecules only (unseen conformers of molecules it trained on), so a cell with M "
            "molecules is scored on at most M CF molecules:</p><table><tr><th>experiment</th>"
            "<th>M</th><th>C</th><th>CF molecules scored</th><th>CF conformers scored</th></tr>"
            f"{rows}</table>")


def _convergence_html(view: StudyView) -> str:
    """The cells whose training had not converged when the step budget ran out."""
    if "converged" not in view.results:
        return ""
    runs = view.results.drop_duplicates("run")
    open_runs = runs[~runs.converged.astype(bool)]
    if open_runs.empty:
        return (f"<p>All {len(runs)} trainings converged: each stopped early or its validation "
                "loss no longer fell in the last 10 % of its steps.</p>")
    items = "".join(f"<li>{html.escape(r.cell)} ({html.escape(r.model)}): best validation at "
                    f"step {r.best_step} of {r.train_steps}</li>"
                    for r in open_runs.itertuples())
    return (f"<p class='warning'>{len(open_runs)} of {len(runs)} trainings had not converged "
            "(validation loss still falling in the last 10 % of the step budget); their errors "
            f"overstate what the data allow:</p><ul>{items}</ul>")


def _effective_conformers_html(view: StudyView) -> str:
    """Nominal C next to the effective number of distinct conformers per molecule."""
    columns = ["div_effective_conformers_per_molecule", "div_distinct_geometries_per_molecule"]
    if not set(columns) <= set(view.results.columns):
        return ""
    cells = (view.results.drop_duplicates("cell").groupby(["experiment", "M", "C"])[columns]
             .mean().reset_index())
    rows = "".join(f"<tr><td>{html.escape(r.experiment)}</td><td>{r.M:g}</td><td>{r.C:g}</td>"
                   f"<td>{_format(getattr(r, columns[0]))}</td>"
                   f"<td>{_format(getattr(r, columns[1]))}</td></tr>"
                   for r in cells.itertuples())
    return ("<p>Conformational diversity each cell actually holds: nominal C against the mean "
            "number of distinct conformers per training molecule after merging conformers "
            "within 0.05 Å heavy-atom RMSD (near-copies, the CF duplicate rule) and within "
            "0.5 Å (distinct geometries, the ETKDG pruning rule):</p><table><tr>"
            "<th>experiment</th><th>M</th><th>C</th><th>effective C (0.05 Å)</th>"
            f"<th>distinct C (0.5 Å)</th></tr>{rows}</table>")


def _advice_table(advice: list[Advice]) -> str:
    """The advised (M, C) and the predicted errors there against measured neighbouring cells."""
    rows = []
    for item in advice:
        predicted = ", ".join(f"{s.upper()} {e.value:.3g} [{e.ci_low:.3g}, {e.ci_high:.3g}]"
                              for s, e in item.predicted.items())
        rows.append(f"<tr><td>{html.escape(item.model)} ({html.escape(item.selection)})</td>"
                    f"<td>M = {item.n_molecules}, C = {item.conformers_per_molecule}</td>"
                    f"<td>optimum (predicted)</td><td>{html.escape(predicted)}</td></tr>")
        for cell in item.neighbours:
            measured = ", ".join(f"{s.upper()} {v:.3g} (fit {cell.predicted[s]:.3g})"
                                 for s, v in cell.measured.items())
            rows.append(f"<tr><td></td><td>M = {cell.n_molecules}, C = "
                        f"{cell.conformers_per_molecule:g}</td><td>measured neighbour</td>"
                        f"<td>{html.escape(measured)}</td></tr>")
    if not rows:
        return ""
    return ("<table><tr><th>model</th><th>cell</th><th></th><th>error (95 % CI)</th></tr>"
            + "".join(rows) + "</table>")


def _surface_section(view: StudyView) -> Section:
    lines = surface_findings(view.fits, view.skipped) + advice_findings(view.advice)
    section = Section("Error surface and budget advice",
                      _list(lines) + _advice_table(view.advice))
    advice_by_model = {a.model: a for a in view.advice}
    for (model, selection), group in _group_fits(view.fits).items():
        figure = figures.surface_map(group, view.cells, advice_by_model.get(model),
                                     view.config.advice.weights, view.dataset_point(),
                                     metric_label(view.metric))
        section.figures.append((f"surface_{model}_{selection}",
                                f"fitted {metric_label(view.metric)} over (M, C) for {model} "
                                f"({selection}): iso-budget lines (dotted), optimum path (red), "
                                "measured cells, this dataset and the advised optimum",
                                figure))
    for (model, selection), group in _group_fits(view.fits).items():
        figure = figures.held_out_plot(group, metric_label(view.metric))
        if figure is not None:
            section.figures.append((
                f"held_out_{model}_{selection}",
                f"calibration of the learning curves for {model} ({selection}): each cell "
                "predicted by a fit to the other cells, with its 95 % predictive interval, "
                "against what was measured", figure))
    first = view.advice[0] if view.advice else None
    section.figures.append(("datasets_map", "public QM datasets, this study and the advised "
                            "optimum on the molecules × conformers plane",
                            figures.datasets_map(load_public_datasets(), view.cells,
                                                 view.dataset_point(), first)))
    return section


def verify_section(view: StudyView) -> Section | None:
    """"Does the advice hold?": the advised design and both extremes of a budget, trained anew
    (`mlipdiv verify`), with the sentence computed from their paired differences."""

    verifications = load_verifications(view.paths.root)
    if not verifications:
        return None
    section = Section("Does the advice hold?", (
        "<p>For each verified budget, the advised (M*, C*) and the two extremes of the same "
        "budget (structure-heavy: the most molecules the pool allows, as QM9; "
        "conformer-heavy: the study's fewest molecules, as QM7-X or ANI-1) were drawn anew "
        "from the training pool, trained with the study's models and schedule and scored on "
        "the same test splits. Differences are paired by replicate; intervals from the "
        "hierarchical bootstrap.</p>"
        + _list([v.sentence for v in verifications])))
    for result in verifications:
        section.figures.append((
            f"verify_N{result.budget}_{result.model}",
            f"weighted held-out {metric_label(result.metric)} (weights {result.weights}) at "
            f"N = {result.budget}, {result.model}: mean over {result.replicates} replicate(s) "
            "with 95 % CI", figures.verify_bars(result)))
    return section


def _group_fits(fits) -> dict:
    grouped: dict = {}
    for fit in fits:
        grouped.setdefault((fit.model, fit.selection), []).append(fit)
    return grouped


def _diversity_section(view: StudyView) -> Section:
    summary = view.profile or {}
    keys = ("n_molecules", "n_conformers", "n_scaffolds", "mean_tanimoto_distance",
            "median_conformers_per_molecule", "median_rmsd_angstrom")
    table = "".join(f"<tr><th>{key}</th><td>{html.escape(_format(summary.get(key)))}</td></tr>"
                    for key in keys if key in summary)
    section = Section("Diversity of the data and of each cell",
                      f"<table>{table}</table>" if table else "<p>No profile was written.</p>")
    if view.paths.profile_plot.exists():
        section.figures.append(("profile", "per-molecule diversity of the whole dataset",
                                view.paths.profile_plot.read_bytes()))
    figure = figures.cell_diversity(view.results)
    if figure is not None:
        section.figures.append(("cell_diversity", "each training cell's own diversity figures",
                                figure))
    return section


def _format(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary_lines(study_dir: str | Path, limit: int = 4) -> list[str]:
    """A few terminal lines: the headline trends of the advice metric (the CF and ST ones
    first) and the advice."""
    view = StudyView(Path(study_dir))

    def rank(line: str) -> tuple[int, int]:
        split = next((i for i, w in enumerate(("CF", "ST", "SF")) if f": {w} " in line), 3)
        first = experiment_names()[0]  # the fixed budget's trends lead
        return (0 if line.startswith(first) else 1), split

    headline = [line for line in view.trends(view.metric) if rank(line) in
                ((0, 0), (0, 1), (1, 0))]
    advice = [line for line in advice_findings(view.advice) if not line.startswith("Warning")]
    return sorted(headline, key=rank)[:limit] + advice[:1]


def domain_section(view: StudyView) -> Section | None:
    """The applicability-domain section (optional: needs faiss, like the domain step)."""
    try:
        # imported here: a missing faiss leaves this section out (logged), not the report
        from mlipdiv.report.domain_section import study_section
    except ImportError as exc:
        log.warning("report: domain section left out: %s", first_line(exc, with_type=True))
        return None
    return study_section(view.paths, view.config)


# The report's sections, in order: (title shown if the section fails, function of the view).
SECTIONS = [
    ("The experiments", _experiment_section),
    ("Architectures compared", architectures_section),
    ("Does pretraining move the optimum?", starts_section),
    ("Does the cheap pilot's advice transfer?", levels_section),
    ("Error surface and budget advice", _surface_section),
    ("Adaptive pilot", adaptive_section),
    ("Does the advice hold?", verify_section),
    ("Diversity of the data and of each cell", _diversity_section),
    ("Applicability domain", domain_section),
    ("Parity: best and worst cells", parity_section),
]


def write_report(study_dir: str | Path, out: str | Path | None = None) -> Path:
    """Build the report of a finished study; returns the HTML path (figures beside it)."""
    if out is not None:  # a directory, a read-only place: one line before any reading
        with disk_full_is_an_error(out):
            check_writable(out)
    view = StudyView(Path(study_dir))
    out = Path(out) if out is not None else view.paths.report
    # the figures go to a staging folder that replaces figures/ with the report, so a failure
    # (a full disk) leaves the previous figures and report, not a part of the new ones
    with atomic_directory(out.parent / "figures") as figure_dir:
        body = [f"<h1>mlipdiv study: {html.escape(view.config.name)}</h1>",
                "".join(f"<p>{html.escape(s)}</p>" for s in setup_sentences(view))]
        for title, draw in SECTIONS:  # each section's figures are written (and closed) in turn
            section = drawn(draw, view, title)
            if section is None:
                continue
            body.append(f"<h2>{html.escape(section.title)}</h2>{section.html}")
            body += [_figure_html(name, caption, figure, figure_dir)
                     for name, caption, figure in section.figures]
        document = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
                    f"<title>mlipdiv study {html.escape(view.config.name)}</title>"
                    f"{CHECK_SCRIPT}{STYLE}</head><body>{''.join(body)}</body></html>")
        write_text_atomic(out, document)
    return out
