"""Learning curve: MACE (fast size) error on a fixed CF test set vs training conformers.

The test set is the conformational (CF) split of a GFN2-xTB pool: one held-out conformer of
every molecule with at least three. Training sets of 100, 300 and 1,000 conformers are nested
random draws from the rest (a fixed 100-conformer validation set aside). The error must fall;
the last line is JSON with the three MAEs. `--quick` caps training at 15 epochs.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
from model_bench_data import FULL_CONFORMERS, bench_store, parse_arguments

from mlipdiv.data import ConformerStore, MoleculeRecord
from mlipdiv.metrics import evaluate_split
from mlipdiv.models import load_run, train

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


def main() -> None:
    args = parse_arguments(__doc__, "cap training at 15 epochs")
    store = bench_store(args.workdir / "conformers.h5", FULL_CONFORMERS)
    with ConformerStore(store) as opened:
        records = list(opened.molecules())
    pool, test = cf_split(records)
    order = np.random.default_rng(1).permutation(len(pool))
    valid = gather(records, [pool[i] for i in order[:N_VALID]])
    candidates = [pool[i] for i in order[N_VALID:]]
    if len(candidates) < max(TRAINING_SIZES):
        raise SystemExit(f"pool has {len(candidates)} training conformers, fewer than needed")
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for n_train in TRAINING_SIZES:
            started = time.perf_counter()
            out = train(gather(records, candidates[:n_train]), valid, model="mace", size="fast",
                        out=Path(tmp) / f"n{n_train}", progress=False, device="cpu",
                        max_epochs=15 if args.quick else None)
            run = load_run(out, "cpu")
            metrics = evaluate_split(run, test, "cf")
            rows.append({"n_train": n_train,
                         "energy_mae_mev_per_atom": metrics.energy_mae_mev_per_atom,
                         "forces_mae_mev_per_angstrom": metrics.forces_mae_mev_per_angstrom,
                         "conformational_energy_mae_mev": metrics.conformational_energy_mae_mev,
                         "epochs": run.record.members[0].epochs,
                         "seconds": time.perf_counter() - started})
            print(f"N={n_train}: energy MAE {rows[-1]['energy_mae_mev_per_atom']:.2f} meV/atom, "
                  f"force MAE {rows[-1]['forces_mae_mev_per_angstrom']:.1f} meV/A "
                  f"({rows[-1]['epochs']} epochs, {rows[-1]['seconds']:.0f} s)", flush=True)
    forces = [r["forces_mae_mev_per_angstrom"] for r in rows]
    energies = [r["energy_mae_mev_per_atom"] for r in rows]
    print(json.dumps({
        "benchmark": "learning_curve", "quick": args.quick, "model": "mace", "size": "fast",
        "n_test_conformers": sum(r.n_conformers for r in test), "curve": rows,
        "forces_mae_falls": bool(np.all(np.diff(forces) < 0)),
        "energy_mae_falls": bool(np.all(np.diff(energies) < 0)),
    }))


if __name__ == "__main__":
    main()
