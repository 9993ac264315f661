"""Learning curves over molecules and conformers: each split's error as a function of the
number of training molecules M and the conformational diversity per molecule K.

K is the study's *effective* conformers per molecule (near-copies within 0.05 Å heavy-atom RMSD
merged, `div_effective_conformers_per_molecule`) when the results hold it, else the nominal C.
Candidate forms (sums of power laws, N_eff = M·K)::

    molecules+conformers   E = a·M^-alpha + b·K^-beta
    molecules+total        E = a·M^-alpha + b·N_eff^-gamma
    molecules-only         E = a·M^-alpha
    conformers-only        E = b·K^-beta
    total-only (null)      E = b·N_eff^-gamma

No error floor E_inf: over the one to two decades of data a study measures, a floor is not
identifiable and sat on its bound (0) in earlier fits. Exponents live in EXPONENT_BOUNDS
(0.05-2): published MLIP learning curves fall with exponents of about 0.1-1 in the training-set
size; a fit whose exponent sits on a bound, or one of whose terms vanishes over the measured
cells, is rejected, never reported as a finding.

The data points are the design points' mean errors over replicates, in log space, each with its
own standard error from the hierarchical bootstrap (replicates, then test molecules), so every
replicate and each cell's uncertainty weight the fit. What the cells scatter beyond their own
errors is a between-cell variance tau² estimated by the Paule-Mandel rule (the weighted residual
sum of squares equals its degrees of freedom); it enters the weights and the prediction
intervals. Parameter uncertainty is the Laplace approximation of the weighted fit (Gaussian in
the log-amplitudes and exponents, truncated to the bounds), drawn as samples; intervals are
percentiles of those samples and are never widened.

The form is chosen by leave-one-cell-out cross-validation (a cell = one (M, C)): each held-out
cell is predicted by a fit to the others, with a 95 % predictive interval (parameter samples
plus tau and the cell's own error); the held-out RMSE of log error picks the form and the
fraction of held-out cells inside their interval is the fit's measured calibration. The cells
of every experiment are fitted together (one surface over M and K for all of them).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel
from scipy.optimize import brentq, least_squares

from mlipdiv.atomic import write_text_atomic
from mlipdiv.errors import MlipdivError
from mlipdiv.files import read_json, reading
from mlipdiv.study.layout import RESULTS_REMEDY

EXPONENT_BOUNDS = (0.05, 2.0)
BOUND_TOLERANCE = 0.01  # an exponent this close to a bound is "on its bound"
VANISHING_SHARE = 0.01  # a term below this share of the error at every cell has vanished
LOG_AMPLITUDE_BOUNDS = (-50.0, 50.0)
MIN_LOG_SE = 1e-3  # a cell's log standard error is never taken as exactly 0
MAX_TAU = 5.0  # between-cell scatter in log units (a factor e^5) that the search may reach
N_SAMPLES = 400
N_CV_SAMPLES = 200
EFFECTIVE_COLUMN = "div_effective_conformers_per_molecule"
EFFECTIVE_AXIS = "effective conformers per molecule (near-copies within 0.05 Å merged)"
NOMINAL_AXIS = "nominal conformers per molecule (the results hold no effective count)"


@dataclass(frozen=True)
class SurfaceForm:
    """One candidate learning curve: a sum of power-law terms, each (amplitude, exponent,
    variable) with the variable one of "M", "K" or "N" (= M·K)."""

    name: str
    formula: str
    terms: tuple[tuple[str, str, str], ...]

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(name for amplitude, exponent, _ in self.terms
                     for name in (amplitude, exponent))

    @property
    def exponents(self) -> tuple[str, ...]:
        return tuple(exponent for _, exponent, _ in self.terms)

    def term_values(self, theta: np.ndarray, m: np.ndarray, k: np.ndarray) -> list[np.ndarray]:
        """Each term's value for natural parameters `theta` (amplitudes, not their logs)."""
        variables = {"M": m, "K": k, "N": m * k}
        return [theta[2 * i] * variables[variable] ** -theta[2 * i + 1]
                for i, (_, _, variable) in enumerate(self.terms)]

    def function(self, theta: np.ndarray, m: np.ndarray, k: np.ndarray) -> np.ndarray:
        return sum(self.term_values(theta, m, k))

    def depends_on_split(self) -> bool:
        """False when error depends on N_eff only (how N is split between M and K does not
        matter)."""
        return any(variable != "N" for _, _, variable in self.terms)


FORMS = {form.name: form for form in (
    SurfaceForm("molecules+conformers", "a*M^-alpha + b*K^-beta",
                (("a", "alpha", "M"), ("b", "beta", "K"))),
    SurfaceForm("molecules+total", "a*M^-alpha + b*N^-gamma",
                (("a", "alpha", "M"), ("b", "gamma", "N"))),
    SurfaceForm("molecules-only", "a*M^-alpha", (("a", "alpha", "M"),)),
    SurfaceForm("conformers-only", "b*K^-beta", (("b", "beta", "K"),)),
    SurfaceForm("total-only", "b*N^-gamma", (("b", "gamma", "N"),)),
)}
NULL_FORM = "total-only"


class HeldOut(BaseModel):
    """One cell predicted by a fit to the other cells (leave-one-cell-out)."""

    M: float
    C: float
    measured: float
    predicted: float
    ci_low: float
    ci_high: float
    inside: bool


class Candidate(BaseModel):
    """How one form did: held-out error, calibration, and why it was rejected (if it was)."""

    cv_rmse_log: float | None  # None: too few cells for this form's parameters
    covered: int  # held-out cells inside their 95 % predictive interval
    held_out: int
    rejected: str | None  # e.g. "exponent beta on its bound 2" or "term b vanishes"


class SurfaceFit(BaseModel):
    """The chosen learning curve for one (model, selection, split, metric) with its
    uncertainty samples and its measured leave-one-cell-out calibration."""

    model: str
    selection: str  # "<molecule selection>-<conformer selection>" of the cells fitted
    split: str
    metric: str
    form: str
    formula: str
    accepted: bool  # False: every form was rejected; `note` says why, the advice is undetermined
    note: str | None
    params: dict[str, float]
    params_ci: dict[str, tuple[float, float]]
    tau: float  # between-cell scatter beyond the cells' own errors, log units
    uncertainty: str
    conformer_axis: str
    kappa: float  # K = C^kappa maps nominal conformers per molecule to effective ones
    candidates: dict[str, Candidate]
    held_out: list[HeldOut]  # the chosen form's leave-one-cell-out predictions
    n_cells: int
    n_points: int
    grid_molecules: tuple[int, int]
    grid_conformers: tuple[float, float]
    grid_total: tuple[float, float]
    samples: list[list[float]]  # natural parameters in FORMS[form].params order
    # exponents fitted jointly with other splits' curves, when that lowered the held-out error
    shared: str | None = None
    # samples of the accepted forms the held-out error cannot tell from the chosen one; the
    # uncertainty samples (`predict_samples`) mix them in equal parts with the chosen form's
    alternatives: dict[str, list[list[float]]] = {}

    @property
    def cv_rmse_log(self) -> dict[str, float | None]:
        return {name: c.cv_rmse_log for name, c in self.candidates.items()}

    @property
    def all_forms_compared(self) -> bool:
        """Whether every candidate form had enough cells to be cross-validated: a form chosen
        among the simpler ones only cannot be trusted to be the right one."""
        return all(c.cv_rmse_log is not None for c in self.candidates.values())

    @property
    def coverage(self) -> tuple[int, int]:
        """(held-out cells inside their 95 % interval, held-out cells) of the chosen form."""
        return sum(h.inside for h in self.held_out), len(self.held_out)

    def effective(self, conformers) -> np.ndarray:
        return np.asarray(conformers, dtype=float) ** self.kappa

    def predict(self, molecules, conformers) -> np.ndarray:
        """Predicted error at (M, nominal C), broadcasting."""
        theta = np.array([self.params[p] for p in FORMS[self.form].params])
        return FORMS[self.form].function(theta, np.asarray(molecules, dtype=float),
                                         self.effective(conformers))

    def predict_samples(self, molecules, conformers) -> np.ndarray:
        """Predictions of the uncertainty samples: shape (n_samples, *broadcast shape). With
        competing forms, equal shares of the chosen form's and each competitor's samples
        (model-form uncertainty in the intervals)."""
        m = np.asarray(molecules, dtype=float)
        k = self.effective(conformers)
        share = len(self.samples) // (1 + len(self.alternatives))
        first = len(self.samples) - share * len(self.alternatives)  # always n_samples in all
        blocks = [(self.form, self.samples[:first])] + [
            (name, samples[:share]) for name, samples in self.alternatives.items()]
        parts = []
        for name, samples in blocks:
            samples = np.array(samples)
            shape = (len(samples),) + (1,) * np.broadcast(m, k).ndim
            theta = [samples[:, j].reshape(shape) for j in range(samples.shape[1])]
            parts.append(FORMS[name].function(theta, m, k))
        return np.concatenate(parts)

    def depends_on_split(self) -> bool:
        """True when the accepted form says how N is split between M and C matters."""
        return self.accepted and FORMS[self.form].depends_on_split()


# ---------------------------------------------------------------- one weighted fit
@dataclass
class _Fit:
    theta: np.ndarray  # internal: log amplitudes and exponents
    covariance: np.ndarray
    tau: float
    rejected: str | None


def natural_params(form: SurfaceForm, theta: np.ndarray) -> np.ndarray:
    """Internal parameters (log amplitudes) -> natural ones, along the last axis."""
    out = np.array(theta, dtype=float, copy=True)
    out[..., 0::2] = np.exp(out[..., 0::2])
    return out


def param_bounds(form: SurfaceForm) -> tuple[np.ndarray, np.ndarray]:
    n = len(form.terms)
    lower = np.tile([LOG_AMPLITUDE_BOUNDS[0], EXPONENT_BOUNDS[0]], n)
    upper = np.tile([LOG_AMPLITUDE_BOUNDS[1], EXPONENT_BOUNDS[1]], n)
    return lower, upper


def log_predict(form: SurfaceForm, theta: np.ndarray, m, k) -> np.ndarray:
    return np.log(np.maximum(form.function(natural_params(form, theta), m, k), 1e-300))


def _solve(form: SurfaceForm, m, k, y, s, tau: float, start: np.ndarray | None):
    """Weighted least squares of log error at a given tau, from `start` or a few starts."""
    sigma = np.sqrt(s ** 2 + tau ** 2)

    def residuals(theta):
        return (log_predict(form, theta, m, k) - y) / sigma

    lower, upper = param_bounds(form)
    if start is not None:
        starts = [start]
    else:
        amplitude = float(np.median(y)) - np.log(len(form.terms))
        # both exponents small, both large, and one of each (two-term forms)
        exponent_sets = [(0.3,) * len(form.terms), (1.0,) * len(form.terms)]
        if len(form.terms) == 2:
            exponent_sets += [(0.3, 1.0), (1.0, 0.3)]
        starts = [np.ravel([[amplitude, e] for e in exponents]) for exponents in exponent_sets]
    best = None
    for initial in starts:
        result = least_squares(residuals, np.clip(initial, lower, upper), bounds=(lower, upper),
                               method="trf", x_scale="jac")
        if best is None or result.cost < best.cost:
            best = result
    return best


def _fit_form(form: SurfaceForm, m, k, y, s) -> _Fit:
    """The weighted fit with tau by Paule-Mandel, its covariance and any rejection."""
    dof = len(y) - len(form.params)
    fit0 = _solve(form, m, k, y, s, 0.0, None)
    tau, fit = 0.0, fit0
    if dof > 0 and 2 * fit0.cost > dof:
        start = fit0.x

        def excess(t):
            nonlocal start
            result = _solve(form, m, k, y, s, t, start)
            start = result.x
            return 2 * result.cost - dof

        tau = MAX_TAU if excess(MAX_TAU) > 0 else float(brentq(excess, 0.0, MAX_TAU,
                                                              xtol=1e-4))
        fit = _solve(form, m, k, y, s, tau, start)
    jac = fit.jac
    covariance = np.linalg.pinv(jac.T @ jac)
    return _Fit(fit.x, covariance, tau, _rejection(form, fit.x, m, k, jac))


def _rejection(form: SurfaceForm, theta: np.ndarray, m, k, jac) -> str | None:
    """Why a fitted form is not a finding: an exponent on its bound, a vanished term."""
    for i, exponent in enumerate(form.exponents):
        value = theta[2 * i + 1]
        for bound in EXPONENT_BOUNDS:
            if abs(value - bound) < BOUND_TOLERANCE:
                return f"exponent {exponent} on its bound {bound:g}"
    terms = form.term_values(natural_params(form, theta), m, k)
    total = sum(terms)
    for (amplitude, _, _), term in zip(form.terms, terms, strict=True):
        if len(form.terms) > 1 and np.max(term / total) < VANISHING_SHARE:
            return f"term {amplitude} vanishes over the measured cells"
    if np.linalg.matrix_rank(jac) < len(form.params):
        return "parameters not identified by these cells"
    return None


def draw_truncated(theta: np.ndarray, covariance: np.ndarray, lower: np.ndarray,
                   upper: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` draws of a Gaussian truncated to the bounds (rejection; a posterior mostly beyond
    the bounds keeps clipped draws for the rest)."""
    accepted: list[np.ndarray] = []
    for _ in range(20):
        draws = rng.multivariate_normal(theta, covariance, size=n, method="eigh",
                                        check_valid="ignore")
        accepted += list(draws[np.all((draws >= lower) & (draws <= upper), axis=1)])
        if len(accepted) >= n:
            break
    if len(accepted) < n:
        accepted += list(np.clip(draws, lower, upper))
    return np.array(accepted[:n])


def _samples(form: SurfaceForm, fit: _Fit, n: int, rng: np.random.Generator) -> np.ndarray:
    """Natural-parameter samples of the Laplace approximation, truncated to the bounds."""
    return natural_params(form, draw_truncated(fit.theta, fit.covariance, *param_bounds(form),
                                               n, rng))


# ---------------------------------------------------------------- cross-validation
def _cross_validate(form: SurfaceForm, cells: pd.DataFrame, rng: np.random.Generator
                    ) -> tuple[float | None, list[HeldOut]]:
    """Leave-one-cell-out: RMSE of log error and each held-out cell's predictive interval."""
    groups = cells.groupby(["M", "C"]).indices
    if len(groups) - 1 < len(form.params) + 1:
        return None, []
    squared, held = [], []
    for rows in groups.values():
        train = cells.drop(cells.index[rows])
        test = cells.iloc[rows]
        fit = _fit_form(form, *cell_arrays(train))
        samples = _samples(form, fit, N_CV_SAMPLES, rng)
        m, k, y, s = cell_arrays(test)
        point = log_predict(form, fit.theta, m, k)
        sampled = np.log(np.maximum(form.function(sample_columns(samples), m, k), 1e-300))
        spread = np.sqrt(fit.tau ** 2 + s ** 2)
        predictive = sampled + rng.normal(size=sampled.shape) * spread
        low, high = np.percentile(predictive, [2.5, 97.5], axis=0)
        for j in range(len(test)):
            squared.append(float((point[j] - y[j]) ** 2))
            held.append(HeldOut(M=float(test.M.iloc[j]), C=float(test.C.iloc[j]),
                                measured=float(np.exp(y[j])), predicted=float(np.exp(point[j])),
                                ci_low=float(np.exp(low[j])), ci_high=float(np.exp(high[j])),
                                inside=bool(low[j] <= y[j] <= high[j])))
    return float(np.sqrt(np.mean(squared))), held


def sample_columns(samples: np.ndarray) -> list[np.ndarray]:
    """Sample columns shaped (n_samples, 1) to broadcast against cell arrays."""
    return [samples[:, j][:, None] for j in range(samples.shape[1])]


def cell_arrays(cells: pd.DataFrame):
    return (cells.M.to_numpy(float), cells.K.to_numpy(float), cells.log_value.to_numpy(float),
            np.maximum(cells.log_se.to_numpy(float), MIN_LOG_SE))


# ---------------------------------------------------------------- the fit of one split
def conformer_map(cells: pd.DataFrame) -> float:
    """kappa in K = C^kappa (0 < kappa <= 1), least squares through the origin in log space
    over cells with C > 1; 1 when no cell has C > 1."""
    used = cells[cells.C > 1]
    if used.empty:
        return 1.0
    log_c, log_k = np.log(used.C.to_numpy(float)), np.log(used.K.to_numpy(float))
    return float(np.clip(log_c @ log_k / (log_c @ log_c), 1e-3, 1.0))


def prepare_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """Design points ready to fit: K defaulted to C, non-positive values dropped, log value
    and a non-negative log standard error."""
    if "value" not in cells and "error" in cells:
        cells = cells_from_replicates(cells)
    cells = cells.copy()
    if "K" not in cells:
        cells["K"] = cells.C
    cells = cells[np.isfinite(cells.value) & (cells.value > 0)].reset_index(drop=True)
    cells["log_value"] = np.log(cells.value)
    cells["log_se"] = cells.log_se.fillna(0.0).clip(lower=0.0)
    return cells


def fit_surface(cells: pd.DataFrame, *, model: str, split: str, metric: str,
                selection: str = "random-random", conformer_axis: str = EFFECTIVE_AXIS,
                seed: int = 0) -> SurfaceFit:
    """Fit one split's learning curve. `cells` has one row per measured design point with
    columns M, C (nominal conformers per molecule), K (effective; defaults to C), value (mean
    error over replicates) and log_se (standard error of log value), or one row per replicate
    with M, C and `error` (turned into design points by `cells_from_replicates`). Raises
    MlipdivError when no form has enough cells for a cross-validated fit."""
    cells = prepare_cells(cells)
    rng = np.random.default_rng(seed)
    candidates, fitted, held_by_form = {}, {}, {}
    for name, form in FORMS.items():
        score, held = _cross_validate(form, cells, rng)
        fit = _fit_form(form, *cell_arrays(cells)) if score is not None else None
        fitted[name], held_by_form[name] = fit, held
        candidates[name] = Candidate(cv_rmse_log=score, covered=sum(h.inside for h in held),
                                     held_out=len(held), rejected=fit.rejected if fit else None)
    n_cells = cells.groupby(["M", "C"]).ngroups
    scored = {n: c for n, c in candidates.items() if c.cv_rmse_log is not None}
    if not scored:
        raise MlipdivError(f"surface fit {model}/{selection}/{split}/{metric}: {n_cells} "
                           f"cells with finite errors; at least 3 are needed")
    usable = {n: c for n, c in scored.items() if c.rejected is None}
    # Ties go to the form with fewer parameters.
    pool = usable or scored
    chosen = min(pool, key=lambda n: (round(pool[n].cv_rmse_log, 9), len(FORMS[n].params)))
    form, fit = FORMS[chosen], fitted[chosen]
    samples = _samples(form, fit, N_SAMPLES, rng)
    low, high = np.percentile(samples, [2.5, 97.5], axis=0)
    alternatives = {name: _samples(FORMS[name], fitted[name], N_SAMPLES, rng).tolist()
                    for name in competing(chosen, usable, held_by_form)}
    note = None if usable else ("every form was rejected (" + "; ".join(
        f"{n}: {c.rejected}" for n, c in scored.items()) + "): no learning curve is a finding")
    return SurfaceFit(
        model=model, selection=selection, split=split, metric=metric, form=chosen,
        formula=form.formula, accepted=bool(usable), note=note,
        params=dict(zip(form.params, map(float, natural_params(form, fit.theta)), strict=True)),
        params_ci={p: (float(lo), float(hi))
                   for p, lo, hi in zip(form.params, low, high, strict=True)},
        tau=float(fit.tau),
        uncertainty="Laplace approximation of the weighted fit (cells weighted by their "
                    "hierarchical-bootstrap errors and the between-cell scatter tau)",
        conformer_axis=conformer_axis, kappa=conformer_map(cells), candidates=candidates,
        held_out=held_by_form[chosen], n_cells=n_cells, n_points=len(cells),
        grid_molecules=(int(cells.M.min()), int(cells.M.max())),
        grid_conformers=(float(cells.C.min()), float(cells.C.max())),
        grid_total=(float((cells.M * cells.C).min()), float((cells.M * cells.C).max())),
        samples=samples.tolist(), alternatives=alternatives)


def competing(chosen: str, usable: dict[str, Candidate], held: dict[str, list[HeldOut]]
              ) -> list[str]:
    """Accepted forms the held-out error cannot tell from the chosen one (the one-standard-
    error rule: mean squared held-out log error within one standard error of the chosen
    form's)."""
    if chosen not in usable:
        return []

    def squared(name: str) -> np.ndarray:
        return np.array([np.log(h.predicted / h.measured) ** 2 for h in held[name]])

    best = squared(chosen)
    margin = best.mean() + best.std(ddof=1) / np.sqrt(len(best)) if len(best) > 1 else 0.0
    return [name for name in usable if name != chosen and squared(name).mean() <= margin]


# ---------------------------------------------------------------- reading and writing
def cells_from_replicates(table: pd.DataFrame) -> pd.DataFrame:
    """Design points from per-replicate errors (columns M, C, error, optional K): the mean
    error and the standard error of its log from the replicates' spread (0 with one)."""
    table = table[np.isfinite(table.error) & (table.error > 0)].copy()
    if "K" not in table:
        table["K"] = table.C
    table["log_error"] = np.log(table.error)
    grouped = table.groupby(["M", "C"], as_index=False)
    cells = grouped.agg(value=("error", "mean"), K=("K", "mean"), n=("error", "size"),
                        sd=("log_error", "std"))
    cells["log_se"] = (cells.sd / np.sqrt(cells.n)).fillna(0.0)
    return cells[["M", "C", "K", "value", "log_se"]]


def write_fits(fits: list[SurfaceFit], skipped: list[str], path: str | os.PathLike) -> None:
    """Write fits (with their samples) to JSON atomically."""
    payload = {"fits": [f.model_dump(mode="json") for f in fits], "skipped": skipped}
    write_text_atomic(Path(path), json.dumps(payload))


def load_fits(path: str | os.PathLike) -> tuple[list[SurfaceFit], list[str]]:
    """Read fits written by `write_fits`."""
    path = Path(path)
    if not path.exists():
        raise MlipdivError(f"{path}: no surface fits (run the study's fit step first)")
    payload = read_json(path, "surface fits", RESULTS_REMEDY)
    with reading(path, "surface fits", RESULTS_REMEDY):
        return ([SurfaceFit.model_validate(f) for f in payload["fits"]],
                [str(s) for s in payload["skipped"]])

