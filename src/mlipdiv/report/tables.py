"""Numbers the report draws and states: per-cell errors with intervals, ratios between cells,
and the public-dataset table."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd

Z95 = 1.959963984540054
CELL_KEYS = ["experiment", "model", "selection", "split", "M", "C"]


def _row_log_se(results: pd.DataFrame, metric: str) -> pd.Series:
    """Standard error of log(metric) per row, from its bootstrap 95 % interval."""
    low, high = results.get(f"{metric}_ci_low"), results.get(f"{metric}_ci_high")
    if low is None or high is None:
        return pd.Series(np.nan, index=results.index)
    with np.errstate(divide="ignore", invalid="ignore"):
        se = (np.log(high.astype(float)) - np.log(low.astype(float))) / (2 * Z95)
    return se.where(np.isfinite(se))


def cell_summary(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (experiment, model, selection, split, M, C): the geometric mean of the
    metric over replicates, its log standard error (test-set bootstrap and replicate spread
    combined), a 95 % interval and the test split's molecule count."""
    table = results[CELL_KEYS + ["replicate", "n_molecules"]].copy()
    table["log_value"] = np.log(results[metric].astype(float))
    table["row_se"] = _row_log_se(results, metric)
    table = table[np.isfinite(table.log_value)]
    rows = []
    for key, group in table.groupby(CELL_KEYS, sort=True):
        n = len(group)
        spread = group.log_value.var(ddof=1) / n if n > 1 else 0.0
        bootstrap = float(np.nanmean(group.row_se ** 2)) / n if group.row_se.notna().any() else 0
        se = float(np.sqrt(spread + bootstrap))
        mean = float(group.log_value.mean())
        rows.append(dict(zip(CELL_KEYS, key, strict=True), value=float(np.exp(mean)),
                         log_value=mean, log_se=se, ci_low=float(np.exp(mean - Z95 * se)),
                         ci_high=float(np.exp(mean + Z95 * se)), n_replicates=n,
                         n_test_molecules=int(group.n_molecules.min())))
    return pd.DataFrame(rows, columns=CELL_KEYS + ["value", "log_value", "log_se", "ci_low",
                                                    "ci_high", "n_replicates",
                                                    "n_test_molecules"])


def ratio(first: pd.Series, second: pd.Series) -> tuple[float, float, float]:
    """Ratio of two cells' errors (rows of `cell_summary`) with its 95 % interval."""
    difference = first.log_value - second.log_value
    se = float(np.hypot(first.log_se, second.log_se))
    return (float(np.exp(difference)), float(np.exp(difference - Z95 * se)),
            float(np.exp(difference + Z95 * se)))


def load_public_datasets() -> pd.DataFrame:
    """The shipped table of public QM datasets (molecules, conformers, level of theory,
    elements, source), with conformers per molecule where the molecule count is known."""
    with resources.files("mlipdiv").joinpath("resources", "public_datasets.csv").open() as f:
        table = pd.read_csv(f)
    table["conformers_per_molecule"] = table.conformers / table.molecules
    return table
