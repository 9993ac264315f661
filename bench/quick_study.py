"""Wall time of the quick study preset (`mlipdiv study --preset quick`) from nothing to report.

Goal: <= 300 s on 2 CPU cores, and a report that shows both sides of the fixed-budget
trade-off with intervals that exclude zero: CF error rising and ST error falling as M grows,
and fixed-molecules CF error falling as C grows (the advice metric's slopes, hierarchical
bootstrap). With --compare-executors the training step is rerun on the same
data with 2 processes x 1 thread and 1 process x 2 threads, to show which is faster.
Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from mlipdiv.report import write_report
from mlipdiv.report.build import StudyView
from mlipdiv.study import StudyPaths, parse_config, preset_text, run_study

GOAL_SECONDS = 300.0


def _timed_training(study: Path, copy: Path, workers: int, threads: int) -> float:
    """Rerun only the cells of a finished study with a given process/thread split."""
    shutil.copytree(study, copy, ignore=shutil.ignore_patterns("runs", "cells", "results.*"))
    text = preset_text("quick").replace('kind = "local"',
                                        f'kind = "local"\nworkers = {workers}\n'
                                        f"threads_per_worker = {threads}")
    started = time.perf_counter()
    run_study(parse_config(text), text, copy, progress=False)
    return time.perf_counter() - started


# (experiment, split) -> the direction the quick preset's report must state
EXPECTED_TRENDS = {("fixed-budget", "CF"): "rises", ("fixed-budget", "ST"): "falls",
                   ("fixed-molecules", "CF"): "falls"}


def stated_trends(study: Path) -> dict[str, str]:
    """What the report says of each expected trend of the advice metric: rises / falls /
    unsupported."""
    view = StudyView(study)
    found = {}
    for line in view.trends(view.metric):
        for (experiment, split), _ in EXPECTED_TRENDS.items():
            if line.startswith(f"{experiment},") and f": {split} " in line:
                found[f"{experiment} {split}"] = ("rises" if "error rises" in line else
                                                  "falls" if "error falls" in line else
                                                  "unsupported")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, help="study directory (default: a temporary one)")
    parser.add_argument("--compare-executors", action="store_true")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="mlipdiv-quick-"))
    out = args.out or scratch / "study"
    if out.exists():
        shutil.rmtree(out)
    text = preset_text("quick")
    started = time.perf_counter()
    report = write_report(run_study(parse_config(text), text, out, progress=False))
    wall = time.perf_counter() - started
    cpu = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
              for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    results = pd.read_parquet(StudyPaths(out).results_parquet)
    figures = {
        "benchmark": "quick_study", "wall_s": round(wall, 1), "goal_s": GOAL_SECONDS,
        "goal_met": wall <= GOAL_SECONDS, "cpu_s": round(cpu, 1), "cores": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 1),
        # cells sharing an identical training set share one run: count runs once
        "cells": int(results.drop_duplicates(["cell", "model"]).shape[0]),
        "trainings": int(results.drop_duplicates("run").shape[0]),
        "training_s": round(float(results.drop_duplicates("run").wall_time_s.sum()), 1),
        "report": str(report),
    }
    trends = stated_trends(out)
    figures["trends"] = trends
    figures["trends_as_expected"] = all(
        trends.get(f"{experiment} {split}") == direction
        for (experiment, split), direction in EXPECTED_TRENDS.items())
    if args.compare_executors:
        for workers, threads in ((2, 1), (1, 2)):
            figures[f"cells_wall_s_{workers}x{threads}"] = round(_timed_training(
                out, scratch / f"w{workers}t{threads}", workers, threads), 1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
