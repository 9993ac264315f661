"""Error surfaces: each split's error as a function of molecules M and conformers per molecule C.

Candidate forms (N = M·C training conformers)::

    molecules+conformers   E = E_inf + a·M^-alpha + b·C^-beta
    molecules+total        E = E_inf + a·M^-alpha + b·N^-gamma
    total-only (null)      E = E_inf + b·N^-gamma

Fits minimise squared log residuals (errors are multiplicative) with bounded least squares; the
form is chosen by leave-one-cell-out cross-validation (a cell = one (M, C) with all its
replicates). Parameter intervals come from a bootstrap over replicates within cells, or from the
fit covariance when every cell has a single replicate. The samples are kept so that the advisor
can put intervals on the optimum.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel
from scipy.optimize import least_squares

from mlipdiv.atomic import write_text_atomic
from mlipdiv.errors import MlipdivError
from mlipdiv.files import read_json, reading
from mlipdiv.study.layout import RESULTS_REMEDY

N_BOOTSTRAP = 200
MAX_EXPONENT = 4.0


@dataclass(frozen=True)
class SurfaceForm:
    """One candidate error surface: parameter names and E(theta, M, C)."""

    name: str
    formula: str
    params: tuple[str, ...]
    function: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

    def lower(self) -> np.ndarray:
        return np.zeros(len(self.params))

    def upper(self) -> np.ndarray:
        return np.array([MAX_EXPONENT if p in EXPONENTS else np.inf for p in self.params])


EXPONENTS = ("alpha", "beta", "gamma")

FORMS = {
    form.name: form for form in (
        SurfaceForm("molecules+conformers", "E_inf + a*M^-alpha + b*C^-beta",
                    ("E_inf", "a", "alpha", "b", "beta"),
                    lambda t, m, c: t[0] + t[1] * m ** -t[2] + t[3] * c ** -t[4]),
        SurfaceForm("molecules+total", "E_inf + a*M^-alpha + b*N^-gamma",
                    ("E_inf", "a", "alpha", "b", "gamma"),
                    lambda t, m, c: t[0] + t[1] * m ** -t[2] + t[3] * (m * c) ** -t[4]),
        SurfaceForm("total-only", "E_inf + b*N^-gamma", ("E_inf", "b", "gamma"),
                    lambda t, m, c: t[0] + t[1] * (m * c) ** -t[2]),
    )
}
NULL_FORM = "total-only"


class SurfaceFit(BaseModel):
    """The chosen surface for one (model, split, metric) with its uncertainty."""

    model: str
    selection: str  # "<molecule selection>-<conformer selection>" of the cells fitted
    split: str
    metric: str
    form: str
    formula: str
    params: dict[str, float]
    params_ci: dict[str, tuple[float, float]]
    uncertainty: str  # "bootstrap over replicates" or "fit covariance"
    cv_rmse_log: dict[str, float | None]  # per candidate form; None = too few cells
    n_cells: int
    n_points: int
    grid_molecules: tuple[int, int]
    grid_conformers: tuple[float, float]
    samples: list[list[float]]

    def predict(self, molecules, conformers) -> np.ndarray:
        """Predicted error at (M, C), broadcasting."""
        theta = np.array([self.params[p] for p in FORMS[self.form].params])
        return FORMS[self.form].function(theta, *_as_float(molecules, conformers))

    def predict_samples(self, molecules, conformers) -> np.ndarray:
        """Predictions of every uncertainty sample: shape (n_samples, *broadcast shape)."""
        m, c = _as_float(molecules, conformers)
        function = FORMS[self.form].function
        return np.array([function(np.array(s), m, c) for s in self.samples])

    def depends_on_split(self) -> bool:
        """False for the null form: error then depends on N only, not on how it is split."""
        return self.form != NULL_FORM


def _as_float(molecules, conformers) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(molecules, dtype=float), np.asarray(conformers, dtype=float)


def _fit_once(form: SurfaceForm, m: np.ndarray, c: np.ndarray, error: np.ndarray,
              start: np.ndarray | None = None) -> tuple[np.ndarray, object]:
    """Bounded least squares in log space from `start`, or best of a few starting exponents."""
    log_error = np.log(error)
    scale = float(np.median(error))

    def residuals(theta):
        return np.log(np.maximum(form.function(theta, m, c), 1e-12)) - log_error

    starts = [start] if start is not None else [
        np.array([0.3 * float(error.min()) if p == "E_inf" else
                  exponent if p in EXPONENTS else scale for p in form.params])
        for exponent in (0.3, 1.0)]
    best = None
    for initial in starts:
        # x_scale="jac": the amplitudes (up to ~1e5) and exponents (~1) differ by orders of
        # magnitude; unscaled, trf crawled through hundreds of iterations (0.5 s a fit, minutes
        # for a replicate bootstrap) to the same or a worse minimum
        result = least_squares(residuals, initial, bounds=(form.lower(), form.upper()),
                               method="trf", x_scale="jac")
        if best is None or result.cost < best.cost:
            best = result
    return best.x, best


def _cross_validate(form: SurfaceForm, table: pd.DataFrame) -> float | None:
    """Leave-one-cell-out RMSE of log error; None when too few cells for the form."""
    cells = table.groupby(["M", "C"]).indices
    if len(cells) - 1 < len(form.params):
        return None
    squared = []
    for rows in cells.values():
        train = table.drop(table.index[rows])
        held = table.iloc[rows]
        theta, _ = _fit_once(form, train.M.to_numpy(), train.C.to_numpy(),
                             train.error.to_numpy())
        predicted = form.function(theta, held.M.to_numpy(float), held.C.to_numpy(float))
        squared.append(float(np.mean((np.log(np.maximum(predicted, 1e-12))
                                      - np.log(held.error.to_numpy())) ** 2)))
    return float(np.sqrt(np.mean(squared)))


def _uncertainty_samples(form: SurfaceForm, table: pd.DataFrame, theta: np.ndarray, result,
                         rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Parameter samples: bootstrap over replicates within cells, else the fit covariance."""
    groups = list(table.groupby(["M", "C"]).indices.values())
    if any(len(rows) > 1 for rows in groups):
        samples = []
        for _ in range(N_BOOTSTRAP):
            rows = np.concatenate([rng.choice(r, size=len(r), replace=True) for r in groups])
            boot = table.iloc[rows]
            samples.append(_fit_once(form, boot.M.to_numpy(), boot.C.to_numpy(),
                                     boot.error.to_numpy(), start=theta)[0])
        return np.array(samples), "bootstrap over replicates"
    jacobian = result.jac
    dof = max(len(table) - len(theta), 1)
    variance = 2 * result.cost / dof
    covariance = np.linalg.pinv(jacobian.T @ jacobian) * variance
    draws = rng.multivariate_normal(theta, covariance, size=N_BOOTSTRAP, method="eigh",
                                    check_valid="ignore")
    # A parameter the data do not constrain (zero derivative, e.g. an exponent whose term
    # vanished) gets its whole allowed range, not a falsely exact value.
    norms = np.linalg.norm(jacobian, axis=0)
    for j in np.flatnonzero(norms <= 1e-12 * norms.max()):
        upper = form.upper()[j] if np.isfinite(form.upper()[j]) else 10 * max(theta[j], 1.0)
        draws[:, j] = rng.uniform(form.lower()[j], upper, size=N_BOOTSTRAP)
    return np.clip(draws, form.lower(), form.upper()), "fit covariance"


def fit_surface(table: pd.DataFrame, *, model: str, split: str, metric: str,
                selection: str = "random-random", seed: int = 0) -> SurfaceFit:
    """Fit one split's error over (M, C). `table` has columns M, C and `error` (one row per
    replicate). Raises MlipdivError when no candidate form has enough cells."""
    table = table[["M", "C", "error"]].astype(float)
    table = table[np.isfinite(table.error) & (table.error > 0)].reset_index(drop=True)
    cv = {name: _cross_validate(form, table) for name, form in FORMS.items()}
    eligible = {name: score for name, score in cv.items() if score is not None}
    if not eligible:
        n_cells = table.groupby(["M", "C"]).ngroups
        raise MlipdivError(f"surface fit {model}/{selection}/{split}/{metric}: {n_cells} "
                           f"cells with finite errors; at least "
                           f"{len(FORMS[NULL_FORM].params) + 1} are needed")
    # Ties go to the form with fewer parameters (dict order lists the richer forms first).
    chosen = min(eligible, key=lambda n: (round(eligible[n], 9), len(FORMS[n].params)))
    form = FORMS[chosen]
    theta, result = _fit_once(form, table.M.to_numpy(), table.C.to_numpy(),
                              table.error.to_numpy())
    samples, method = _uncertainty_samples(form, table, theta, result,
                                           np.random.default_rng(seed))
    low, high = np.percentile(samples, [2.5, 97.5], axis=0)
    return SurfaceFit(
        model=model, selection=selection, split=split, metric=metric, form=chosen,
        formula=form.formula,
        params=dict(zip(form.params, map(float, theta), strict=True)),
        # A parameter on its bound can sit outside its sample percentiles; widen to hold it.
        params_ci={p: (float(min(lo, t)), float(max(hi, t)))
                   for p, lo, hi, t in zip(form.params, low, high, theta, strict=True)},
        uncertainty=method, cv_rmse_log=cv, n_cells=table.groupby(["M", "C"]).ngroups,
        n_points=len(table), grid_molecules=(int(table.M.min()), int(table.M.max())),
        grid_conformers=(float(table.C.min()), float(table.C.max())),
        samples=samples.tolist(),
    )


def fit_results(results: pd.DataFrame, metric: str, seed: int = 0
                ) -> tuple[list[SurfaceFit], list[str]]:
    """A surface per (model, selection, split) of a results table (columns model, selection,
    split, M, C, replicate and the metric); returns the fits and, for each
    (model, split) that could not be fitted, one line saying why."""
    if metric not in results.columns:
        raise MlipdivError(f"metric {metric!r} is not a column of the results table")
    fits, skipped = [], []
    for (model, selection, split), group in results.groupby(["model", "selection", "split"]):
        # A cell measured in both experiments (same M, C and replicate) counts once.
        table = (group.rename(columns={metric: "error"})
                 .groupby(["M", "C", "replicate"], as_index=False)["error"].mean())
        try:
            fits.append(fit_surface(table, model=model, split=split, metric=metric,
                                    selection=selection, seed=seed))
        except MlipdivError as exc:
            skipped.append(str(exc))
    return fits, skipped


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
