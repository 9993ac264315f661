"""Statistics that judge a trust score: thresholds, AUROC, rank correlation, error-retention
curves, and the scalar recalibration of committee standard deviations.

Every score follows one convention: higher means less trusted (further from the training data).
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score

from mlipdiv.errors import FieldError, MlipdivError
from mlipdiv.metrics.stats import spearman as _spearman

RETENTION_POINTS = 51  # fractions 0, 0.02, ..., 1 in the stored error-retention curves


def threshold_at_coverage(scores: np.ndarray, coverage: float = 0.95) -> float:
    """The score at or below which a fraction `coverage` of `scores` lies (in-domain means
    score <= threshold). Non-finite scores count as out of domain."""
    if not 0.0 < coverage <= 1.0:
        raise FieldError("coverage", coverage, "must be in (0, 1]")
    values = np.sort(np.asarray(scores, dtype=float))
    if len(values) == 0:
        raise MlipdivError("no validation conformers to choose a threshold from")
    # The smallest order statistic that keeps at least `coverage` of the values.
    index = int(np.ceil(coverage * len(values))) - 1
    return float(values[max(index, 0)])


def coverage_sampling_error(coverage: float, n: int) -> float:
    """Binomial standard error of an observed in-domain fraction over n conformers."""
    return float(np.sqrt(coverage * (1.0 - coverage) / n))


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of `scores` for detecting the `positive` (True) items; ties
    count one half. None when only one class is present (the AUROC is undefined)."""
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return None
    return float(roc_auc_score(positive, _finite(scores)))


def spearman(scores: np.ndarray, errors: np.ndarray) -> float | None:
    """Spearman rank correlation of score with error; None when undefined (fewer than three
    items, or either constant). Unjudgeable (+inf/NaN) scores rank as the least trusted."""
    return _spearman(_finite(scores), errors)


def error_retention_curve(
    scores: np.ndarray, errors: np.ndarray, points: int = RETENTION_POINTS
) -> tuple[np.ndarray, np.ndarray]:
    """Mean error of the kept predictions when only the most trusted fraction is kept.

    Returns (fractions, mean_errors) on `points` fractions from 0 to 1; at fraction 0 the
    curve takes the error of the single most trusted prediction. Lower is better; sorting by
    the error itself gives the oracle curve."""
    errors = np.asarray(errors, dtype=float)
    order = np.argsort(_finite(scores), kind="stable")
    running_mean = np.cumsum(errors[order]) / np.arange(1, len(errors) + 1)
    fractions = np.linspace(0.0, 1.0, points)
    kept = np.clip(np.ceil(fractions * len(errors)).astype(int), 1, len(errors))
    return fractions, running_mean[kept - 1]


def retention_area(fractions: np.ndarray, mean_errors: np.ndarray) -> float:
    """Area under an error-retention curve (trapezoid rule; lower is better)."""
    return float(np.trapezoid(mean_errors, fractions))


def sigma_scale(sigma: np.ndarray, errors: np.ndarray) -> float:
    """The factor s for which s*sigma has the smallest miscalibration area against the
    observed (signed or absolute) `errors`, as uncertainty-toolbox's recalibration ratio.

    Searched on a logarithmic grid around the robust estimate median(|error|/sigma)/0.6745;
    the area is a step function of s, so a grid is exact up to its spacing."""
    z = _standardised_errors(sigma, errors)
    usable = z[np.isfinite(z)]
    if len(usable) == 0:
        raise MlipdivError("committee standard deviations are all zero: members agree exactly")
    centre = max(float(np.median(usable)) / stats.norm.ppf(0.75), 1e-12)
    candidates = centre * np.exp(np.linspace(-4.0, 4.0, 801))
    z_sorted = np.sort(z)
    areas = [_area_from_sorted(z_sorted / s) for s in candidates]
    return float(candidates[int(np.argmin(areas))])


def miscalibration_area(sigma: np.ndarray, errors: np.ndarray) -> float:
    """Area between the expected and observed coverage of central Gaussian intervals
    (as in Tran et al. 2020 / uncertainty-toolbox); 0 is perfectly calibrated, 0.5 is the
    worst."""
    return _area_from_sorted(np.sort(_standardised_errors(sigma, errors)))


EXPECTED_COVERAGE = np.linspace(0.01, 0.99, 99)
HALF_WIDTHS = stats.norm.ppf(0.5 + EXPECTED_COVERAGE / 2.0)


def _standardised_errors(sigma: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """|error| / sigma, +inf where sigma is zero."""
    sigma, errors = np.ravel(sigma).astype(float), np.abs(np.ravel(errors).astype(float))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sigma > 0, errors / sigma, np.inf)


def _area_from_sorted(z_sorted: np.ndarray) -> float:
    observed = np.searchsorted(z_sorted, HALF_WIDTHS, side="right") / len(z_sorted)
    return float(np.trapezoid(np.abs(observed - EXPECTED_COVERAGE), EXPECTED_COVERAGE))


def _finite(scores: np.ndarray) -> np.ndarray:
    """Scores with +inf/NaN replaced by a value above every finite score, so that items no
    reference can judge rank as the least trusted."""
    scores = np.asarray(scores, dtype=float)
    bad = ~np.isfinite(scores)
    if not bad.any():
        return scores
    finite = scores[~bad]
    top = (finite.max() + 1.0) if len(finite) else 1.0
    return np.where(bad, top, scores)
