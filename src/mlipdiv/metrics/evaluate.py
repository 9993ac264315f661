"""Evaluate a trained run on test splits: one pydantic record per (run, split)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from mlipdiv.data.store import MoleculeRecord
from mlipdiv.errors import MlipdivError
from mlipdiv.metrics.stats import N_RESAMPLES, MoleculeErrors, split_estimates


class SplitMetrics(BaseModel):
    """Errors of a run's ensemble-mean prediction on one split, each with a 95 % interval from
    a cluster bootstrap over molecules. Out-of-domain conformers (elements absent from
    training) are counted but left out of the errors. None = not defined on this split."""

    split: str
    n_molecules: int
    n_conformers: int
    out_of_domain_conformers: int
    out_of_domain_molecules: str = ""  # their InChIKeys, comma-separated (flat row)
    energy_mae_mev_per_atom: float | None
    energy_mae_mev_per_atom_ci_low: float | None
    energy_mae_mev_per_atom_ci_high: float | None
    energy_rmse_mev_per_atom: float | None
    energy_rmse_mev_per_atom_ci_low: float | None
    energy_rmse_mev_per_atom_ci_high: float | None
    energy_mae_mev: float | None
    energy_mae_mev_ci_low: float | None
    energy_mae_mev_ci_high: float | None
    energy_rmse_mev: float | None
    energy_rmse_mev_ci_low: float | None
    energy_rmse_mev_ci_high: float | None
    forces_mae_mev_per_angstrom: float | None
    forces_mae_mev_per_angstrom_ci_low: float | None
    forces_mae_mev_per_angstrom_ci_high: float | None
    forces_rmse_mev_per_angstrom: float | None
    forces_rmse_mev_per_angstrom_ci_low: float | None
    forces_rmse_mev_per_angstrom_ci_high: float | None
    conformational_energy_mae_mev: float | None
    conformational_energy_mae_mev_ci_low: float | None
    conformational_energy_mae_mev_ci_high: float | None
    spearman_mean: float | None
    spearman_mean_ci_low: float | None
    spearman_mean_ci_high: float | None


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


def evaluate_split(run, records: Iterable[MoleculeRecord], split: str, *,
                   n_resamples: int = N_RESAMPLES, seed: int = 0) -> SplitMetrics:
    """Metrics of `run` (a TrainedRun) on labelled `records`; out-of-domain conformers are
    predicted (as NaN), flagged and counted, never scored."""
    records = list(records)
    unlabelled = [r.inchikey for r in records if not r.labelled]
    if unlabelled:
        raise MlipdivError(f"split {split}: molecule {unlabelled[0]} has no labels to score")
    molecules, out_of_domain = [], []
    for record, prediction in zip(records, run.predict(records), strict=True):
        if prediction.out_of_domain:
            out_of_domain.append(record)
            continue
        molecules.append(MoleculeErrors(record.n_atoms, record.energy, prediction.mean_energy,
                                        record.forces, prediction.mean_forces))
    estimates = split_estimates(molecules, n_resamples=n_resamples, seed=seed)
    fields = {}
    for name, estimate in estimates.items():
        fields[name] = estimate.value
        fields[f"{name}_ci_low"] = estimate.ci_low
        fields[f"{name}_ci_high"] = estimate.ci_high
    return SplitMetrics(
        split=split, n_molecules=len(records),
        n_conformers=int(np.sum([r.n_conformers for r in records])),
        out_of_domain_conformers=int(np.sum([r.n_conformers for r in out_of_domain])),
        out_of_domain_molecules=",".join(r.inchikey for r in out_of_domain), **fields,
    )


def result_record(run, metrics: SplitMetrics) -> ResultRecord:
    """Attach the run's identity (cell, model, size, seed, ...) to a split's metrics."""
    meta = run.meta
    return ResultRecord(
        run=str(run.path), cell=meta.get("meta", {}).get("cell"), model=meta["model"],
        size=meta["size"], seed=meta["seed"], ensemble=meta["ensemble"],
        n_train=meta["n_train"], wall_time_s=meta["wall_time_s"], device=meta["device_name"],
        **metrics.model_dump(),
    )


def evaluate_run(run_path: str | os.PathLike, splits_path: str | os.PathLike,
                 device: str | None = None) -> list[ResultRecord]:
    """One ResultRecord per test split of a SPLITS directory (cf, st, sf, ood: those made)."""
    from mlipdiv.design import load_splits
    from mlipdiv.models import load_run

    run = load_run(run_path, device)
    splits = load_splits(splits_path)
    return [result_record(run, evaluate_split(run, splits.records(name), name))
            for name in splits.test_sets]


def evaluate_file(run_path: str | os.PathLike, data_path: str | os.PathLike,
                  device: str | None = None) -> list[ResultRecord]:
    """The run scored on every conformer of one store or extxyz file (split = file stem)."""
    from mlipdiv.models import load_run, read_records

    run = load_run(run_path, device)
    return [result_record(run, evaluate_split(run, read_records(data_path),
                                              Path(data_path).stem))]
