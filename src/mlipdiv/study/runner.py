"""`mlipdiv study`: its steps (`STEPS`: data → profile → split → design (every configured
experiment) → train and evaluate every cell × replicate × model → results table →
learning-curve fit and advice → adaptive pilot → applicability domain); the report is built
on top.

Every step skips what is already in the study directory, so the same command after a crash
(kill -9 included) redoes only what is missing: a cell counts as done when its result file
exists (written atomically after training and evaluation), and an interrupted training resumes
from its checkpoints. A changed config against an existing directory is refused with the keys
that differ; with `force` the outputs of the steps that read them, and of every step that
reads their outputs, are removed (`steps.stale_steps`).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from mlipdiv.atomic import write_json_atomic, write_text_atomic
from mlipdiv.data.generate import generate
from mlipdiv.data.identity import quiet_rdkit
from mlipdiv.data.sources import MoleculeFilter, parse_elements, select_molecules
from mlipdiv.data.store import DEFAULT_LABELS, ConformerStore
from mlipdiv.data.store_writer import write_subset
from mlipdiv.design import (
    make_design,
    make_splits,
    write_design,
)
from mlipdiv.design.experiments import experiment as design_experiment
from mlipdiv.design.experiments import experiments
from mlipdiv.diversity import plot_profile, profile_store
from mlipdiv.errors import FieldError, MlipdivError, first_line
from mlipdiv.files import read_json, read_parquet
from mlipdiv.locking import locks_output
from mlipdiv.study.adaptive import (
    AdaptiveState,
    Round,
    criterion_text,
    load_state,
    round_design,
    run_loop,
    save_state,
)
from mlipdiv.study.advise import DataLimits, advise
from mlipdiv.study.cells import (
    CellTask,
    attach_log,
    cell_tasks,
    collect_results,
    execute,
    label_starts,
    pool_limits,
)
from mlipdiv.study.config import StudyConfig, config_differences, load_config
from mlipdiv.study.curves import fit_results
from mlipdiv.study.executors import plan_parallelism
from mlipdiv.study.fit import write_fits
from mlipdiv.study.layout import RESTART_REMEDY, RESULTS_REMEDY, StudyPaths
from mlipdiv.study.steps import Step, StudyRun, remove_outputs, stale_steps

MIN_FREE_BYTES = 50 * 1024**2

log = logging.getLogger("mlipdiv.study")


# ---------------------------------------------------------------- preparing the directory
def check_writable(root: Path) -> None:
    """Fail before any work when the study directory cannot be written or the disk is full."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".write-probe"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as exc:
        raise MlipdivError(f"{root}: cannot write the study directory ({exc.strerror})") from None
    free = shutil.disk_usage(root).free
    if free < MIN_FREE_BYTES:
        raise MlipdivError(f"{root}: only {free / 1024**2:.0f} MiB free on its disk; the study "
                           f"needs at least {MIN_FREE_BYTES / 1024**2:.0f} MiB")


def prepare_directory(config: StudyConfig, config_text: str, paths: StudyPaths,
                      force: bool) -> None:
    """Record the config, or compare it with the one already there."""
    check_writable(paths.root)
    settings = config.comparable()
    if not paths.settings.exists() and any(paths.root.iterdir()):
        if not force:
            raise MlipdivError(f"{paths.root}: holds files but no study; use another --out, or "
                               "--force to clear it")
        remove_outputs(STEPS, paths)
    elif paths.settings.exists():
        old = read_json(paths.settings, "study settings",
                        "use --force to redo the study in this directory")
        differing = config_differences(old, settings)
        if differing and not force:
            raise MlipdivError(f"{paths.root}: holds a study with a different config (keys "
                               f"{', '.join(differing)}); use another --out, or --force to "
                               "redo the changed steps")
        remove_outputs(stale_steps(STEPS, differing), paths)
    write_text_atomic(paths.config, config_text)
    write_json_atomic(paths.settings, settings)


# ---------------------------------------------------------------- data, profile, split, design
def data_step(config: StudyConfig, paths: StudyPaths, workers: int, progress: bool) -> Path:
    """The conformer store: generated into the study (resumable), or the configured store
    (restricted to the conformers labelled at every set of `data.labels`)."""
    if config.data.source == "store":
        store = config.data.store.resolve()
        if not store.exists():
            raise MlipdivError(f"data.store {store}: no such store")
        if config.data.label_sets() == [DEFAULT_LABELS]:
            return store
        return labelled_store(store, config.data.label_sets(), paths)
    if paths.data.exists():
        return paths.data

    data = config.data
    summary = generate(data.molecules, paths.data, data.n_molecules,
                       data.generate_options(config.seed),
                       molecule_filter(config), workers=workers, progress=progress)
    write_json_atomic(paths.data_summary, summary.as_dict())
    log.info("data: %s", summary.text().replace("\n", "; "))
    return paths.data


def labelled_store(store: Path, label_sets: list[str], paths: StudyPaths) -> Path:
    """The conformers the study's levels of theory can all train and be scored on: the store
    itself when every set of `label_sets` labels every conformer, else a copy in the study
    (`paths.data`, with every label set) of the conformers labelled at all of them, so the
    split, the designs and every level's cells draw from the same labelled conformers. A
    label set covering too few conformers for the grid is named by the design step."""
    if paths.data.exists():
        return paths.data
    with ConformerStore(store) as opened:
        pairs = [(key, int(i)) for key in opened.inchikeys
                 for i in np.flatnonzero(opened.common_mask(key, label_sets))]
        total = opened.total_conformers()
        if len(pairs) == total:
            return store
        coverage = {name: opened.label_counts(name) for name in label_sets}
        if not pairs:
            raise MlipdivError(f"data.labels: no conformer of {store} is labelled at every "
                               f"label set ({coverage_text(coverage)})")
        write_subset(opened, pairs, paths.data)
    molecules = len({key for key, _ in pairs})
    summary = {"store": str(store), "labels": label_sets, "conformers": len(pairs),
               "molecules": molecules, "coverage": {
                   name: {k: v for k, v in counts.items() if k != "unlabelled_molecules"}
                   for name, counts in coverage.items()}}
    write_json_atomic(paths.data_summary, summary)
    log.info("data: the study uses the %d conformers of %d molecules labelled at every label "
             "set of data.labels (%s), copied to %s", len(pairs), molecules,
             coverage_text(coverage), paths.data)
    return paths.data


def coverage_text(coverage: dict[str, dict]) -> str:
    """How much of the store each label set covers, in words."""
    return "; ".join(f"'{name}' labels {c['labelled_conformers']}/{c['n_conformers']} "
                     f"conformers of {c['labelled_molecules']}/{c['n_molecules']} molecules"
                     for name, c in coverage.items())


def label_note(paths: StudyPaths) -> str:
    """What the study's data were restricted to (a label set covering a subset), or ""."""
    if not paths.data_summary.exists():
        return ""
    summary = read_json(paths.data_summary, "data summary", RESTART_REMEDY)
    if "coverage" not in summary:
        return ""
    return (f" (data.labels {summary['labels']}: the study uses the {summary['conformers']} "
            f"conformers of {summary['molecules']} molecules labelled at every set; "
            f"{coverage_text(summary['coverage'])})")


def molecule_filter(config: StudyConfig) -> MoleculeFilter:
    """Which molecules of the source the study generates from."""
    data = config.data
    bounds = {key: value for key, value in (("min_heavy_atoms", data.min_heavy_atoms),
                                            ("max_heavy_atoms", data.max_heavy_atoms)) if value}
    if data.elements:
        bounds["elements"] = parse_elements(data.elements)
    return MoleculeFilter(**bounds)


def profile_step(store: Path, paths: StudyPaths) -> None:
    """The dataset's diversity profile (JSON summary, per-molecule CSV, plot)."""
    if paths.profile.exists():
        return

    profile = profile_store(store)
    write_text_atomic(paths.profile_molecules, profile.per_molecule.to_csv(index=False))
    plot_profile(profile, paths.profile_plot)
    write_json_atomic(paths.profile, profile.summary)


def split_step(config: StudyConfig, store: Path, paths: StudyPaths) -> None:
    """CF/ST/SF(/OOD) test sets and the training pool."""
    if (paths.splits / "manifest.json").exists():
        return

    _, messages = make_splits(store, paths.splits, config.split.options(config.seed))
    for message in messages:
        log.warning("split: %s", message)


def _design_options(config: StudyConfig, experiment: str, molecule_selection: str,
                    conformer_selection: str, grid: tuple[int, ...] | None = None):
    options = config.design_options(design_experiment(experiment),
                                    (molecule_selection, conformer_selection))
    return replace(options, grid=grid) if grid else options


def design_step(config: StudyConfig, paths: StudyPaths) -> list[Path]:
    """One design file per experiment and selection pair. When the pool cannot fill the grid,
    every cell that cannot be filled is named before any training starts."""

    designs, problems = [], []
    for experiment in config.experiments():
        for molecule_selection, conformer_selection in config.selection_pairs():
            path = paths.design(experiment, f"{molecule_selection}-{conformer_selection}")
            designs.append(path)
            if path.exists():
                continue
            options = _design_options(config, experiment, molecule_selection,
                                      conformer_selection)
            try:
                design = make_design(paths.splits, options)
                write_design(design, path)
                if design.grid_note:
                    log.info("design %s: %s", path.stem, design.grid_note)
            except MlipdivError as exc:
                problems += _unfillable_cells(config, paths, experiment, options, exc)
    if problems:
        raise MlipdivError("the data cannot fill the requested grid: " + "; ".join(problems)
                           + label_note(paths))
    return designs


def _unfillable_cells(config: StudyConfig, paths: StudyPaths, experiment: str, options,
                      error: MlipdivError) -> list[str]:
    """Try each grid value alone to name every cell that cannot be filled."""

    grid = options.grid or ()
    found = []
    for value in grid:
        single = _design_options(config, experiment, options.molecule_selection,
                                 options.conformer_selection, grid=(value,))
        try:
            make_design(paths.splits, single)
        except MlipdivError as exc:
            found.append(f"{experiment} {design_experiment(experiment).axis}={value}: {exc}")
    return found or [f"{experiment}: {error}"]


# ---------------------------------------------------------------- fit and advice
def study_budget(config: StudyConfig) -> float:
    """The budget (cost units) of the study's own advice: the cost of its first experiment's
    advice cell (fixed-budget: its N at the smallest M of the grid)."""
    n_molecules, n_conformers = config.advice_cell()
    advice = config.advice
    return advice.cost_per_conformer * n_conformers + advice.cost_per_molecule * n_molecules


@locks_output("study_dir")  # the study's own lock: no study or verify writes meanwhile
def run_refine(study_dir: str | Path, cells: int, *, per_round: int | None = None,
               progress: bool = True) -> AdaptiveState:
    """`mlipdiv refine`: the adaptive pilot on a finished study, adding up to `cells` more
    design points (stopping earlier when the advice is determined). Resumable."""
    paths = StudyPaths(Path(study_dir)).finished()
    if cells < 1:
        raise FieldError("cells", cells, "must be >= 1")
    if per_round is not None and per_round < 1:
        raise FieldError("per_round", per_round, "must be >= 1")
    config = load_config(paths.config)
    handler = attach_log(paths)
    try:
        return adaptive_step(config, paths, design_step(config, paths), progress,
                             extra_cells=cells, per_round=per_round)
    finally:
        log.removeHandler(handler)
        handler.close()


def obtainable_limits(config: StudyConfig, paths: StudyPaths, max_molecules: int | None = None,
                      max_conformers: int | None = None) -> DataLimits:
    """What a team can obtain for a larger budget: the stated maxima, else (generated data)
    the source's usable molecules less those the study held out for testing, with new
    conformers generated at will, else (a store) the study's pool."""
    pool = pool_limits(config, paths)
    if max_molecules is not None:
        molecules, source = max_molecules, f"the stated maximum of {max_molecules} molecules"
    elif config.data.source == "generate":
        with quiet_rdkit():
            usable = len(select_molecules(config.data.molecules, 10**9,
                                          molecule_filter(config), config.seed).entries)
        held_out = config.data.n_molecules - pool.max_molecules
        molecules = max(usable - held_out, pool.max_molecules)
        source = (f"the data source '{config.data.molecules}' ({usable} usable molecules, "
                  f"{held_out} held out for testing)")
    else:
        molecules = pool.max_molecules
        source = "the study's pool (state --max-molecules when more can be obtained)"
    conformers = (max_conformers if max_conformers is not None else None
                  if config.data.source == "generate" else pool.max_conformers_per_molecule)
    return DataLimits(max_molecules=molecules, max_conformers_per_molecule=conformers,
                      source=source)


def fit_and_advise(config: StudyConfig, results: pd.DataFrame, paths: StudyPaths) -> list:
    """fit.json (a learning curve per model, selection and split, weighted by the per-cell
    hierarchical bootstrap of results_molecules.parquet) and advice.json (per model and
    selection, at the study's budget within its pool); returns the advice."""

    molecules = (read_parquet(paths.results_molecules, "per-molecule results", RESULTS_REMEDY)
                 if paths.results_molecules.exists() else None)
    # a study with several starts or label sets fits and advises per (model, start, label
    # set): "ani/pretrained", "ani/dft"
    starts, label_sets = config.models.starts(), config.data.label_sets()
    results = label_starts(results, starts, label_sets)
    molecules = None if molecules is None else label_starts(molecules, starts, label_sets)
    fits, skipped = fit_results(results, config.advice.metric, seed=config.seed,
                                molecules=molecules)
    write_fits(fits, skipped, paths.fit)
    for reason in skipped:
        log.warning("fit: %s", reason)
    advice, notes = [], []
    fitted = {f.split for f in fits}
    weights = {s: w for s, w in config.advice.weights.items() if s in fitted}
    dropped = sorted(set(config.advice.weights) - set(weights))
    if dropped:
        notes.append(f"splits without a fitted surface left out of the weights: "
                     f"{', '.join(dropped)}")
    limits = pool_limits(config, paths)
    for model in sorted({f.model for f in fits}):
        for selection in sorted({f.selection for f in fits if f.model == model}):
            try:
                advice.append(advise(
                    fits, study_budget(config), model=model, selection=selection,
                    weights=weights, cost_per_molecule=config.advice.cost_per_molecule,
                    cost_per_conformer=config.advice.cost_per_conformer, results=results,
                    limits=limits))
            except MlipdivError as exc:
                notes.append(str(exc))
    write_json_atomic(paths.advice, {"advice": [a.model_dump(mode="json") for a in advice],
                                     "notes": notes})
    return advice


def adaptive_designs(state: AdaptiveState | None, config: StudyConfig,
                     paths: StudyPaths) -> list[Path]:
    """The design files of every cell the adaptive pilot added (those that could be drawn)."""
    if state is None:
        return []
    found = [paths.adaptive_design(r.index, m, c, f"{ms}-{cs}") for r in state.rounds
             for m, c in r.cells for ms, cs in config.selection_pairs()]
    return [path for path in found if path.exists()]


def _draw_round(config: StudyConfig, paths: StudyPaths, current: Round) -> None:
    """Write the designs of a round's cells (a cell the pool cannot supply is logged)."""
    for m, c in current.cells:
        for molecule_selection, conformer_selection in config.selection_pairs():
            common = config.design_common((molecule_selection, conformer_selection))
            path = paths.adaptive_design(current.index, m, c,
                                         f"{molecule_selection}-{conformer_selection}")
            try:
                round_design(paths.splits, common, current.index, (m, c), path)
            except MlipdivError as exc:
                log.warning("adaptive round %d: M = %d × C = %d cannot be drawn (%s)",
                            current.index, m, c, exc)


def adaptive_step(config: StudyConfig, paths: StudyPaths, designs: list[Path], progress: bool,
                  extra_cells: int | None = None, per_round: int | None = None) -> AdaptiveState:
    """The adaptive pilot (study.adaptive, or `mlipdiv refine` with `extra_cells` more cells
    than it already added): rounds of Thompson-sampled cells until the advice is determined.
    Resumes a pending round."""
    settings = config.adaptive
    state = load_state(paths.adaptive) or AdaptiveState(
        budget=study_budget(config), criterion=criterion_text(settings.max_molecule_ratio))
    if extra_cells is None:
        limit = settings.cells
    elif state.interrupted and state.cell_limit is not None:  # a killed refine, resumed
        limit = state.cell_limit
    else:
        limit = state.cells_added + extra_cells
    state.stopped, state.final, state.cell_limit = None, [], limit

    def tasks() -> list[CellTask]:
        return cell_tasks(config, paths, designs + adaptive_designs(state, config, paths))

    def measure(current: Round) -> None:
        _draw_round(config, paths, current)
        failures = execute(config, tasks(), progress)
        if failures:
            raise MlipdivError(f"adaptive round {current.index}: {len(failures)} training(s) "
                               f"failed (rerun to retry them): {failures[0]}")

    def refit() -> list:
        return fit_and_advise(config, collect_results(tasks(), paths), paths)

    return run_loop(state, refit=refit, measure=measure,
                    save=lambda s: save_state(s, paths.adaptive), max_cells=limit,
                    per_round=per_round or settings.per_round,
                    max_ratio=settings.max_molecule_ratio)


def domain_step(paths: StudyPaths) -> None:
    """The applicability-domain step (writes STUDY/domain/, which the report's domain section
    reads). Optional: when it cannot run (faiss missing) or fails, the log says why and the
    study goes on; its results do not depend on it."""
    try:
        # imported here, not at the top: a missing faiss must skip this step, not the study
        from mlipdiv.study.domain_step import study_step
    except ImportError as exc:
        log.warning("domain step skipped: %s", first_line(exc, with_type=True))
        return
    try:
        study_step(paths.root)
    except Exception as exc:  # noqa: BLE001 - an optional step must not stop the study
        log.error("domain step failed: %s", first_line(exc, with_type=True))


# ---------------------------------------------------------------- the whole study
def plan_step(config: StudyConfig, paths: StudyPaths) -> None:
    """plan.json: the plan made as the study starts (`study.plan`: counts and a calibrated
    estimate), kept when a resumed study already has the plan of its settings. The plan only
    informs: when it cannot be made, the log says why and the study goes on."""
    from mlipdiv.study.plan import plan_study, read_plan, settings_digest, write_plan

    made = read_plan(paths)
    if made is not None and made.settings_digest == settings_digest(config):
        return
    try:
        plan = plan_study(config, paths.root, process_started=True)
    except Exception as exc:  # noqa: BLE001 - an estimate must not stop the study
        log.warning("plan: not made (%s)", first_line(exc, with_type=True))
        return
    write_plan(plan, paths)
    cpu = plan.layouts[0]
    log.info("plan: %d cells, %d trainings after sharing identical cells (%d left), %s "
             "optimiser steps per cell; estimated %.0f s on %s", plan.total_cells,
             plan.trainings, plan.trainings_left, plan.steps_per_cell, cpu.wall_seconds,
             cpu.name)


def _data(run: StudyRun) -> None:
    workers, _ = plan_parallelism(run.config.data.n_molecules, run.config.executor.workers)
    run.store = data_step(run.config, run.paths, workers, run.progress)


def _designs(run: StudyRun) -> None:
    run.designs = design_step(run.config, run.paths)


def _train(run: StudyRun) -> None:
    state = load_state(run.paths.adaptive)
    run.tasks = cell_tasks(run.config, run.paths,
                           run.designs + adaptive_designs(state, run.config, run.paths))
    run.failures = execute(run.config, run.tasks, run.progress)


def _results(run: StudyRun) -> None:
    run.results = collect_results(run.tasks, run.paths)


def _adaptive(run: StudyRun) -> None:
    if run.config.adaptive.enabled and not run.failures:
        adaptive_step(run.config, run.paths, run.designs, run.progress)


# The study's steps, in order. `reads`: the config keys whose change makes a step stale
# (with every step after it that reads its outputs); `outputs`: what is removed then.
STEPS = [
    Step("data", reads=("seed", "data"), after=(), run=_data,
         outputs=lambda p: [p.data, p.data_summary, p.data_parts],
         doc="the conformer store: generated with real QM labels (resumable), or given"),
    Step("profile", reads=(), after=("data",),
         run=lambda r: profile_step(r.store, r.paths),
         outputs=lambda p: [p.profile, p.profile_molecules, p.profile_plot],
         doc="the data's structural and conformational diversity"),
    Step("split", reads=("seed", "split"), after=("data",),
         run=lambda r: split_step(r.config, r.store, r.paths),
         outputs=lambda p: [p.splits], doc="leak-free CF/ST/SF/OOD test sets and the pool"),
    Step("design", reads=("seed", "design", *(kind.config_key for kind in experiments())),
         after=("split",), run=_designs, outputs=lambda p: [p.designs],
         doc="every experiment's cells, per selection pair"),
    Step("train", reads=("models", "training_schedule"), after=("design",), run=_train,
         outputs=lambda p: [p.runs, p.cells],
         doc="train and score every cell × model (resumable, shared identical cells)"),
    Step("results", reads=(), after=("train",), run=_results,
         outputs=lambda p: [p.results_parquet, p.results_csv, p.results_molecules],
         doc="the results tables"),
    Step("fit", reads=("advice",), after=("results",),
         run=lambda r: fit_and_advise(r.config, r.results, r.paths),
         outputs=lambda p: [p.fit, p.advice], doc="learning curves and the budget advice"),
    Step("adaptive", reads=("adaptive",), after=("fit",), run=_adaptive,
         outputs=lambda p: [p.adaptive], doc="the adaptive pilot's rounds (when enabled)"),
    Step("domain", reads=(), after=("split", "train"), run=lambda r: domain_step(r.paths),
         outputs=lambda p: [p.domain], doc="the applicability domain of the trained runs"),
]
# config keys no step reads: they change how the report names the study, not its results
PRESENTATION_KEYS = ("name",)


@locks_output("out", lambda a: a["out"] or a["config"].out)
def run_study(config: StudyConfig, config_text: str, out: Path | None = None, *,
              force: bool = False, progress: bool = True) -> Path:
    """Run (or resume) a whole study, step by step (`STEPS`); returns the study directory.
    The report is built on top of it (`mlipdiv.report.write_report`, as `mlipdiv study`
    does)."""
    paths = StudyPaths(Path(out or config.out))
    prepare_directory(config, config_text, paths, force)
    handler = attach_log(paths)
    try:
        plan_step(config, paths)
        started = time.perf_counter()
        run = StudyRun(config, paths, progress)
        for step in STEPS:
            step.run(run)
        log.info("study finished in %.1f s: %s", time.perf_counter() - started, paths.root)
        if run.failures:
            raise MlipdivError(f"{len(run.failures)} cell(s) failed (rerun to retry them; "
                               f"details in {paths.log}): {run.failures[0]}")
        return paths.root
    except FieldError as exc:  # a study is configured by keys, not by flags
        if "." not in exc.field:
            raise
        raise MlipdivError(exc.render(f"config key {exc.field}")) from None
    finally:
        log.removeHandler(handler)
        handler.close()
