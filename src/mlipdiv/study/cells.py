"""The cell helpers the runner and verify share: a design cell's training (`train_cell`)
and scoring (`run_cell`), the tasks of every cell of some designs (`cell_tasks`), running
them on the configured executor (`execute`), and reading their results back
(`read_cell_results`, `collect_results`); with the pool the cells are drawn from
(`pool_limits`) and the study log they write to (`attach_log`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from dataclasses import dataclass, replace
from itertools import product
from pathlib import Path

import pandas as pd
import torch

from mlipdiv.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic
from mlipdiv.data.store import DEFAULT_LABELS, ConformerStore
from mlipdiv.design import load_design, load_splits
from mlipdiv.errors import MlipdivError
from mlipdiv.metrics.evaluate import score_run
from mlipdiv.models import StoreTrainingSet, TrainingSpec, train
from mlipdiv.models.record import RunRecord
from mlipdiv.study.advise import DataLimits
from mlipdiv.study.config import StudyConfig
from mlipdiv.study.executors import (
    RaySettings,
    cell_gpus,
    current_placement,
    plan_parallelism,
    run_local,
    run_ray,
    task_device,
)
from mlipdiv.study.layout import RESTART_REMEDY, StudyPaths

log = logging.getLogger("mlipdiv.study")

# where each cell ran: the node (hostname; with the Ray node id on Ray) and the device its task
# was given ("cuda:0 (ray gpu 1)", "cpu"); "" in results written before they were recorded
PLACEMENT_COLUMNS = ("node", "task_device")


@dataclass(frozen=True)
class CellTask:
    """One training + evaluation: a design cell and a model (`spec.model`), trained as
    `spec` says."""

    design: str
    cell_id: str
    run_dir: str
    result_path: str
    splits: str
    spec: TrainingSpec
    shares_run_of: str | None = None  # the cell whose identical training set this reuses
    run_design: str = ""  # design file of the cell the run is trained for (this or shared)
    start: str = "scratch"  # the start trained from (config.models.start)
    labels: str = DEFAULT_LABELS  # the store's label set trained and scored on (data.labels)
    label: str = ""  # the model in results, fits and advice (model_label); "" = spec.model
    # GPUs the local executor reserves per cell (a Ray task's are its placement's)
    gpus: float = 0.0


def train_cell(design_path: str | os.PathLike, cell_id: str, spec: TrainingSpec,
               out: str | os.PathLike, *, progress: bool = True,
               labels: str | None = None) -> Path:
    """Train `spec` on a design cell's training/validation pairs (as `models.train`) with the
    energies and forces of the store's label set `labels` (None: its default labels); the
    cell's figures go into the run record's source."""

    design = load_design(design_path)
    cell = design.cell(cell_id)
    splits = load_splits(design.splits_path)
    with ConformerStore(splits.store_path) as store:
        # streamed: the cell's conformers are read in batches as training draws them
        train_set = (StoreTrainingSet(splits.store_path, cell.train, spec.loader_workers)
                     if spec.stream else list(store.select(cell.train, labels)))
        valid_records = list(store.select(cell.valid, labels))
    # absolute paths: the run is read later from other working directories (domain fit)
    source = {"cell": cell.id, "design": str(Path(design_path).resolve()),
              "splits": str(Path(design.splits_path).resolve()),
              **cell.model_dump(exclude={"id", "train", "valid"}),
              # the label set, read back by the domain fit (absent: the default labels)
              **({"labels": labels} if labels not in (None, DEFAULT_LABELS) else {})}
    return train(train_set, valid_records, spec, out, source=source, progress=progress)


def training_set_key(cell, model: str, seed: int, start: str = "scratch",
                     labels: str = DEFAULT_LABELS) -> str:
    """What makes two trainings the same: conformers, validation conformers, model, seed,
    start, label set."""
    content = json.dumps([sorted(map(list, cell.train)), sorted(map(list, cell.valid)), model,
                          seed, start, labels])
    return hashlib.sha256(content.encode()).hexdigest()


def axis_values(start: str, starts: list[str], labels: str = DEFAULT_LABELS,
                label_sets: list[str] | None = None) -> list[str]:
    """The study axes that name a (model, start, label set) beyond its model: the start
    where the study has several, the label set where it has several."""
    return ([start] * (len(starts) > 1)
            + [labels] * (len(label_sets or [DEFAULT_LABELS]) > 1))


def model_label(model: str, start: str, starts: list[str], labels: str = DEFAULT_LABELS,
                label_sets: list[str] | None = None) -> str:
    """The model as results, fits and advice name it: "ani" in a study with one start and one
    label set, "ani/pretrained" where it has several starts, "ani/dft" where it has several
    label sets, "ani/pretrained/dft" with both (so every per-model grouping is per start and
    per level of theory)."""
    return "/".join([model, *axis_values(start, starts, labels, label_sets)])


def label_starts(table: pd.DataFrame, starts: list[str],
                 label_sets: list[str] | None = None) -> pd.DataFrame:
    """Result rows (or per-molecule terms) with a `start` and a `labels` column (rows written
    before them read as the study's single start and label set) and their model labelled by
    start and label set (model_label)."""
    table = table.copy()
    label_sets = label_sets or [DEFAULT_LABELS]
    for column, first in (("start", starts[0]), ("labels", label_sets[0])):
        table[column] = table[column].fillna(first) if column in table else first
    if (len(starts) > 1 or len(label_sets) > 1) and "model" in table:
        table["model"] = [model_label(m.split("/")[0], s, starts, labels, label_sets)
                          for m, s, labels in zip(table.model, table.start, table["labels"],
                                                  strict=True)]
    return table


def cell_tasks(config: StudyConfig, paths: StudyPaths, designs: list[Path],
               seed_offset: int = 0, splits: Path | None = None) -> list[CellTask]:
    """Every (cell, model) of every design, in design order. A cell whose training set,
    model and seed equal an earlier cell's (e.g. fixed-budget M = 8 × C = 4 and
    fixed-molecules M = 8, C = 4 of one replicate) reuses that cell's run instead of training
    the same model twice. `paths` says where runs and cell results go; `splits` (default
    the study's own) what they are scored on."""

    schedule = config.training_schedule()
    starts, label_sets = config.models.starts(), config.data.label_sets()
    tasks, first_run = [], {}
    for design_path in designs:
        for cell in load_design(design_path).cells:
            for model, start, labels in product(config.models.architectures, starts,
                                                label_sets):
                seed = config.seed + seed_offset + cell.replicate
                key = training_set_key(cell, model, seed, start, labels)
                shared, run_design = first_run.setdefault(key, (cell.id, design_path))
                spec = TrainingSpec(
                    model=model, size=config.models.size, ensemble=config.models.ensemble,
                    seed=seed, dtype=config.models.dtype, device=config.models.device,
                    steps=schedule[model]["steps"],
                    steps_per_round=schedule[model]["steps_per_round"],
                    stream=config.models.stream, loader_workers=config.models.loader_workers,
                    **config.models.start_options(start))
                # one start and one label set keep the plain paths (studies made before
                # `start` and `data.labels` resume)
                named = "-".join(axis_values(start, starts, labels, label_sets)) or None
                tasks.append(CellTask(
                    design=str(design_path.resolve()), cell_id=cell.id,
                    run_dir=str(paths.run(shared, model, named).resolve()),
                    result_path=str(paths.cell_result(cell.id, model, named).resolve()),
                    splits=str((splits or paths.splits).resolve()), spec=spec,
                    shares_run_of=None if shared == cell.id else shared,
                    run_design=str(run_design.resolve()), start=start, labels=labels,
                    label=model_label(model, start, starts, labels, label_sets)))
    return tasks


def run_cell(task: CellTask) -> dict:
    """Train (resuming) and evaluate one cell with one model; write its result rows
    atomically. Returns a short summary for the log."""

    started = time.perf_counter()
    cell = load_design(task.design).cell(task.cell_id)
    # the device follows what the executor reserved for this task, not the driver's numbering
    device, device_label = task_device(task.spec.device, task.gpus)
    # a cell sharing an identical earlier cell's training set finds that run complete
    run_dir = train_cell(task.run_design, task.shares_run_of or task.cell_id,
                         replace(task.spec, device=device), task.run_dir, progress=False,
                         labels=task.labels)
    columns = {**cell_columns(cell), **training_columns(run_dir), "shares_run_of":
               task.shares_run_of or "", "node": current_placement().node,
               "task_device": device_label, "start": task.start, "labels": task.labels}
    rows, molecules = [], []
    for record, terms in score_run(run_dir, task.splits, device, task.labels):
        rows.append({**record.model_dump(), **columns})
        molecules += [{"cell": cell.id, "model": task.spec.model, "start": task.start,
                       "labels": task.labels, "replicate": cell.replicate,
                       "split": record.split, **term}
                      for term in terms]
    write_json_atomic(Path(task.result_path), {"rows": rows, "molecules": molecules})
    return {"seconds": time.perf_counter() - started,
            "errors": {row["split"]: row["energy_mae_mev_per_atom"] for row in rows}}


def cell_columns(cell) -> dict:
    """A design cell's identity and diversity figures as result-table columns."""
    return {
        "experiment": cell.experiment, "cell": cell.id, "M": cell.n_molecules,
        "C": cell.n_train / cell.n_molecules, "C_nominal": cell.conformers_per_molecule,
        "N": cell.n_train, "replicate": cell.replicate,
        "selection": f"{cell.molecule_selection}-{cell.conformer_selection}",
        "molecule_selection": cell.molecule_selection,
        "conformer_selection": cell.conformer_selection, "short": cell.short,
        **{f"div_{key}": value for key, value in cell.diversity.items()},
    }


def training_columns(run_dir: Path) -> dict:
    """How the run trained: optimiser steps done, best step, whether every member converged
    (validation loss no longer falling at the end, or early stopping)."""

    members = RunRecord.read_complete(run_dir, remedy=RESTART_REMEDY).members
    return {"train_steps": max(m.steps for m in members),
            "best_step": min(m.best_step for m in members),
            "converged": all(m.converged for m in members)}


def execute(config: StudyConfig, tasks: list[CellTask], progress: bool) -> list[str]:
    """Run the unfinished tasks on the configured executor; returns the failures."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    todo = [t for t in tasks if cell_result(t) is None]
    executor = config.executor
    workers, threads = plan_parallelism(len(todo), executor.workers, executor.threads_per_worker)
    if executor.kind == "ray" and executor.address and not executor.threads_per_worker:
        threads = 1  # a cluster's nodes: one cell per CPU (its size is not this machine's)
    log.info("cells: %d of %d to run (%s executor, %d workers × %d threads; %d reuse the run "
             "of an identical cell)", len(todo), len(tasks), executor.kind, workers, threads,
             sum(t.shares_run_of is not None for t in todo))
    gpus = 0.0
    if executor.kind == "local":
        gpus = cell_gpus(executor.gpus_per_cell, config.models.device,
                         torch.cuda.is_available())
        todo = [replace(t, gpus=gpus) for t in todo]
    # Cells that reuse another cell's run go after it, so one run is never trained twice at
    # once.
    phases = [[(f"{t.cell_id} [{t.label or t.spec.model}]", (t,)) for t in todo
               if (t.shares_run_of is None) == first] for first in (True, False)]

    def completions():
        if not todo:
            return
        if executor.kind == "ray":
            yield from run_ray(run_cell, phases, workers, threads, RaySettings(
                executor.address, executor.max_retries, executor.gpus_per_cell,
                config.models.device, shared_paths(todo) if executor.address else ()))
        else:
            yield from run_local(run_cell, phases, workers, threads, gpus)

    failures = []
    with Progress(TextColumn("cells"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), disable=not progress) as bar:
        task_bar = bar.add_task("cells", total=len(tasks), completed=len(tasks) - len(todo))
        for completion in completions():
            bar.advance(task_bar)
            if completion.error:
                failures.append(f"{completion.key}: {completion.error}")
                log.error("cell %s failed: %s", completion.key, completion.error)
            else:
                errors = ", ".join(f"{s} {v:.3g}" for s, v in completion.value["errors"].items()
                                   if v is not None)
                log.info("cell %s done in %.1f s (energy MAE meV/atom: %s)", completion.key,
                         completion.value["seconds"], errors)
    return failures


def shared_paths(tasks: list[CellTask]) -> tuple[tuple[str, bool], ...]:
    """What every node running cells must see at the same path: (path, written there) for the
    store, the splits, the designs (read) and the directories runs and results go to."""
    stores = {str(load_splits(splits, verify=False).store_path)
              for splits in {t.splits for t in tasks}}
    written = {str(Path(t.result_path).parent) for t in tasks}
    written |= {str(Path(t.run_dir).parent.parent) for t in tasks}
    for directory in written:
        Path(directory).mkdir(parents=True, exist_ok=True)
    read = stores | {t.splits for t in tasks} | {t.design for t in tasks}
    return tuple([(path, False) for path in sorted(read)] +
                 [(path, True) for path in sorted(written)])


def cell_result(task: CellTask) -> dict | None:
    """A finished task's result ({"rows", "molecules"}); None when it has not finished or its
    file is damaged or of an older format (the cell is then run again)."""
    path = Path(task.result_path)
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        payload = None
    if not isinstance(payload, dict) or not {"rows", "molecules"} <= set(payload):
        log.warning("%s: damaged or old-format cell result; the cell is run again", path)
        return None
    return payload


def read_cell_results(tasks: list[CellTask]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The finished tasks' result rows and per-molecule error terms."""
    rows, molecules = [], []
    for task in tasks:
        payload = cell_result(task)
        if payload is None:
            continue
        # rows written before `start` / `labels` carry the task's (a study's single one)
        given = {"start": task.start, "labels": task.labels}
        rows += [{**given, **row} for row in payload["rows"]]
        molecules += [{**given, **term} for term in payload["molecules"]]
    return with_placement_columns(pd.DataFrame(rows)), pd.DataFrame(molecules)


def with_placement_columns(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with the placement columns, "" where its rows predate them."""
    for column in PLACEMENT_COLUMNS:
        table[column] = table[column].fillna("") if column in table else ""
    return table


def _write_table(table: pd.DataFrame, parquet: Path, csv: Path | None = None) -> None:
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    write_bytes_atomic(parquet, buffer.getvalue())
    if csv is not None:
        write_text_atomic(csv, table.to_csv(index=False))


def collect_results(tasks: list[CellTask], paths: StudyPaths) -> pd.DataFrame:
    """results.parquet and results.csv (one row per cell, replicate, model and split) and
    results_molecules.parquet (the per-molecule error terms the report's hierarchical
    bootstrap resamples)."""
    table, molecules = read_cell_results(tasks)
    if table.empty:
        raise MlipdivError(f"{paths.root}: no cell finished; see {paths.log}")
    _write_table(table, paths.results_parquet, paths.results_csv)
    _write_table(molecules, paths.results_molecules)
    return table


def pool_limits(config: StudyConfig, paths: StudyPaths) -> DataLimits:
    """What the study's training pool holds: its molecules, and the most training conformers
    one molecule can give once validation conformers are set aside."""

    # the split was checked against the store when the designs were drawn: no checksum pass
    pool = load_splits(paths.splits, verify=False).pool_set.by_molecule
    largest = max(len(v) for v in pool.values())
    return DataLimits(max_molecules=len(pool), max_conformers_per_molecule=max(
        1, int(largest / (1 + config.design.validation_fraction))))


def attach_log(paths: StudyPaths) -> logging.Handler:
    """Send the study's log (the runner's, the cells' and verify's) to `paths.log`; the
    caller removes and closes the handler when it is done."""
    handler = logging.FileHandler(paths.log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler
