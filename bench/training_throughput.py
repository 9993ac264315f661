"""Training and inference throughput: mlipdiv's MACE training vs MACE's own CLI.

Same GFN2-xTB conformers (>= 1,000; `--quick`: >= 300), same MACE hyperparameters (mlipdiv's
`fast` size), same E0s, same number of epochs, both run end to end as commands in this run:
`mlipdiv train` vs `mace_run_train`, then `mlipdiv predict` vs `mace_eval_configs`.
Prints conformers/s for both and the ratio mlipdiv/MACE (goal >= 1.0); last line is JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.io import write
from model_bench_data import FULL_CONFORMERS, bench_store, parse_arguments

from mlipdiv.data import ConformerStore, write_store
from mlipdiv.models import fit_e0, run_size

BIN = Path(sys.executable).parent


def to_mace_xyz(records, path: Path) -> None:
    """extxyz with MACE's default keys (REF_energy, REF_forces)."""
    frames = []
    for record in records:
        for i in range(record.n_conformers):
            atoms = Atoms(numbers=record.atomic_numbers, positions=record.positions[i])
            atoms.info["REF_energy"] = float(record.energy[i])
            atoms.arrays["REF_forces"] = record.forces[i]
            frames.append(atoms)
    write(path, frames, format="extxyz")


def timed(command: list[str], log: Path) -> float:
    started = time.perf_counter()
    with log.open("w") as handle:
        subprocess.run(command, check=True, stdout=handle, stderr=subprocess.STDOUT)
    return time.perf_counter() - started


def mace_train_command(work: Path, epochs: int, e0s: dict[int, float]) -> list[str]:
    size = run_size("mace", "fast")
    hp, settings = size.model, size.training
    return [
        str(BIN / "mace_run_train"), "--name", "bench", "--work_dir", str(work),
        "--train_file", str(work / "train.xyz"), "--valid_file", str(work / "valid.xyz"),
        "--E0s", repr(e0s), "--model", "MACE", "--num_channels", str(hp["num_channels"]),
        "--max_L", str(hp["max_L"]), "--max_ell", str(hp["max_ell"]),
        "--correlation", str(hp["correlation"]),
        "--num_interactions", str(hp["num_interactions"]), "--r_max", str(hp["r_max"]),
        "--num_radial_basis", str(hp["num_radial_basis"]),
        "--num_cutoff_basis", str(hp["num_cutoff_basis"]),
        "--radial_MLP", str(hp["radial_mlp"]), "--MLP_irreps", hp["mlp_irreps"],
        "--batch_size", str(settings.batch_size),
        "--valid_batch_size", str(settings.valid_batch_size),
        "--max_num_epochs", str(epochs), "--lr", str(settings.learning_rate),
        "--weight_decay", str(settings.weight_decay), "--lr_factor", str(settings.lr_factor),
        "--scheduler_patience", str(settings.lr_patience), "--patience", "100000",
        "--energy_weight", str(settings.energy_weight),
        "--forces_weight", str(settings.forces_weight), "--loss", "weighted",
        "--scaling", "rms_forces_scaling", "--default_dtype", "float32", "--device", "cpu",
        "--seed", "0", "--energy_key", "REF_energy", "--forces_key", "REF_forces",
        "--error_table", "PerAtomMAE",
    ]


def main() -> None:
    args = parse_arguments(__doc__, ">= 300 conformers, 2 epochs")
    min_conformers, epochs = (300, 2) if args.quick else (FULL_CONFORMERS, 4)
    store = bench_store(args.workdir / "conformers.h5", min_conformers)
    with ConformerStore(store) as opened:
        records = list(opened.molecules())
    train = [r for i, r in enumerate(records) if i % 10]
    valid = [r for i, r in enumerate(records) if i % 10 == 0]
    n_train = sum(r.n_conformers for r in train)
    n_all = sum(r.n_conformers for r in records)
    e0s = fit_e0(train).energies

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        write_store(work / "train.h5", train, "GFN2-xTB (tblite)")
        write_store(work / "valid.h5", valid, "GFN2-xTB (tblite)")
        to_mace_xyz(train, work / "train.xyz")
        to_mace_xyz(valid, work / "valid.xyz")
        to_mace_xyz(records, work / "all.xyz")
        ours = timed([str(BIN / "mlipdiv"), "train", "--train", str(work / "train.h5"),
                      "--valid", str(work / "valid.h5"), "--model", "mace", "--size", "fast",
                      "--epochs", str(epochs), "--device", "cpu", "--out", str(work / "run")],
                     work / "mlipdiv-train.log")
        theirs = timed(mace_train_command(work, epochs, e0s), work / "mace-train.log")
        ours_infer = timed([str(BIN / "mlipdiv"), "predict", str(work / "run"),
                            str(store), "--out", str(work / "pred.extxyz"), "--device", "cpu"],
                           work / "mlipdiv-predict.log")
        theirs_infer = timed([str(BIN / "mace_eval_configs"), "--configs", str(work / "all.xyz"),
                              "--model", str(work / "bench.model"), "--output",
                              str(work / "mace-pred.xyz"), "--device", "cpu",
                              "--default_dtype", "float32", "--batch_size", "64"],
                             work / "mace-predict.log")
        history = json.loads((work / "run" / "run.json").read_text())["members"][0]["history"]
    loop_seconds = float(np.sum([h["seconds"] for h in history]))
    result = {
        "benchmark": "training_throughput", "quick": args.quick, "n_train": n_train,
        "n_valid": sum(r.n_conformers for r in valid), "epochs": epochs, "size": "fast",
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "mlipdiv_train_conformers_per_s": n_train * epochs / ours,
        "mace_cli_train_conformers_per_s": n_train * epochs / theirs,
        "train_ratio": theirs / ours,
        "mlipdiv_epoch_loop_conformers_per_s": n_train * epochs / loop_seconds,
        "mlipdiv_infer_conformers_per_s": n_all / ours_infer,
        "mace_cli_infer_conformers_per_s": n_all / theirs_infer,
        "infer_ratio": theirs_infer / ours_infer,
        "wall_s": {"mlipdiv_train": ours, "mace_train": theirs, "mlipdiv_predict": ours_infer,
                   "mace_eval": theirs_infer},
    }
    print(f"training : mlipdiv {result['mlipdiv_train_conformers_per_s']:.1f} conf/s, "
          f"mace_run_train {result['mace_cli_train_conformers_per_s']:.1f} conf/s, "
          f"ratio {result['train_ratio']:.2f}")
    print(f"inference: mlipdiv {result['mlipdiv_infer_conformers_per_s']:.1f} conf/s, "
          f"mace_eval_configs {result['mace_cli_infer_conformers_per_s']:.1f} conf/s, "
          f"ratio {result['infer_ratio']:.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
