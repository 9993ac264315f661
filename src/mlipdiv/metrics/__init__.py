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
    METRIC_DECLARATIONS,
    METRICS,
    Estimate,
    Metric,
    MoleculeErrors,
    cluster_bootstrap,
    metric_label,
    molecule_spearman,
    split_estimates,
)

__all__ = [
    "METRIC_DECLARATIONS",
    "METRICS",
    "Metric",
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
    "metric_label",
    "molecule_spearman",
    "result_record",
    "split_estimates",
    "trend_slope",
]
