"""Evaluate a trained run on test splits: one pydantic record per (run, split)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, create_model

from mlipdiv.data.store import MoleculeRecord
from mlipdiv.design import load_design, load_splits
from mlipdiv.design.kinds import scored_sets
from mlipdiv.errors import MlipdivError
from mlipdiv.metrics.stats import (
    METRIC_DECLARATIONS,
    N_RESAMPLES,
    MoleculeErrors,
    per_molecule_sums,
    split_estimates,
)
from mlipdiv.models import TrainedRun, load_run, read_records

SCOPE_TRAINING = "training molecules"  # CF scored on the run's own training molecules only
SCOPE_ALL = "all molecules of the split"


class _SplitCounts(BaseModel):
    """What was scored: the split, which of its molecules, how many, and what was left out."""

    split: str
    scope: str = SCOPE_ALL  # which of the split's molecules were scored
    n_molecules: int
    n_conformers: int
    out_of_domain_conformers: int
    out_of_domain_molecules: str = ""  # their InChIKeys, comma-separated (flat row)


# Errors of a run's ensemble-mean prediction on one split: every declared metric and its 95 %
# interval from a cluster bootstrap over molecules (three columns a metric, from
# METRIC_DECLARATIONS). Out-of-domain conformers (elements absent from training) are counted
# but left out of the errors. None = not defined on this split.
SplitMetrics = create_model(
    "SplitMetrics", __base__=_SplitCounts, __module__=__name__,
    **{column: (float | None, ...) for metric in METRIC_DECLARATIONS
       for column in metric.columns},
)


class ResultRecord(SplitMetrics):
    """One table row: which run (cell, model, size, seed, training conformers, wall time,
    device) scored what on which split."""

    run: str
    cell: str | None
    model: str
    size: str
    seed: int
    ensemble: int
    n_train: int
    wall_time_s: float
    device: str
    # conformers of the scored file left out before scoring (NaN/inf or missing labels)
    skipped_conformers: int = 0


def evaluate_split(run, records: Iterable[MoleculeRecord], split: str, *,
                   n_resamples: int = N_RESAMPLES, seed: int = 0,
                   scope: str = SCOPE_ALL) -> SplitMetrics:
    """Metrics of `run` (a TrainedRun) on labelled `records`; out-of-domain conformers are
    predicted (as NaN), flagged and counted, never scored."""
    return score_split(run, records, split, n_resamples=n_resamples, seed=seed, scope=scope)[0]


def score_split(run, records: Iterable[MoleculeRecord], split: str, *,
                n_resamples: int = N_RESAMPLES, seed: int = 0,
                scope: str = SCOPE_ALL) -> tuple[SplitMetrics, list[dict]]:
    """The split's metrics and its per-molecule terms: one dict per scored molecule with
    `inchikey` and, per metric, `num_<metric>` / `den_<metric>` (metric = sum num / sum den,
    square-rooted for RMSEs) — what a bootstrap over replicates and molecules resamples."""
    records = list(records)
    unlabelled = [r.inchikey for r in records if not r.labelled]
    if unlabelled:
        raise MlipdivError(f"split {split}: molecule {unlabelled[0]} has no labels to score")
    partial = [r for r in records if r.n_labelled < r.n_conformers]
    if partial:  # read at a label set covering a subset of the conformers
        raise MlipdivError(f"split {split}: {partial[0].n_conformers - partial[0].n_labelled} "
                           f"conformer(s) of molecule {partial[0].inchikey} are not labelled "
                           "at the label set scored")
    no_forces = [r.inchikey for r in records if not r.has_forces]
    if no_forces:
        raise MlipdivError(f"split {split}: molecule {no_forces[0]} has energies but no forces; "
                           "scoring needs both")
    molecules, out_of_domain, keys = [], [], []
    for record, prediction in zip(records, run.predict(records), strict=True):
        if prediction.out_of_domain:
            out_of_domain.append(record)
            continue
        keys.append(record.inchikey)
        molecules.append(MoleculeErrors(record.n_atoms, record.energy, prediction.mean_energy,
                                        record.forces, prediction.mean_forces))
    estimates = split_estimates(molecules, n_resamples=n_resamples, seed=seed)
    fields = {}
    for metric in METRIC_DECLARATIONS:
        estimate = estimates[metric.name]
        fields.update(zip(metric.columns, (estimate.value, estimate.ci_low, estimate.ci_high),
                          strict=True))
    metrics = SplitMetrics(
        split=split, scope=scope, n_molecules=len(records),
        n_conformers=int(np.sum([r.n_conformers for r in records])),
        out_of_domain_conformers=int(np.sum([r.n_conformers for r in out_of_domain])),
        out_of_domain_molecules=",".join(r.inchikey for r in out_of_domain), **fields,
    )
    sums = per_molecule_sums(molecules)
    terms = [{"inchikey": key,
              **{f"{kind}_{name}": float(values[position])
                 for name, (num, den, _) in sums.items()
                 for kind, values in (("num", num), ("den", den))}}
             for position, key in enumerate(keys)]
    return metrics, terms


def result_record(run, metrics: SplitMetrics) -> ResultRecord:
    """Attach the run's identity (cell, model, size, seed, ...) to a split's metrics."""
    record = run.record
    return ResultRecord(
        run=str(run.path), cell=record.source.cell, model=record.model, size=record.size,
        seed=record.seed, ensemble=record.ensemble, n_train=record.n_train,
        wall_time_s=record.wall_time_s, device=record.device_name, **metrics.model_dump(),
    )


def training_molecules(run: TrainedRun) -> set[str] | None:
    """InChIKeys the run trained on: recorded in the run, or (a run of an older version) read
    from its design cell; None when neither says (trained on files by an older version)."""
    recorded = run.training_molecules()
    if recorded is not None:
        return recorded
    source = run.record.source
    if source.design and source.cell and Path(source.design).exists():
        return {key for key, _ in load_design(source.design).cell(source.cell).train}
    return None


def evaluate_run(run_path: str | os.PathLike, splits_path: str | os.PathLike,
                 device: str | None = None, labels: str | None = None) -> list[ResultRecord]:
    """One ResultRecord per test split of a SPLITS directory (cf, st, sf, ood: those made).
    CF is scored on the withheld conformers of the run's own training molecules."""
    return [record for record, _ in score_run(run_path, splits_path, device, labels)]


def score_run(run_path: str | os.PathLike, splits_path: str | os.PathLike,
              device: str | None = None, labels: str | None = None,
              ) -> list[tuple[ResultRecord, list[dict]]]:
    """(record, per-molecule terms) per test split, against the store's label set `labels`
    (None: its default labels). CF means "unseen conformers of the molecules this run
    trained on", so the CF set is restricted to the run's training molecules; a run that does
    not say which they were is scored on the whole CF set and its record's `scope` says so."""

    run = load_run(run_path, device)
    splits = load_splits(splits_path)
    trained_on = training_molecules(run)
    scored = []
    for name, split_set, restricted in scored_sets(splits, trained_on):
        scope = SCOPE_TRAINING if restricted else SCOPE_ALL
        metrics, terms = score_split(run, split_set.records(labels), name, scope=scope)
        scored.append((result_record(run, metrics), terms))
    return scored


def evaluate_file(run_path: str | os.PathLike, data_path: str | os.PathLike,
                  device: str | None = None) -> list[ResultRecord]:
    """The run scored on every conformer of one store or extxyz file (split = file stem)."""

    run = load_run(run_path, device)
    skipped = Counter()
    records = read_records(data_path, skipped)
    record = result_record(run, evaluate_split(run, records, Path(data_path).stem))
    return [record.model_copy(update={"skipped_conformers": sum(skipped.values())})]
