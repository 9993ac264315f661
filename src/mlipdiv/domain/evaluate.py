"""How well each trust score separates good from bad predictions, per test split: Spearman of
score with error, AUROC for high-error conformers, AUROC for OOD vs in-distribution test data,
error-retention curves, and the committee calibration on each split.

Written to `RUN/domain/evaluation.json` (pydantic `DomainEvaluation`) and the curves also to
`RUN/domain/retention_curves.csv` (split, score, quantity, fraction, mean_error).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from mlipdiv.atomic import write_text_atomic
from mlipdiv.data.store import MoleculeRecord
from mlipdiv.design import load_splits
from mlipdiv.design.kinds import scored_sets
from mlipdiv.domain.model import (
    Domain,
    conformer_errors,
    domain_directory,
    load_domain,
    run_labels,
    sigma_and_errors,
)
from mlipdiv.domain.reference import RecordScores
from mlipdiv.domain.stats import (
    auroc,
    error_retention_curve,
    miscalibration_area,
    retention_area,
    spearman,
)
from mlipdiv.errors import MlipdivError
from mlipdiv.metrics.evaluate import training_molecules
from mlipdiv.models import load_run

EVALUATION_FILE = "evaluation.json"
CURVES_FILE = "retention_curves.csv"
QUANTITIES = ("energy", "forces")  # errors in meV/atom and meV/A
ORACLE = "oracle"  # the curve obtained by ranking on the error itself
IN_DISTRIBUTION_ORDER = ("cf", "st")


class ScoreEvaluation(BaseModel):
    """One score on one split."""

    split: str
    score: str
    n_conformers: int
    mean_score: float | None
    in_domain_fraction: float
    spearman_energy: float | None
    spearman_forces: float | None
    auroc_high_error_energy: float | None
    auroc_high_error_forces: float | None
    auroc_vs_in_distribution: float | None
    retention_area_energy: float | None
    retention_area_forces: float | None


class SplitSummary(BaseModel):
    """One split: sizes, mean errors, the in-domain fraction by the primary score, and the
    committee calibration (miscalibration area with raw and recalibrated sigma)."""

    split: str
    n_conformers: int
    n_predicted: int
    mean_error_energy_mev_per_atom: float | None
    mean_error_forces_mev_per_angstrom: float | None
    high_error_fraction_forces: float | None
    in_domain_fraction: float
    miscalibration_area: dict[str, dict[str, float]]


class RetentionCurve(BaseModel):
    split: str
    score: str
    quantity: str
    fraction: list[float]
    mean_error: list[float]


class DomainEvaluation(BaseModel):
    run: str
    splits_path: str
    primary: str
    coverage: float
    thresholds: dict[str, float]
    high_error_threshold: dict[str, float]
    in_distribution_split: str | None
    splits: list[SplitSummary]
    scores: list[ScoreEvaluation]
    curves: list[RetentionCurve]


class SplitData:
    """A split's scores and errors as flat per-conformer arrays."""

    def __init__(self, name: str, records: Sequence[MoleculeRecord],
                 scored: Sequence[RecordScores], domain: Domain):
        self.name = name
        self.records, self.scored = list(records), list(scored)
        self.scores = {n: np.concatenate([s.scores[n] for s in scored])
                       for n in domain.score_names}
        errors = [conformer_errors(r, s.member_energy, s.member_forces)
                  for r, s in zip(records, scored, strict=True)]
        self.errors = {q: np.concatenate([e[q] for e in errors]) for q in QUANTITIES}
        self.predicted = np.isfinite(self.errors["energy"]) & np.isfinite(self.errors["forces"])
        self.in_domain = np.concatenate([domain.in_domain(s) for s in scored])

    @property
    def n(self) -> int:
        return len(self.predicted)


def evaluate_scores(domain: Domain, splits: dict[str, SplitData],
                    high_error: dict[str, float] | None = None,
                    run: str = "", splits_path: str = "") -> DomainEvaluation:
    """Judge every score on every split (the statistics behind `mlipdiv domain evaluate`)."""
    high_error = high_error or domain.validation_error_p90
    reference = next((splits[n] for n in IN_DISTRIBUTION_ORDER if n in splits), None)
    rows, curves, summaries = [], [], []
    for data in splits.values():
        summaries.append(_split_summary(domain, data, high_error))
        for name in (*domain.score_names, ORACLE):
            row, split_curves = _score_row(domain, data, name, high_error, reference)
            curves += split_curves
            if row is not None:
                rows.append(row)
    return DomainEvaluation(
        run=run, splits_path=splits_path, primary=domain.primary, coverage=domain.coverage,
        thresholds=domain.thresholds, high_error_threshold=high_error,
        in_distribution_split=None if reference is None else reference.name,
        splits=summaries, scores=rows, curves=curves)


def _score_row(domain: Domain, data: SplitData, name: str, high_error: dict[str, float],
               reference: SplitData | None) -> tuple[ScoreEvaluation | None, list]:
    keep = data.predicted
    curves, values = [], {}
    for quantity in QUANTITIES:
        errors = data.errors[quantity][keep]
        score = errors if name == ORACLE else data.scores[name][keep]
        if len(errors) == 0:
            values[quantity] = (None, None, None)
            continue
        fraction, mean_error = error_retention_curve(score, errors)
        curves.append(RetentionCurve(split=data.name, score=name, quantity=quantity,
                                     fraction=fraction.tolist(), mean_error=mean_error.tolist()))
        values[quantity] = (spearman(score, errors), auroc(score, errors > high_error[quantity]),
                            retention_area(fraction, mean_error))
    if name == ORACLE:
        return None, curves
    scores = data.scores[name]
    versus = None
    if reference is not None and reference is not data:
        versus = auroc(np.concatenate([reference.scores[name], scores]),
                       np.r_[np.zeros(reference.n, bool), np.ones(data.n, bool)])
    finite = scores[np.isfinite(scores)]
    row = ScoreEvaluation(
        split=data.name, score=name, n_conformers=data.n,
        mean_score=float(finite.mean()) if len(finite) else None,
        in_domain_fraction=float((scores <= domain.thresholds[name]).mean()),
        spearman_energy=values["energy"][0], spearman_forces=values["forces"][0],
        auroc_high_error_energy=values["energy"][1], auroc_high_error_forces=values["forces"][1],
        auroc_vs_in_distribution=versus,
        retention_area_energy=values["energy"][2], retention_area_forces=values["forces"][2])
    return row, curves


def _split_summary(domain: Domain, data: SplitData, high_error: dict[str, float]) -> SplitSummary:
    keep = data.predicted
    areas = {}
    for key, (sigma, errors) in sigma_and_errors(data.records, data.scored).items():
        if key in domain.calibration:
            scale = domain.calibration[key].scale
            areas[key] = {"before": miscalibration_area(sigma, errors),
                          "after": miscalibration_area(scale * sigma, errors)}

    def mean(values: np.ndarray) -> float | None:
        return float(values.mean()) if len(values) else None

    forces = data.errors["forces"][keep]
    return SplitSummary(
        split=data.name, n_conformers=data.n, n_predicted=int(keep.sum()),
        mean_error_energy_mev_per_atom=mean(data.errors["energy"][keep]),
        mean_error_forces_mev_per_angstrom=mean(forces),
        high_error_fraction_forces=mean(forces > high_error["forces"]),
        in_domain_fraction=float(data.in_domain.mean()), miscalibration_area=areas)


def evaluate_run(run_path: str | os.PathLike, splits_path: str | os.PathLike,
                 high_error: dict[str, float] | None = None,
                 out: str | os.PathLike | None = None) -> DomainEvaluation:
    """Evaluate a run's fitted domain on every test split of SPLITS; writes
    evaluation.json (to `out`, default RUN/domain/) and retention_curves.csv beside it."""

    domain = load_domain(run_path)
    run = load_run(run_path)
    splits = load_splits(splits_path)
    if not splits.test_sets:
        raise MlipdivError(f"{splits_path}: no test splits to evaluate on")
    data = {}
    trained_on = training_molecules(run)
    # in distribution = unseen conformers of the run's own training molecules
    labels = run_labels(run)  # scored against the level of theory the run trained on
    for name, split_set, _ in scored_sets(splits, trained_on):
        records = list(split_set.records(labels))
        if not records:
            continue
        data[name] = SplitData(name, records, domain.score(run, records), domain)
    evaluation = evaluate_scores(domain, data, high_error, str(run_path), str(splits_path))
    write_evaluation(evaluation, Path(out) if out else
                     domain_directory(run_path) / EVALUATION_FILE)
    return evaluation


def write_evaluation(evaluation: DomainEvaluation, path: Path) -> None:
    """evaluation.json at `path` and retention_curves.csv beside it, each atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, evaluation.model_dump_json(indent=1))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["split", "score", "quantity", "fraction", "mean_error"])
    for curve in evaluation.curves:
        for fraction, error in zip(curve.fraction, curve.mean_error, strict=True):
            writer.writerow([curve.split, curve.score, curve.quantity, f"{fraction:.4f}",
                             f"{error:.6g}"])
    write_text_atomic(path.with_name(CURVES_FILE), buffer.getvalue())
