"""Intervals that include training variability: a hierarchical bootstrap over replicates and
test molecules, for every cell of a design at once.

A cell (one training-set design point) is trained in R replicates (independent training draws
and seeds) and each trained replicate is scored on the test molecules. The input holds one
row per (cell, replicate, molecule) with the metric's per-molecule terms `num` and `den`
(as `stats.per_molecule_sums`): per (cell, replicate) the metric is sum(num) / sum(den) over
its molecules (its square root with `root`), and a cell's value is the mean of that over its
replicates.

One resample draws R replicate labels with replacement, and Poisson(1) weights per test
molecule (a Poisson bootstrap of molecules); each drawn slot's metric is
sum(w * num) / sum(w * den) of that replicate, and the resampled value is the mean over the
slots. The draws are joint across cells: one replicate draw and one set of molecule weights
(keyed by inchikey) serve every cell of a resample, because the cells of one replicate are
nested draws scored on the same test molecules. Comparisons between cells (a trend's slope)
are paired, so what is common to the cells cancels out of them.

Molecule weights are by default also shared by the slots of a resample (`molecules="shared"`):
the test split is one fixed set of molecules that every replicate is scored on, so its
sampling error does not average out over replicates, and weights drawn afresh per slot would
shrink that part of the interval by about 1/R. `molecules="per_slot"` draws them afresh for
every slot (replicates as if each had its own test set).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel

from mlipdiv.errors import MlipdivError
from mlipdiv.metrics.stats import is_root_metric

N_RESAMPLES = 1000
TERM_COLUMNS = ("cell", "replicate", "inchikey", "num", "den")
MIN_AXIS_VALUES = 2  # distinct axis values a slope needs
COLUMNS = ["cell", "value", "ci_low", "ci_high", "n_replicates", "n_molecules",
           "training_variability"]
MoleculeDraws = Literal["shared", "per_slot"]
# Float elements one chunk of resamples may hold (weights, or weighted sums): about 64 MB.
_CHUNK_ELEMENTS = 8_000_000


@dataclass(frozen=True)
class SlopeEstimate:
    """Least-squares slope of log(metric) on log(axis value) across cells, with its 95 %
    interval from joint hierarchical resamples."""

    slope: float
    ci_low: float
    ci_high: float
    n_cells: int
    n_replicates: int  # the fewest replicates any cell has
    n_resamples_used: int

    @property
    def direction(self) -> Literal["falls", "rises", "unsupported"]:
        """"falls" or "rises" when the whole interval is below or above 0, else
        "unsupported"."""
        if self.ci_high < 0:
            return "falls"
        if self.ci_low > 0:
            return "rises"
        return "unsupported"


@dataclass(frozen=True)
class _Terms:
    """The terms as dense arrays: molecules x (cell, replicate label)."""

    cells: list[str]
    labels: np.ndarray  # replicate labels with any scored molecule, sorted
    num: np.ndarray  # (n_molecules, n_cells * n_labels)
    den: np.ndarray
    n_molecules: np.ndarray  # per cell: distinct molecules with den > 0

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.cells), len(self.labels)


def hierarchical_bootstrap(terms: pd.DataFrame, *, root: bool = False,
                           n_resamples: int = N_RESAMPLES, seed: int = 0,
                           molecules: MoleculeDraws = "shared") -> pd.DataFrame:
    """One row per cell (in order of first appearance): `value` (mean over replicates of the
    per-replicate metric), the 2.5/97.5 percentiles `ci_low`/`ci_high` of joint resamples of
    replicates and test molecules, `n_replicates`, `n_molecules` (distinct molecules with
    den > 0) and `training_variability` (more than one replicate, so the interval includes
    it). A cell without any scored molecule has NaN value and interval."""
    table = _dense_terms(terms)
    values, n_replicates = _point_values(table, root)
    resampled = _resampled_values(table, root=root, n_resamples=n_resamples, seed=seed,
                                  molecules=molecules)
    rows = []
    for c, cell in enumerate(table.cells):
        column = resampled[:, c]
        column = column[np.isfinite(column)]
        low, high = np.percentile(column, [2.5, 97.5]) if len(column) else (np.nan, np.nan)
        low, high = cover(float(values[c]), float(low), float(high))
        rows.append(dict(cell=cell, value=float(values[c]), ci_low=low, ci_high=high,
                         n_replicates=int(n_replicates[c]),
                         n_molecules=int(table.n_molecules[c]),
                         training_variability=bool(n_replicates[c] > 1)))
    return pd.DataFrame(rows, columns=COLUMNS)


def trend_slope(terms: pd.DataFrame, axis: Mapping[str, float], *, root: bool = False,
                n_resamples: int = N_RESAMPLES, seed: int = 0,
                molecules: MoleculeDraws = "shared") -> SlopeEstimate:
    """Least-squares slope of log(metric) on log(axis[cell]) across the cells of `terms`
    (keys of `axis` without terms are ignored): the point estimate from the cells' values,
    the 95 % interval from the slope of each joint hierarchical resample (resamples where a
    cell is empty or not positive are dropped)."""
    table = _dense_terms(terms)
    missing = [cell for cell in table.cells if cell not in axis]
    if missing:
        raise MlipdivError(f"trend_slope: cell {missing[0]} has no axis value")
    x = np.array([float(axis[cell]) for cell in table.cells])
    if not np.all(np.isfinite(x) & (x > 0)):
        bad = table.cells[int(np.flatnonzero(~(np.isfinite(x) & (x > 0)))[0])]
        raise MlipdivError(f"trend_slope: cell {bad} has axis value {axis[bad]}, "
                           "a log-log slope needs positive values")
    if len(np.unique(x)) < MIN_AXIS_VALUES:
        raise MlipdivError(f"trend_slope: cells {', '.join(table.cells)} span "
                           f"{len(np.unique(x))} axis value(s), a slope needs at least 2")
    values, n_replicates = _point_values(table, root)
    if not np.all(np.isfinite(values) & (values > 0)):
        bad = table.cells[int(np.flatnonzero(~(np.isfinite(values) & (values > 0)))[0])]
        raise MlipdivError(f"trend_slope: cell {bad} has metric value "
                           f"{values[table.cells.index(bad)]}, a log-log slope needs "
                           "positive values")
    log_x = np.log(x) - np.log(x).mean()
    slope = float(log_x @ np.log(values) / (log_x @ log_x))
    resampled = _resampled_values(table, root=root, n_resamples=n_resamples, seed=seed,
                                  molecules=molecules)
    usable = np.all(np.isfinite(resampled) & (resampled > 0), axis=1)
    with np.errstate(divide="ignore"):
        slopes = np.log(resampled[usable]) @ log_x / (log_x @ log_x)
    low, high = np.percentile(slopes, [2.5, 97.5]) if len(slopes) else (np.nan, np.nan)
    low, high = cover(slope, float(low), float(high))
    return SlopeEstimate(slope=slope, ci_low=low, ci_high=high, n_cells=len(table.cells),
                         n_replicates=int(n_replicates.min()),
                         n_resamples_used=int(usable.sum()))


def cover(value: float, low: float, high: float) -> tuple[float, float]:
    """The interval widened to include the point estimate. A percentile interval of a skewed
    resampled statistic (a ratio, its square root, a mean over few replicates, a log) can
    lie wholly on one side of the estimate it belongs to; an interval that excludes its own
    estimate cannot be stated, so the short side is stretched to the estimate."""
    if not np.isfinite(value) or not np.isfinite(low):
        return low, high
    return min(low, value), max(high, value)


def _dense_terms(terms: pd.DataFrame) -> _Terms:
    """Validated terms as molecules x (cell, replicate) arrays; rows with den == 0 dropped,
    duplicate (cell, replicate, inchikey) rows summed."""
    missing = [c for c in TERM_COLUMNS if c not in terms.columns]
    if missing:
        raise MlipdivError(f"hierarchical terms: missing column(s) {', '.join(missing)}")
    if terms.empty:
        raise MlipdivError("hierarchical terms: no rows")
    num = terms["num"].to_numpy(dtype=np.float64)
    den = terms["den"].to_numpy(dtype=np.float64)
    bad = ~(np.isfinite(num) & np.isfinite(den) & (den >= 0))
    if bad.any():
        row = terms.iloc[int(np.flatnonzero(bad)[0])]
        raise MlipdivError(f"hierarchical terms: cell {row['cell']} replicate "
                           f"{row['replicate']} molecule {row['inchikey']} has num {row['num']}"
                           f", den {row['den']} (need finite values and den >= 0)")
    cell_codes, cells = pd.factorize(terms["cell"].astype(str), sort=False)
    scored = den > 0
    labels = np.unique(terms["replicate"].to_numpy()[scored])
    rep_codes = np.searchsorted(labels, terms["replicate"].to_numpy()[scored])
    mol_codes, _ = pd.factorize(terms["inchikey"].astype(str).to_numpy()[scored], sort=True)
    n_cells, n_labels, n_mol = len(cells), len(labels), int(mol_codes.max(initial=-1)) + 1
    cell_codes = cell_codes[scored]
    flat = (mol_codes * n_cells + cell_codes) * n_labels + rep_codes
    size = n_mol * n_cells * n_labels
    dense_num = np.bincount(flat, weights=num[scored], minlength=size)
    dense_den = np.bincount(flat, weights=den[scored], minlength=size)
    seen = np.zeros((n_cells, n_mol), dtype=bool)
    seen[cell_codes, mol_codes] = True
    return _Terms(cells=[str(c) for c in cells], labels=labels,
                  num=dense_num.reshape(n_mol, n_cells * n_labels),
                  den=dense_den.reshape(n_mol, n_cells * n_labels),
                  n_molecules=seen.sum(axis=1))


def _slot_metrics(num: np.ndarray, den: np.ndarray, root: bool) -> np.ndarray:
    """sum num / sum den (sqrt with `root`) elementwise; NaN where den is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        metric = np.where(den > 0, num / den, np.nan)
    return np.sqrt(metric) if root else metric


def _mean_valid(metric: np.ndarray, axis: int) -> np.ndarray:
    """Mean over the finite entries along `axis`; NaN where there are none."""
    valid = np.isfinite(metric)
    count = valid.sum(axis=axis)
    total = np.where(valid, metric, 0.0).sum(axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _point_values(table: _Terms, root: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: mean over replicates of the per-replicate metric, and the replicate count."""
    n_cells, n_labels = table.shape
    metric = _slot_metrics(table.num.sum(axis=0), table.den.sum(axis=0), root)
    metric = metric.reshape(n_cells, n_labels)
    return _mean_valid(metric, axis=1), np.isfinite(metric).sum(axis=1)


def _resampled_values(table: _Terms, *, root: bool, n_resamples: int, seed: int,
                      molecules: MoleculeDraws) -> np.ndarray:
    """(n_resamples, n_cells): each cell's value in joint hierarchical resamples. Every
    resample draws n_labels replicate labels with replacement and Poisson(1) molecule
    weights (one set for all slots, or one per slot), both shared by all cells; a slot whose
    replicate has zero weighted den in a cell is skipped there, a cell with no valid slot is
    NaN."""
    if n_resamples < 1:
        raise MlipdivError(f"n_resamples {n_resamples}: must be at least 1")
    if molecules not in ("shared", "per_slot"):
        raise MlipdivError(f"molecules {molecules!r}: must be 'shared' or 'per_slot'")
    n_cells, n_labels = table.shape
    n_mol = table.num.shape[0]
    out = np.full((n_resamples, n_cells), np.nan)
    if n_labels == 0:
        return out
    n_slots = n_labels
    n_weight_sets = n_slots if molecules == "per_slot" else 1
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_labels, size=(n_resamples, n_slots))
    per_resample = n_weight_sets * max(n_mol, 2 * n_cells * n_labels)
    chunk = max(1, _CHUNK_ELEMENTS // per_resample)
    set_of_slot = np.arange(n_slots) if molecules == "per_slot" else np.zeros(n_slots, int)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        weights = rng.poisson(1.0, size=(stop - start, n_weight_sets, n_mol)).astype(np.float64)
        shape = (stop - start, n_weight_sets, n_cells, n_labels)
        num = (weights @ table.num).reshape(shape)
        den = (weights @ table.den).reshape(shape)
        # each slot's weighted sums: [resample, slot, cell] for the slot's drawn replicate
        rows = np.arange(stop - start)[:, None]
        picked = draws[start:stop]
        slot_num = num[rows, set_of_slot[None, :], :, picked]
        slot_den = den[rows, set_of_slot[None, :], :, picked]
        out[start:stop] = _mean_valid(_slot_metrics(slot_num, slot_den, root), axis=1)
    return out


class DesignValue(BaseModel):
    """One compared design: its weighted error over replicates with the 95 % interval, and
    each split's error."""

    label: str
    value: float
    ci_low: float
    ci_high: float
    n_replicates: int
    per_split: dict[str, float]


class DesignDifference(BaseModel):
    """The reference design's weighted error minus another's (negative: the reference is
    better), paired by replicate, with its 95 % interval."""

    versus: str
    value: float
    ci_low: float
    ci_high: float


class DesignComparison(BaseModel):
    """Weighted held-out errors of several designs and their paired differences."""

    reference: str
    metric: str
    weights: dict[str, float]
    designs: list[DesignValue]
    differences: list[DesignDifference]


def compare_designs(terms: pd.DataFrame, weights: Mapping[str, float], metric: str, *,
                    reference: str, n_resamples: int = N_RESAMPLES,
                    seed: int = 0) -> DesignComparison:
    """Weighted error sum_s w_s * metric_s of each design (column `design`) and the
    reference's paired differences to the others. `terms` has columns design, replicate,
    split, inchikey, num_<metric>, den_<metric>. One joint resample serves every design and
    split (replicate draws, and molecule weights keyed by split and molecule), so the
    differences are paired."""
    weighted = {s: w for s, w in weights.items() if w > 0}
    rows = terms[terms.split.isin(list(weighted))]
    if rows.empty:
        raise MlipdivError(f"compare designs: no terms for the weighted splits "
                           f"{', '.join(weighted)}")
    table = _dense_terms(pd.DataFrame({
        "cell": rows.design.astype(str) + "|" + rows.split.astype(str),
        "replicate": rows.replicate, "inchikey": rows.split + "|" + rows.inchikey,
        "num": rows[f"num_{metric}"], "den": rows[f"den_{metric}"]}))
    root = is_root_metric(metric)
    point, n_replicates = _point_values(table, root)
    resampled = _resampled_values(table, root=root, n_resamples=n_resamples, seed=seed,
                                  molecules="shared")
    column = {cell: i for i, cell in enumerate(table.cells)}
    designs = list(dict.fromkeys(rows.design))
    if reference not in designs:
        raise MlipdivError(f"compare designs: no terms for the reference design {reference}")

    def combine(values: np.ndarray, design: str) -> np.ndarray:
        parts = [w * values[..., column[f"{design}|{s}"]] for s, w in weighted.items()
                 if f"{design}|{s}" in column]
        if len(parts) < len(weighted):
            raise MlipdivError(f"compare designs: design {design} lacks a weighted split")
        return np.sum(parts, axis=0)

    values, samples = {}, {}
    for design in designs:
        values[design] = float(combine(point, design))
        samples[design] = combine(resampled, design)
    out = []
    for design in designs:
        low, high = _interval(values[design], samples[design])
        out.append(DesignValue(
            label=design, value=values[design], ci_low=low, ci_high=high,
            n_replicates=int(min(n_replicates[column[f"{design}|{s}"]] for s in weighted)),
            per_split={s: float(point[column[f"{design}|{s}"]]) for s in weighted}))
    differences = []
    for design in designs:
        if design == reference:
            continue
        value = values[reference] - values[design]
        low, high = _interval(value, samples[reference] - samples[design])
        differences.append(DesignDifference(versus=design, value=value, ci_low=low,
                                            ci_high=high))
    return DesignComparison(reference=reference, metric=metric, weights=dict(weighted),
                            designs=out, differences=differences)


def _interval(value: float, samples: np.ndarray) -> tuple[float, float]:
    """2.5/97.5 percentiles of the finite samples, widened to hold `value`."""
    samples = samples[np.isfinite(samples)]
    if not len(samples):
        return float("nan"), float("nan")
    low, high = np.percentile(samples, [2.5, 97.5])
    return cover(value, float(low), float(high))
