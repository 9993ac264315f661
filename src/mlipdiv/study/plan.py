"""A plan before the spend (`mlipdiv study CONFIG --plan`): what a study will run and about
how long it takes, without training or generating anything.

The counts come from the config (each experiment's grid; an automatic grid is estimated from
`grid_points` and the data's sizes) or, for a study directory that already holds its designs,
from those designs (with the cells already finished). Identical cells of different
experiments (same training set, model and seed) count as one training, as the study trains
them once (`cells.cell_tasks`). The times come from a short calibration on this machine:
a handful of small RDKit-embedded conformers labelled with GFN2-xTB (timing the labelling),
each configured model trained at the configured size for a few optimiser steps (seconds per
step at the size's batch size, the set-up around them, the evaluation per conformer), the
start of a worker process, the data profile and the applicability-domain fit; or from a
stated CPU throughput (`steps_per_second`); the calibration itself is `calibrate.py`. GPU
throughput cannot be measured on a CPU machine: it is unknown unless stated
(`gpu_steps_per_second`).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel

from mlipdiv.errors import FieldError, MlipdivError
from mlipdiv.study.calibrate import Calibration, calibrate
from mlipdiv.study.config import StudyConfig, config_differences
from mlipdiv.study.executors import plan_parallelism
from mlipdiv.study.layout import RESTART_REMEDY, StudyPaths

DEFAULT_GPUS = 4


class Layout(BaseModel):
    """The estimate for one executor layout."""

    name: str
    devices: int
    parallel_cells: int
    wall_seconds: float | None
    device_hours: float | None
    note: str = ""


class StudyPlan(BaseModel):
    """What a study will run and the estimated cost (`plan_study`)."""

    format: str = "mlipdiv-plan"
    study: str
    settings_digest: str  # of the settings that define the results (a rerun's plan is kept)
    counted_from: Literal["config", "designs"]
    models: list[str]
    grids: dict[str, list[int]]  # per experiment: its grid values (automatic: estimated)
    cells: dict[str, int]  # per experiment: design cells (all selections and replicates)
    total_cells: int
    cell_trainings: int  # cells × models
    trainings: int  # after sharing identical cells
    finished: int  # cell × model results already written
    trainings_left: int
    steps_per_cell: dict[str, int]  # per model: optimiser steps of every cell (per member)
    ensemble: int
    total_steps_left: int
    adaptive_trainings_max: int
    conformers_to_label: int
    qm_method: str | None
    calibration: Calibration
    layouts: list[Layout]
    notes: list[str]

    def text(self) -> str:
        """The plan as lines a person reads."""
        lines = [f"plan of study '{self.study}' (cells counted from the {self.counted_from})"]
        for experiment, count in self.cells.items():
            lines.append(f"  {experiment}: {count} cells, grid {self.grids[experiment]}")
        lines.append(f"  cells × models: {self.cell_trainings}; trainings after sharing "
                     f"identical cells: {self.trainings}; finished: {self.finished}; "
                     f"left: {self.trainings_left}")
        lines.append("  optimiser steps per cell: " + ", ".join(
            f"{m} {s}" for m, s in self.steps_per_cell.items())
            + (f" (× {self.ensemble} members)" if self.ensemble > 1 else "")
            + f"; {self.total_steps_left} in all")
        if self.adaptive_trainings_max:
            lines.append(f"  adaptive pilot: up to {self.adaptive_trainings_max} more trainings")
        lines.append(f"  conformers to label: {self.conformers_to_label}"
                     + (f" ({self.qm_method})" if self.qm_method else ""))
        for model in self.calibration.models:
            lines.append(f"  {model.model} ({model.size}): {model.seconds_per_step:.3g} s per "
                         f"step at batch {model.batch_size}, {model.setup_seconds:.2g} s set-up"
                         f" per training [{model.source}]")
        for layout in self.layouts:
            wall = ("unknown" if layout.wall_seconds is None
                    else f"{layout.wall_seconds:.0f} s ({layout.wall_seconds / 3600:.2g} h)")
            hours = ("" if layout.device_hours is None
                     else f", {layout.device_hours:.2g} device-hours")
            lines.append(f"  {layout.name}: wall time {wall}{hours}"
                         + (f" — {layout.note}" if layout.note else ""))
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


class _NominalPool:
    """The pool an automatic grid is estimated from before the data exist: `n` molecules
    holding `available` conformers each (a `DesignPlanner` for `automatic_grid`)."""

    def __init__(self, options, kind, available: np.ndarray):
        from mlipdiv.design.designs import Planner

        self.options, self.experiment = options, kind
        self.available = np.sort(available)[::-1]
        self.keys = [f"molecule-{i}" for i in range(len(available))]
        self.grid_note = ""
        self._planner = Planner

    def n_valid(self, n_train: int) -> int:
        return self._planner.n_valid(self, n_train)

    def capacity(self) -> np.ndarray:
        return self.available

    def shortfall(self, value: int) -> str | None:
        """None when the largest molecules hold what the cell's positions need."""
        m, train, valid = self._planner._cell_sizes(self, value)
        needed = np.sort(train + valid)[::-1]
        fits = m <= len(self.available) and (self.available[:m] >= needed).all()
        return None if fits else f"M = {m}: too few conformers"

    def fillable(self, values: np.ndarray) -> np.ndarray:
        return self._planner.fillable(self, values)

    def fingerprint(self, key: str):
        raise FieldError("design.molecule_selection", key, "not known before the data")


def _count(value: float, total: int) -> int:
    """Molecules a split size takes: a count, or a fraction of `total`."""
    return int(value) if value >= 1 else round(value * total)


def data_sizes(config: StudyConfig) -> tuple[np.ndarray, int]:
    """(conformers of each molecule, molecules the test sets take) of the study's data: the
    configured generation, or the store's counts."""
    if config.data.source == "generate":
        counts = np.full(config.data.n_molecules, config.data.conformers)
    else:
        from mlipdiv.data.store import ConformerStore

        if not config.data.store.exists():  # as the study's data step says it
            raise MlipdivError(f"data.store {config.data.store.resolve()}: no such store")
        with ConformerStore(config.data.store) as store:
            # the conformers labelled at every label set of the study (data.labels)
            by_molecule = store.common_counts(config.data.label_sets())
            counts = np.array(sorted(by_molecule.values(), reverse=True))
    held = _count(config.split.st, len(counts)) + _count(config.split.sf, len(counts))
    return counts, held


def _test_conformers(config: StudyConfig) -> int:
    """Conformers a cell is scored on: the held-out molecules' and the CF conformers."""
    counts, held = data_sizes(config)
    cf = config.split.cf_molecules
    cf_molecules = len(counts) - held if cf == "all" else _count(cf, len(counts) - held)
    return int(counts[-held:].sum() if held else 0) + cf_molecules * config.split.cf_conformers


def _config_cells(config: StudyConfig, notes: list[str]) -> tuple[dict, dict, list]:
    """(grids, cells per experiment, cell keys in design order) from the config alone."""
    counts, held = data_sizes(config)
    pool = counts[held:] - config.split.cf_conformers
    grids, cells, keys = {}, {}, []
    for kind in config.experiment_sections():
        cells[kind.name] = 0
        for selection in config.selection_pairs():
            options = config.design_options(kind, selection)
            grid = options.grid
            if grid is None:
                grid = kind.automatic_grid(_NominalPool(options, kind, np.maximum(pool, 0)))
                notes.append(f"{kind.name}: automatic grid estimated from {options.grid_points}"
                             f" grid points and the data's sizes ({len(pool)} pool molecules);"
                             " the study's grid may drop values the pool cannot fill")
            grids[kind.name] = [int(v) for v in grid]
            for replicate in range(options.replicates):
                for value in grid:
                    keys.append((*kind.cell_size(options, int(value)), replicate, selection))
                    cells[kind.name] += 1
    return grids, cells, keys


def _design_tasks(config: StudyConfig, paths: StudyPaths):
    """The study's cell tasks from its design files, when it holds every one of them and the
    same settings; else None."""
    from mlipdiv.files import read_json
    from mlipdiv.study.cells import cell_tasks

    designs = [paths.design(kind.name, f"{m}-{c}") for kind in config.experiment_sections()
               for m, c in config.selection_pairs()]
    if not paths.settings.exists() or not all(p.exists() for p in designs):
        return None
    recorded = read_json(paths.settings, "study settings", RESTART_REMEDY)
    if config_differences(recorded, config.comparable()):
        return None
    return cell_tasks(config, paths, designs + paths.adaptive_design_files())


def _makespan(durations: list[float], workers: int) -> float:
    """Wall time of tasks handed in order to the first free of `workers`."""
    free = [0.0] * max(1, workers)
    for duration in durations:
        free[free.index(min(free))] += duration
    return max(free)


def settings_digest(config: StudyConfig) -> str:
    """A digest of the settings that define the study's results."""
    return hashlib.sha256(json.dumps(config.comparable(), sort_keys=True).encode()
                          ).hexdigest()[:16]


def plan_study(config: StudyConfig, out: str | Path | None = None, *,
               steps_per_second: float | None = None,
               gpu_steps_per_second: float | None = None, gpus: int = DEFAULT_GPUS,
               calibration: Calibration | None = None,
               process_started: bool = False) -> StudyPlan:
    """The study's plan: its cells, trainings after sharing identical cells, optimiser steps,
    conformers to label and the estimated wall time and device hours per executor layout
    (one CPU node with the configured workers; one GPU; `gpus` GPUs). Nothing is trained or
    generated; a study directory `out` (default: the config's) that already holds the designs
    is counted from them. `calibration` reuses measurements already made.
    `process_started`: the plan is made by the running study, whose process has already
    started and imported its steps, so the estimate is the time from now (what the study's
    log measures) and leaves the study's start-up out."""
    if gpus < 1:
        raise FieldError("gpus", gpus, "must be at least 1")
    if gpu_steps_per_second is not None and not gpu_steps_per_second > 0:
        raise FieldError("gpu_steps_per_second", gpu_steps_per_second, "must be positive")
    paths = StudyPaths(Path(out or config.out))
    notes: list[str] = []
    schedule = config.training_schedule()
    models = config.models.architectures
    tasks = _design_tasks(config, paths)
    # (model, trains, finished) per cell × model, in the order the study runs them
    if tasks is not None:
        from mlipdiv.design.designs import load_design

        counted_from = "designs"
        grids, cells = {}, {}
        for design_path in dict.fromkeys(Path(t.design) for t in tasks):
            design = load_design(design_path)
            cells[design.experiment] = cells.get(design.experiment, 0) + len(design.cells)
            grids.setdefault(design.experiment, sorted(design.options.get("grid") or []))
        jobs = [(t.spec.model, t.shares_run_of is None, Path(t.result_path).exists())
                for t in tasks]
    else:
        counted_from = "config"
        grids, cells, keys = _config_cells(config, notes)
        seen, jobs = set(), []
        variants = [(s, ls) for s in config.models.starts() for ls in config.data.label_sets()]
        for key in keys:
            for model in models:
                for variant in variants:  # every start and label set trains on the cell
                    jobs.append((model, (key, model, variant) not in seen, False))
                    seen.add((key, model, variant))
        notes.append("identical cells are predicted from equal (M, N, replicate, selection): "
                     "the designs drawn from the data decide")
    left = [(model, trains) for model, trains, done in jobs if not done]
    trainings_left = sum(trains for _, trains in left)
    total_cells = sum(cells.values())
    ensemble = config.models.ensemble
    adaptive = (config.adaptive.cells * config.design.replicates * len(models)
                * len(config.design.molecule_selection) * len(config.design.conformer_selection)
                if config.adaptive.enabled else 0)
    if adaptive:
        notes.append(f"the adaptive pilot may add up to {adaptive} trainings (not in the "
                     "estimate: it stops once the advice is determined)")
    generated = config.data.source == "generate" and not paths.data.exists()
    conformers = config.data.n_molecules * config.data.conformers if generated else 0

    workers, threads = plan_parallelism(len(left), config.executor.workers,
                                        config.executor.threads_per_worker)
    measured = calibration or calibrate(config, threads, steps_per_second,
                                        sorted({model for model, _ in left}))
    layouts = _layouts(config, paths, measured, left, schedule, conformers, workers, threads,
                       gpu_steps_per_second, gpus, process_started)
    notes.append("not estimated: splitting, designs, learning-curve fits and the report "
                 "(seconds to minutes)")
    if measured.load_average is not None and measured.load_average > measured.cores / 2:
        notes.append(f"calibrated while this machine was busy (load {measured.load_average:.1f} "
                     f"on {measured.cores} cores): other work slows the study")
    return StudyPlan(
        study=config.name, settings_digest=settings_digest(config), counted_from=counted_from,
        models=list(models), grids=grids, cells=cells, total_cells=total_cells,
        cell_trainings=len(jobs), trainings=sum(trains for _, trains, _ in jobs),
        finished=sum(done for _, _, done in jobs), trainings_left=trainings_left,
        steps_per_cell={m: schedule[m]["steps"] for m in models}, ensemble=ensemble,
        total_steps_left=sum(schedule[m]["steps"] * ensemble for m, trains in left if trains),
        adaptive_trainings_max=adaptive, conformers_to_label=conformers,
        qm_method=config.data.method if config.data.source == "generate" else None,
        calibration=measured, layouts=layouts, notes=notes)


def _layouts(config: StudyConfig, paths: StudyPaths, measured: Calibration, left: list,
             schedule: dict, conformers: int, workers: int, threads: int,
             gpu_steps_per_second: float | None, gpus: int,
             process_started: bool) -> list[Layout]:
    """Wall time and device hours on one CPU node, one GPU and `gpus` GPUs."""
    throughput = {m.model: m for m in measured.models}
    test = _test_conformers(config)
    ensemble = config.models.ensemble
    counts, _ = data_sizes(config)
    # work before the cells: the study's start (unless this is that study, already started),
    # labelling (over the generator's workers) and the profile
    before = 0.0 if process_started else measured.study_start_seconds or 0.0
    label_workers, _ = plan_parallelism(config.data.n_molecules, config.executor.workers)
    if conformers and measured.generate_seconds_per_molecule is not None:
        before += (config.data.n_molecules * measured.generate_seconds_per_molecule
                   / label_workers)
    elif conformers and measured.label_seconds_per_conformer is not None:
        before += conformers * measured.label_seconds_per_conformer / label_workers
    if measured.profile_seconds_per_conformer is not None and not paths.profile.exists():
        before += (measured.profile_seconds_per_conformer * int(counts.sum())
                   + (measured.profile_plot_seconds or 0.0))
    # after the cells: the domain step fits and evaluates the largest cell of each
    # experiment, model and selection (on the pool and the test sets)
    domain_runs = (len(config.experiments()) * len(config.design.molecule_selection)
                   * len(config.design.conformer_selection))
    after = (sum(domain_runs * ((measured.domain_seconds or 0.0)
                                + t.evaluate_seconds_per_conformer * int(counts.sum()))
                 for t in throughput.values()) + (measured.domain_start_seconds or 0.0)
             ) if left else 0.0

    def wall(step_seconds: dict[str, float], parallel: int) -> float:
        phases = [[], []]  # cells that train, then cells reusing an identical cell's run
        for model, trains in left:
            t = throughput[model]
            evaluate = t.score_seconds + t.evaluate_seconds_per_conformer * test
            phases[not trains].append(
                (t.setup_seconds + schedule[model]["steps"] * ensemble * step_seconds[model]
                 + evaluate) if trains else evaluate)
        # a pool of fresh workers per phase (in this process when there is one worker),
        # each paying the first training's warm-up of every model
        warm_up = sum(t.warm_up_seconds for t in throughput.values())
        start = (measured.worker_start_seconds or 0.0) + warm_up
        if parallel == 1:
            return before + after + warm_up + sum(_makespan(p, 1) for p in phases if p)
        return before + after + sum(start + _makespan(p, parallel) for p in phases if p)

    cpu = wall({m: t.seconds_per_step for m, t in throughput.items()}, workers)
    layouts = [Layout(name=f"one CPU node ({workers} workers × {threads} threads)", devices=1,
                      parallel_cells=workers, wall_seconds=cpu, device_hours=cpu / 3600,
                      note="cells run in parallel, one per worker")]
    for count in dict.fromkeys((1, gpus)):
        name = "one GPU" if count == 1 else f"{count} GPUs"
        if gpu_steps_per_second is None:
            layouts.append(Layout(name=name, devices=count, parallel_cells=count,
                                  wall_seconds=None, device_hours=None,
                                  note="unknown: GPU throughput cannot be measured on this "
                                       "CPU machine; state it with --gpu-steps-per-second"))
            continue
        seconds = wall(dict.fromkeys(throughput, 1 / gpu_steps_per_second), count)
        layouts.append(Layout(name=name, devices=count, parallel_cells=count,
                              wall_seconds=seconds, device_hours=seconds * count / 3600,
                              note="one cell per GPU at the stated throughput; set-up and "
                                   "evaluation as measured on this CPU"))
    return layouts


def write_plan(plan: StudyPlan, paths: StudyPaths) -> None:
    """plan.json in the study directory (atomically)."""
    from mlipdiv.atomic import write_json_atomic

    write_json_atomic(paths.plan, plan.model_dump(mode="json"))


FINISHED = re.compile(r"study finished in ([0-9.]+) s")


def study_wall_seconds(paths: StudyPaths) -> float | None:
    """The wall time of the study's last complete run, from its log ("study finished in X
    s"); None when no run finished."""
    try:
        found = FINISHED.findall(paths.log.read_text(errors="replace"))
    except OSError:
        return None
    return float(found[-1]) if found else None


def read_plan(paths: StudyPaths) -> StudyPlan | None:
    """The plan the study wrote when it started; None when absent or unreadable."""
    try:
        return StudyPlan.model_validate_json(paths.plan.read_text())
    except (OSError, ValueError):
        return None
