"""Numbers the report draws and states: per-cell errors with intervals that include training
variability (hierarchical bootstrap over replicates and test molecules), ratios between cells,
and the public-dataset table."""

from __future__ import annotations

from importlib import resources

import pandas as pd

from mlipdiv.metrics.cells import CELL_KEYS, Z95, cell_summary, metric_terms, point_key

__all__ = ["CELL_KEYS", "Z95", "cell_summary", "load_public_datasets", "metric_terms",
           "point_key"]


def load_public_datasets() -> pd.DataFrame:
    """The shipped table of public QM datasets (molecules, conformers, level of theory,
    elements, source), with conformers per molecule where the molecule count is known."""
    with resources.files("mlipdiv").joinpath("resources", "public_datasets.csv").open() as f:
        table = pd.read_csv(f)
    table["conformers_per_molecule"] = table.conformers / table.molecules
    return table
