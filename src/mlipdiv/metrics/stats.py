"""Error statistics of one test split, with 95 % intervals by a cluster bootstrap.

Conformers of one molecule are not independent, so the bootstrap resamples whole molecules
with replacement. Every metric here is a ratio of per-molecule sums, value = sum(num) /
sum(den) (then a square root for RMSEs), so a resample is a weighted sum with the molecules'
multiplicities as weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr

N_RESAMPLES = 1000
MIN_CONFORMERS_RELATIVE = 2  # relative energies need two conformers
MIN_POINTS_SPEARMAN = 3  # a rank correlation of two points is only its sign


@dataclass(frozen=True)
class Metric:
    """One error metric, declared once: its result column (`name`, plus `name_ci_low` /
    `name_ci_high`), unit, the label figures and tables use, and whether it is the square
    root of its summed terms (RMSEs)."""

    name: str
    unit: str
    label: str
    summary: str = ""  # a short column header for terminal tables; "" = not shown there
    error: bool = True  # an error (lower is better): one a surface fit and advice can use

    @property
    def root(self) -> bool:
        return is_root_metric(self.name)

    @property
    def columns(self) -> tuple[str, str, str]:
        """The value and its 95 % interval as result columns."""
        return self.name, f"{self.name}_ci_low", f"{self.name}_ci_high"


# every metric, in the order the records list them
METRIC_DECLARATIONS = (
    Metric("energy_mae_mev_per_atom", "meV/atom", "energy MAE (meV/atom)", "E MAE meV/atom"),
    Metric("energy_rmse_mev_per_atom", "meV/atom", "energy RMSE (meV/atom)"),
    Metric("energy_mae_mev", "meV", "energy MAE (meV/molecule)"),
    Metric("energy_rmse_mev", "meV", "energy RMSE (meV/molecule)"),
    Metric("forces_mae_mev_per_angstrom", "meV/A", "force MAE (meV/Å)", "F MAE meV/A"),
    Metric("forces_rmse_mev_per_angstrom", "meV/A", "force RMSE (meV/Å)"),
    Metric("conformational_energy_mae_mev", "meV", "conformational energy MAE (meV)",
           "conf. E MAE meV"),
    Metric("spearman_mean", "", "mean Spearman ρ of conformer energies", "Spearman",
           error=False),
)
METRICS = tuple(metric.name for metric in METRIC_DECLARATIONS)
METRIC_BY_NAME = {metric.name: metric for metric in METRIC_DECLARATIONS}
# the metrics an error surface is fitted to (`advice.metric`): errors, not correlations
ERROR_METRICS = tuple(metric.name for metric in METRIC_DECLARATIONS if metric.error)


def metric_label(name: str) -> str:
    """A metric as figures and tables name it ("force MAE (meV/Å)"); other names as given."""
    return METRIC_BY_NAME[name].label if name in METRIC_BY_NAME else name


@dataclass(frozen=True)
class MoleculeErrors:
    """Reference and predicted energies (eV, n_conf) and forces (eV/A) of one molecule."""

    n_atoms: int
    reference_energy: np.ndarray
    predicted_energy: np.ndarray
    reference_forces: np.ndarray
    predicted_forces: np.ndarray


@dataclass(frozen=True)
class Estimate:
    value: float | None
    ci_low: float | None
    ci_high: float | None


def cluster_bootstrap(num: np.ndarray, den: np.ndarray, *, root: bool = False,
                      n_resamples: int = N_RESAMPLES, seed: int = 0) -> Estimate:
    """sum(num)/sum(den) over molecules (sqrt of it with `root`), and the 2.5/97.5
    percentiles of the same over molecules resampled with replacement."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    if den.sum() <= 0:
        return Estimate(None, None, None)
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(len(num), np.full(len(num), 1 / len(num)), size=n_resamples)
    resampled_den = weights @ den
    keep = resampled_den > 0
    resampled = (weights @ num)[keep] / resampled_den[keep]
    value = num.sum() / den.sum()
    if root:
        value, resampled = np.sqrt(value), np.sqrt(resampled)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return Estimate(float(value), float(low), float(high))


def per_molecule_sums(molecules: Sequence[MoleculeErrors]) -> dict[str, tuple[np.ndarray, ...]]:
    """For each metric, (num, den, root) arrays over molecules, errors in meV and meV/A."""
    rows: dict[str, list[tuple[float, float]]] = {k: [] for k in METRICS}
    for mol in molecules:
        energy = 1000 * (mol.predicted_energy - mol.reference_energy)
        forces = 1000 * (mol.predicted_forces - mol.reference_forces).reshape(-1)
        n_conf = len(energy)
        rows["energy_mae_mev_per_atom"].append((np.abs(energy).sum() / mol.n_atoms, n_conf))
        rows["energy_rmse_mev_per_atom"].append((((energy / mol.n_atoms) ** 2).sum(), n_conf))
        rows["energy_mae_mev"].append((np.abs(energy).sum(), n_conf))
        rows["energy_rmse_mev"].append(((energy ** 2).sum(), n_conf))
        rows["forces_mae_mev_per_angstrom"].append((np.abs(forces).sum(), forces.size))
        rows["forces_rmse_mev_per_angstrom"].append(((forces ** 2).sum(), forces.size))
        relative = energy - energy.mean()
        rows["conformational_energy_mae_mev"].append(
            (np.abs(relative).sum(), n_conf) if n_conf >= MIN_CONFORMERS_RELATIVE else (0, 0))
        rho = molecule_spearman(mol.reference_energy, mol.predicted_energy)
        rows["spearman_mean"].append((0, 0) if rho is None else (rho, 1))
    return {name: (np.array([r[0] for r in values]), np.array([r[1] for r in values]),
                   is_root_metric(name)) for name, values in rows.items()}


def is_root_metric(metric: str) -> bool:
    """RMSEs are the square root of their summed terms (sum num / sum den)."""
    return "rmse" in metric


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman rank correlation of paired values; None when undefined (fewer than three
    pairs, or constant x or y)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < MIN_POINTS_SPEARMAN or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def molecule_spearman(reference: np.ndarray, predicted: np.ndarray) -> float | None:
    """Spearman rank correlation of one molecule's reference and predicted conformer
    energies; None when undefined (see `spearman`)."""
    return spearman(reference, predicted)


def split_estimates(molecules: Sequence[MoleculeErrors], *, n_resamples: int = N_RESAMPLES,
                    seed: int = 0) -> dict[str, Estimate]:
    """Every metric of a split with its cluster-bootstrap 95 % interval."""
    return {name: cluster_bootstrap(num, den, root=root, n_resamples=n_resamples, seed=seed)
            for name, (num, den, root) in per_molecule_sums(molecules).items()}
