"""Generalisation metrics per test split, with cluster-bootstrap (over molecules) 95 % CIs."""

from mlipdiv.metrics.evaluate import (
    ResultRecord,
    SplitMetrics,
    evaluate_file,
    evaluate_run,
    evaluate_split,
    result_record,
)
from mlipdiv.metrics.hierarchical import SlopeEstimate, hierarchical_bootstrap, trend_slope
from mlipdiv.metrics.stats import (
    METRICS,
    Estimate,
    MoleculeErrors,
    cluster_bootstrap,
    molecule_spearman,
    split_estimates,
)

__all__ = [
    "METRICS",
    "Estimate",
    "MoleculeErrors",
    "ResultRecord",
    "SlopeEstimate",
    "SplitMetrics",
    "cluster_bootstrap",
    "evaluate_file",
    "evaluate_run",
    "evaluate_split",
    "hierarchical_bootstrap",
    "molecule_spearman",
    "result_record",
    "split_estimates",
    "trend_slope",
]
