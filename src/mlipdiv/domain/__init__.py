"""Applicability domain: per-prediction trust scores (committee spread, latent distance and
density, nearest training molecule, QUESTS entropy, unseen elements), thresholds chosen on
validation data, committee recalibration, evaluation on test/OOD splits, and a domain-aware
ASE calculator."""

from mlipdiv.domain.calculator import (
    DomainCalculator,
    DomainWarning,
    OutOfDomainError,
    domain_calculator,
)
from mlipdiv.domain.evaluate import (
    DomainEvaluation,
    ScoreEvaluation,
    SplitData,
    evaluate_run,
    evaluate_scores,
    write_evaluation,
)
from mlipdiv.domain.model import (
    Calibration,
    Domain,
    fit_domain,
    fit_run,
    load_domain,
    score_file,
    training_data,
)
from mlipdiv.domain.reference import SCORE_DESCRIPTIONS, DomainReference, RecordScores
from mlipdiv.domain.stats import (
    auroc,
    error_retention_curve,
    miscalibration_area,
    retention_area,
    sigma_scale,
    spearman,
    threshold_at_coverage,
)

__all__ = [
    "SCORE_DESCRIPTIONS",
    "Calibration",
    "Domain",
    "DomainCalculator",
    "DomainEvaluation",
    "DomainReference",
    "DomainWarning",
    "OutOfDomainError",
    "RecordScores",
    "ScoreEvaluation",
    "SplitData",
    "auroc",
    "domain_calculator",
    "error_retention_curve",
    "evaluate_run",
    "evaluate_scores",
    "fit_domain",
    "fit_run",
    "load_domain",
    "miscalibration_area",
    "retention_area",
    "score_file",
    "sigma_scale",
    "spearman",
    "threshold_at_coverage",
    "training_data",
    "write_evaluation",
]
