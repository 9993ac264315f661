"""Learning curves: each backend's (fast size) error on a fixed CF test set vs training conformers.

The test set is the conformational (CF) split of a GFN2-xTB pool: one held-out conformer of
every molecule with at least three. Training sets of 100, 300 and 1,000 conformers are nested
random draws from the rest (a fixed 100-conformer validation set aside), the same for every
backend of `--models` (default: all registered). The error must fall; the last line is JSON
with one curve (energy and force MAEs per size) per backend and whether each falls.
`--quick` caps training at 15 epochs.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
from model_bench_data import FULL_CONFORMERS, bench_records, parse_arguments

from mlipdiv.data import MoleculeRecord
from mlipdiv.metrics import evaluate_split
from mlipdiv.models import TrainingSpec, backend_names, load_run, train

TRAINING_SIZES = (100, 300, 1000)
N_VALID = 100


def cf_split(records: list[MoleculeRecord], seed: int = 0):
    """(pool pairs, CF test records): one random conformer held out of each molecule with at
    least three conformers."""
    rng = np.random.default_rng(seed)
    pool, test = [], []
    for index, record in enumerate(records):
        order = rng.permutation(record.n_conformers)
        if record.n_conformers >= 3:
            test.append(record.subset(order[:1]))
            order = order[1:]
        pool += [(index, int(i)) for i in order]
    return pool, test


def gather(records: list[MoleculeRecord], pairs) -> list[MoleculeRecord]:
    """Records restricted to (record index, conformer) pairs, grouped by molecule."""
    grouped: dict[int, list[int]] = {}
    for index, conformer in pairs:
        grouped.setdefault(index, []).append(conformer)
    return [records[i].subset(sorted(c)) for i, c in grouped.items()]


def curve(backend: str, records: list[MoleculeRecord], candidates: list, valid, test,
          out: Path, quick: bool) -> dict:
    """One backend's errors on `test` after training on 100, 300 and 1,000 conformers."""
    rows = []
    for n_train in TRAINING_SIZES:
        started = time.perf_counter()
        spec = TrainingSpec(backend, "fast", device="cpu", epochs=15 if quick else None)
        run_dir = train(gather(records, candidates[:n_train]), valid, spec,
                        out / f"{backend}-n{n_train}", progress=False)
        run = load_run(run_dir, "cpu")
        metrics = evaluate_split(run, test, "cf")
        rows.append({"n_train": n_train,
                     "energy_mae_mev_per_atom": metrics.energy_mae_mev_per_atom,
                     "forces_mae_mev_per_angstrom": metrics.forces_mae_mev_per_angstrom,
                     "conformational_energy_mae_mev": metrics.conformational_energy_mae_mev,
                     "epochs": run.record.members[0].epochs,
                     "seconds": time.perf_counter() - started})
        print(f"{backend:9s} N={n_train}: energy MAE "
              f"{rows[-1]['energy_mae_mev_per_atom']:.2f} meV/atom, force MAE "
              f"{rows[-1]['forces_mae_mev_per_angstrom']:.1f} meV/A "
              f"({rows[-1]['epochs']} epochs, {rows[-1]['seconds']:.0f} s)", flush=True)
    forces = [r["forces_mae_mev_per_angstrom"] for r in rows]
    energies = [r["energy_mae_mev_per_atom"] for r in rows]
    return {"curve": rows, "forces_mae_falls": bool(np.all(np.diff(forces) < 0)),
            "energy_mae_falls": bool(np.all(np.diff(energies) < 0))}


def main() -> None:
    args = parse_arguments(__doc__, "cap training at 15 epochs", backend_names())
    _, records = bench_records(args.workdir, FULL_CONFORMERS)
    pool, test = cf_split(records)
    order = np.random.default_rng(1).permutation(len(pool))
    valid = gather(records, [pool[i] for i in order[:N_VALID]])
    candidates = [pool[i] for i in order[N_VALID:]]
    if len(candidates) < max(TRAINING_SIZES):
        raise SystemExit(f"pool has {len(candidates)} training conformers, fewer than needed")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        curves = {backend: curve(backend, records, candidates, valid, test, Path(tmp),
                                 args.quick) for backend in args.models}
    print(json.dumps({
        "benchmark": "learning_curve", "quick": args.quick, "size": "fast",
        "n_test_conformers": sum(r.n_conformers for r in test), "models": args.models,
        "curves": curves,
        "all_fall": all(c["forces_mae_falls"] and c["energy_mae_falls"]
                        for c in curves.values()),
    }))


if __name__ == "__main__":
    main()
