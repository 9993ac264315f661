"""The study's applicability-domain step: fit the domain of the largest trained cell of each
experiment, model and selection, evaluate it on the study's test splits, and gather every
score's AUROCs into one table.

Writes `STUDY/domain/<run>/evaluation.json` (+ `retention_curves.csv`) per evaluated run and
`STUDY/domain/auroc.csv` / `auroc.json` (one row per run × split × score); the fitted domain
itself lives in each run's own `RUN/domain/`. Reruns skip runs whose evaluation is newer than
their cell's result.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mlipdiv.atomic import write_text_atomic
from mlipdiv.domain.evaluate import EVALUATION_FILE, DomainEvaluation, evaluate_run
from mlipdiv.domain.model import DOMAIN_FILE, domain_directory, fit_run
from mlipdiv.files import read_parquet
from mlipdiv.study.cells import axis_values, label_starts
from mlipdiv.study.layout import RESULTS_REMEDY, StudyPaths, slug

AUROC_CSV = "auroc.csv"
AUROC_JSON = "auroc.json"
RUN_COLUMNS = ["experiment", "model", "selection", "cell", "M", "N"]

log = logging.getLogger("mlipdiv.study")


@dataclass(frozen=True)
class EvaluatedRun:
    """One trained run the domain step evaluates, and where its evaluation goes."""

    experiment: str
    model: str
    selection: str
    cell: str
    n_molecules: int
    n_train: int
    run_dir: Path
    result_path: Path
    evaluation_path: Path

    def labels(self) -> dict:
        return dict(zip(RUN_COLUMNS, (self.experiment, self.model, self.selection, self.cell,
                                      self.n_molecules, self.n_train), strict=True))


def study_runs(study_dir: str | os.PathLike) -> list[EvaluatedRun]:
    """The largest training cell (most conformers, then most molecules; first replicate) of
    each experiment, model and selection among the study's finished cells."""
    paths = StudyPaths(Path(study_dir))
    if not paths.results_parquet.exists():
        return []
    table = read_parquet(paths.results_parquet, "study results", RESULTS_REMEDY)
    # with several starts or label sets, a run per (model, start, label set), labelled
    # "ani/pretrained/dft" (model_label)
    starts = list(dict.fromkeys(table.start)) if "start" in table else ["scratch"]
    label_sets = list(dict.fromkeys(table["labels"])) if "labels" in table else None
    axes = [column for column in ("start", "labels") if column in table]
    cells = (label_starts(table[[*RUN_COLUMNS, "replicate", "run", *axes]], starts, label_sets)
             .drop_duplicates(["cell", "model"])
             .sort_values(["N", "M", "replicate"], ascending=[False, False, True]))
    runs = []
    for _, row in cells.groupby(["experiment", "model", "selection"], sort=True).head(1).iterrows():
        runs.append(EvaluatedRun(
            row.experiment, row.model, row.selection, row.cell, int(row.M), int(row.N),
            # the run as recorded: a cell identical to another shares that cell's run
            Path(row.run), paths.cell_result(
                row.cell, row.model.split("/")[0],
                "-".join(axis_values(row.start, starts, row["labels"], label_sets)) or None),
            evaluation_path(paths.root, row.cell, row.model)))
    return sorted(runs, key=lambda r: (r.model, r.selection, r.experiment))


def evaluation_path(study_dir: str | os.PathLike, cell: str, model: str) -> Path:
    """Where the domain step writes the evaluation of one cell's run."""
    name = model.replace("/", "-")  # a (model, start, labels) label "ani/pretrained"
    return StudyPaths(Path(study_dir)).domain / f"{slug(cell)}__{name}" / EVALUATION_FILE


def _is_current(path: Path, source: Path) -> bool:
    return path.exists() and (not source.exists()
                              or path.stat().st_mtime >= source.stat().st_mtime)


def evaluate_study_run(run: EvaluatedRun, splits: Path) -> DomainEvaluation:
    """Fit (unless fitted since the cell finished) and evaluate one run; returns the
    evaluation, read back when it is already current."""
    if _is_current(run.evaluation_path, run.result_path):
        try:
            return DomainEvaluation.model_validate_json(run.evaluation_path.read_text())
        except (ValueError, OSError):  # damaged outside mlipdiv: evaluated again below
            log.warning("domain: %s damaged; evaluating again", run.evaluation_path)
    if not _is_current(domain_directory(run.run_dir) / DOMAIN_FILE, run.result_path):
        fit_run(run.run_dir)
    evaluation = evaluate_run(run.run_dir, splits, out=run.evaluation_path)
    log.info("domain: %s [%s] evaluated", run.cell, run.model)
    return evaluation


def auroc_table(evaluations: list[tuple[EvaluatedRun, DomainEvaluation]]) -> pd.DataFrame:
    """One row per run × split × score: the run's labels and the score's statistics."""
    rows = [{**run.labels(), **row.model_dump()}
            for run, evaluation in evaluations for row in evaluation.scores]
    return pd.DataFrame(rows)


def study_step(study_dir: str | os.PathLike) -> None:
    """The study's applicability-domain step (resumable): evaluate the largest cell of each
    experiment, model and selection on the study's splits; write STUDY/domain/auroc.csv and
    auroc.json."""
    paths = StudyPaths(Path(study_dir))
    runs = study_runs(paths.root)
    if not runs:
        return
    table = auroc_table([(run, evaluate_study_run(run, paths.splits)) for run in runs])
    write_text_atomic(paths.domain / AUROC_CSV, table.to_csv(index=False))
    write_text_atomic(paths.domain / AUROC_JSON, table.to_json(orient="records", indent=1))
