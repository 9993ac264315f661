"""Extrapolation check of the learning curves: fit on the small cells, predict the large ones.

Two checks on a finished study (`STUDY`):
1. **Within the study**: fit each split's learning curve on the cells with N <= N_max / 2 only
   (or on the grid cells, leaving the adaptive pilot's cells out, with --pilot), predict every
   other cell and compare with what was measured: predicted value, 95 % predictive interval
   (the fit's samples + its between-cell scatter tau + the cell's own error), inside or not.
2. **Against `mlipdiv verify`**: the study's own fit predicts each verified design (possibly
   at a budget larger than any measured cell) and is compared with the verification's
   measured errors in the same way.

Prints a table per check and one JSON line last with the fraction of cells covered.

    .venv/bin/python bench/extrapolation_check.py STUDY [--pilot]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from mlipdiv.metrics.cells import cell_summary
from mlipdiv.study import StudyPaths, load_config
from mlipdiv.study.curves import fit_results
from mlipdiv.study.fit import SurfaceFit, load_fits

Z95 = 1.959963984540054


def predictive_check(fit: SurfaceFit, cells: pd.DataFrame, rng) -> list[dict]:
    """Each cell's measured value against the fit's 95 % predictive interval."""
    rows = []
    for cell in cells.itertuples():
        sampled = np.log(np.maximum(fit.predict_samples(cell.M, cell.C), 1e-300))
        spread = np.sqrt(fit.tau ** 2 + max(cell.log_se, 0.0) ** 2)
        predictive = sampled + rng.normal(size=sampled.shape) * spread
        low, high = np.exp(np.percentile(predictive, [2.5, 97.5]))
        predicted = float(fit.predict(cell.M, cell.C))
        rows.append(dict(model=fit.model, split=fit.split, M=cell.M, C=round(cell.C, 3),
                         N=round(cell.M * cell.C), measured=round(cell.value, 4),
                         predicted=round(predicted, 4), ci_low=round(float(low), 4),
                         ci_high=round(float(high), 4),
                         inside=bool(low <= cell.value <= high)))
    return rows


def _cells(results: pd.DataFrame, molecules: pd.DataFrame, metric: str) -> pd.DataFrame:
    summary = cell_summary(results, molecules, metric)
    return summary.drop_duplicates(["model", "selection", "split", "M", "C", "value"])


def within_study(study: StudyPaths, metric: str, pilot: bool, rng) -> list[dict]:
    results = pd.read_parquet(study.results_parquet)
    molecules = pd.read_parquet(study.results_molecules)
    n = results.M * results.C
    small = ~results.cell.str.startswith("adaptive-") if pilot else n <= n.max() / 2 + 1e-9
    fits, _ = fit_results(results[small], metric, molecules=molecules[
        molecules.cell.isin(set(results.cell[small]))])
    held = _cells(results[~small], molecules[molecules.cell.isin(set(results.cell[~small]))],
                  metric)
    rows = []
    for fit in fits:
        cells = held[(held.model == fit.model) & (held.split == fit.split)
                     & (held.selection == fit.selection)]
        rows += predictive_check(fit, cells, rng)
    return rows


def against_verify(study: StudyPaths, metric: str, rng) -> list[dict]:
    fits, _ = load_fits(study.fit)
    rows = []
    for directory in sorted((study.root / "verify").glob("N*")):
        payloads = [json.loads(p.read_text()) for p in (directory / "cells").glob("*.json")]
        if not payloads:
            continue
        results = pd.DataFrame([r for p in payloads for r in p["rows"]])
        molecules = pd.DataFrame([m for p in payloads for m in p["molecules"]])
        cells = _cells(results, molecules, metric)
        for fit in fits:
            chosen = cells[(cells.model == fit.model) & (cells.split == fit.split)]
            rows += [dict(row, budget=directory.name) for row in
                     predictive_check(fit, chosen, rng)]
    return rows


def _summary(rows: list[dict]) -> dict:
    return {"cells": len(rows), "inside": sum(r["inside"] for r in rows),
            "fraction_inside": round(sum(r["inside"] for r in rows) / len(rows), 3)
            if rows else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--pilot", action="store_true",
                        help="fit on the grid cells, predict the adaptive pilot's cells")
    args = parser.parse_args()
    study = StudyPaths(args.study)
    metric = load_config(study.config).advice.metric
    rng = np.random.default_rng(0)
    inner = within_study(study, metric, args.pilot, rng)
    outer = against_verify(study, metric, rng)
    pd.set_option("display.width", 200)
    for title, rows in (("fit on small cells, predict large ones", inner),
                        ("study fit vs mlipdiv verify", outer)):
        print(f"\n{title}:")
        print(pd.DataFrame(rows).to_string(index=False) if rows else "  (none)")
    print(json.dumps({"metric": metric, "within_study": _summary(inner),
                      "verify": _summary(outer)}))


if __name__ == "__main__":
    main()
