"""Per-cell errors with intervals that include training variability: the per-molecule terms
of a metric joined to their design points, and one row per design point with the mean over
replicates and its 95 % interval from the hierarchical bootstrap (replicates, then test
molecules). The report draws these and the study's learning-curve fit weights its points by
them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlipdiv.metrics.hierarchical import hierarchical_bootstrap
from mlipdiv.metrics.stats import is_root_metric

Z95 = 1.959963984540054
CELL_KEYS = ["experiment", "model", "selection", "split", "M", "C"]


def point_key(experiment: str, m: float, c: float) -> str:
    """One design point of an experiment (all its replicates): "fixed-budget|M=4|C=8"."""
    return f"{experiment}|M={m:g}|C={c:g}"


def metric_terms(results: pd.DataFrame, molecules: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The per-molecule terms of `metric` joined to their cells: columns model, selection,
    split, experiment, M, C, `cell` (the design point, replicates together), replicate,
    inchikey, num, den."""
    keys = ["cell", "model", "split"]
    cells = results[keys + ["experiment", "selection", "M", "C"]].drop_duplicates(keys)
    terms = molecules[keys + ["replicate", "inchikey", f"num_{metric}", f"den_{metric}"]]
    joined = terms.merge(cells, on=keys).rename(columns={f"num_{metric}": "num",
                                                         f"den_{metric}": "den"})
    joined["cell"] = [point_key(e, m, c) for e, m, c in zip(joined.experiment, joined.M,
                                                              joined.C, strict=True)]
    return joined


def cell_summary(results: pd.DataFrame, molecules: pd.DataFrame, metric: str,
                 seed: int = 0) -> pd.DataFrame:
    """One row per (experiment, model, selection, split, M, C): the mean of the metric over
    replicates and its 95 % interval from the hierarchical bootstrap (replicates, then test
    molecules; `training_variability` is False with one replicate), its log standard error
    (from the interval) and the number of test molecules scored."""
    terms = metric_terms(results, molecules, metric)
    rows = []
    for (model, selection, split), group in terms.groupby(["model", "selection", "split"]):
        summary = hierarchical_bootstrap(group[["cell", "replicate", "inchikey", "num", "den"]],
                                         root=is_root_metric(metric), seed=seed)
        points = group.drop_duplicates("cell").set_index("cell")
        for row in summary.itertuples():
            if not np.isfinite(row.value) or row.value <= 0:
                continue
            point = points.loc[row.cell]
            with np.errstate(divide="ignore", invalid="ignore"):
                se = (np.log(row.ci_high) - np.log(row.ci_low)) / (2 * Z95)
            rows.append(dict(experiment=point.experiment, model=model, selection=selection,
                             split=split, M=point.M, C=point.C, value=row.value,
                             log_value=float(np.log(row.value)), log_se=float(se),
                             ci_low=row.ci_low, ci_high=row.ci_high,
                             n_replicates=row.n_replicates, n_test_molecules=row.n_molecules,
                             training_variability=row.training_variability))
    return pd.DataFrame(rows, columns=CELL_KEYS + ["value", "log_value", "log_se", "ci_low",
                                                    "ci_high", "n_replicates",
                                                    "n_test_molecules", "training_variability"])
