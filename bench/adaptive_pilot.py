"""The advice a QM-data team can act on, end to end on a real GFN2-xTB store: a study with
the adaptive pilot on, then `mlipdiv verify` at twice the study's budget, then the
extrapolation check.

Default setting (about 25-35 min on 2 cores): 240 NCI molecules (C, H, N, O; 3-9 heavy atoms)
x 32 GFN2-xTB normal-mode conformers at 400 K; CF = 4 withheld conformers per pool molecule,
ST 30 and SF 20 molecules; fixed budget N = 240 (M = 10, 30, 120) and fixed molecules M = 30
(C = 2, 8, 24); two replicates; ANI `fast`, 1,500 optimiser steps for every cell; forces, CF
and ST weighted equally; the adaptive pilot with up to 10 extra cells, 2 a round.

Prints, per fit: the form, whether accepted, any exponent on a bound, held-out coverage; the
advice (M*, its interval and ratio, determined); the adaptive rounds; the verification
sentence; wall times; one JSON line last. Resumable: rerun the same command.

    .venv/bin/python bench/adaptive_pilot.py [--out bench-output/adaptive_pilot] [--cells 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from mlipdiv.study import StudyPaths
from mlipdiv.study.fit import EXPONENT_BOUNDS, FORMS, load_fits

CONFIG = """
name = "adaptive-pilot"
seed = 0
[data]
source = "generate"
molecules = "nci"
n_molecules = 240
conformers = 32
method = "gfn2-xtb"
sampler = "nms"
temperature = 400.0
min_heavy_atoms = 3
max_heavy_atoms = 9
elements = "C,H,N,O"
[split]
cf_molecules = "all"
cf_conformers = 4
st = 30
sf = 20
[fixed_budget]
budget = {budget}
molecules = [10, 30, 120]
[fixed_molecules]
molecules = 30
conformers = [2, 8, 24]
[design]
replicates = 2
allow_short = true
[models]
architectures = ["ani"]
size = "fast"
steps = 1500
[advice]
weights = {{ cf = 1.0, st = 1.0 }}
metric = "forces_mae_mev_per_angstrom"
[adaptive]
enabled = true
cells = {cells}
per_round = 2
max_molecule_ratio = 4.0
"""


def run(command: list[str]) -> float:
    started = time.perf_counter()
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-output/adaptive_pilot"))
    parser.add_argument("--budget", type=int, default=240)
    parser.add_argument("--cells", type=int, default=10)
    parser.add_argument("--verify-replicates", type=int, default=2)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    config = args.out.parent / f"{args.out.name}.toml"
    config.write_text(CONFIG.format(budget=args.budget, cells=args.cells))
    mlipdiv = str(Path(sys.executable).with_name("mlipdiv"))
    times = {"study_s": run([mlipdiv, "study", str(config), "--out", str(args.out)])}
    times["verify_s"] = run([mlipdiv, "verify", str(args.out), "--budget",
                             str(2 * args.budget), "--replicates",
                             str(args.verify_replicates), "--force"])
    times["report_s"] = run([mlipdiv, "report", str(args.out)])
    check = subprocess.run([sys.executable, str(Path(__file__).with_name(
        "extrapolation_check.py")), str(args.out)], check=True, capture_output=True, text=True)
    print(check.stdout)

    paths = StudyPaths(args.out)
    fits, _ = load_fits(paths.fit)
    on_bound, covered, held = [], 0, 0
    for fit in fits:
        bound = [p for p in FORMS[fit.form].exponents
                 if any(abs(fit.params[p] - b) < 0.01 for b in EXPONENT_BOUNDS)]
        k, n = fit.coverage
        covered, held = covered + k, held + n
        on_bound += [f"{fit.split}:{p}" for p in bound if fit.accepted]
        print(f"{fit.model} {fit.split}: {fit.form} accepted={fit.accepted} "
              f"params={ {p: round(v, 3) for p, v in fit.params.items()} } tau={fit.tau:.3f} "
              f"held-out {k}/{n} inside; rejected: "
              f"{ {n_: c.rejected for n_, c in fit.candidates.items() if c.rejected} }")
    advice = json.loads(paths.advice.read_text())["advice"][0]
    adaptive = json.loads(paths.adaptive.read_text()) if paths.adaptive.exists() else {}
    verify = json.loads((args.out / "verify" / f"N{2 * args.budget}" / "verify.json")
                        .read_text())
    interval = advice["molecules_interval"]
    print(f"advice: M* = {advice['n_molecules']} x C* = {advice['conformers_per_molecule']} "
          f"(M interval {interval[0]}-{interval[1]}), determined={advice['determined']}; "
          f"warnings: {advice['warnings']}")
    for item in adaptive.get("rounds", []):
        print(f"round {item['index']}: {item['cells']} -- {item['why']}")
    print(f"adaptive stopped: {adaptive.get('stopped')}")
    print(verify["sentence"])
    print(json.dumps({
        "exponents_on_bound": on_bound, "held_out_inside": covered, "held_out": held,
        "advised_m": advice["n_molecules"], "advised_c": advice["conformers_per_molecule"],
        "m_interval": interval, "m_ratio": round(interval[1] / max(interval[0], 1), 2),
        "determined": advice["determined"], "cells_added": sum(
            len(r["cells"]) for r in adaptive.get("rounds", [])),
        "stopped": adaptive.get("stopped"), "verify": verify["sentence"],
        "extrapolation": json.loads(check.stdout.strip().splitlines()[-1]),
        **{k: round(v, 1) for k, v in times.items()}}))


if __name__ == "__main__":
    main()
