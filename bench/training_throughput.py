"""Training and inference throughput: mlipdiv's shared loop vs each library's own trainer.

For every backend of `--models` (default: all six: mace, schnet, painn, nequip,
tensornet, ani), on the same
GFN2-xTB conformers (>= 1,000; `--quick`: >= 300), the same model (mlipdiv's `fast` size),
the same E0s, number of epochs, batch size and threads (`OMP_NUM_THREADS` = `--threads` for
every command), both sides run end to end as commands in this run:
  mace                       `mlipdiv train` vs `mace_run_train`, then `mlipdiv predict` vs
                             `mace_eval_configs`;
  schnet/painn/nequip/       `mlipdiv train` vs graph-pes's trainer (`train_with_lightning`,
  tensornet                  `graph_pes_reference.py train`), then `mlipdiv predict` vs
                             graph-pes's batched ASE calculator (`graph_pes_reference.py
                             predict`);
  ani                        `mlipdiv train` vs TorchANI's documented training loop over its
                             own batched dataset (`torchani_reference.py train`), then
                             `mlipdiv predict` vs TorchANI's padded batched call
                             (`torchani_reference.py predict`).
Prints conformers/s of both and the ratio mlipdiv/reference (goal >= 1.0) for training and
inference per backend; the last line is JSON with all of them. `--repeats N` runs the four
commands N times in turn (fresh directories) and keeps each one's fastest wall time, which is
what to use on a machine shared with other jobs (there `--threads 1` also avoids OpenMP
threads waiting on each other); `--predict-repeats M` runs the two predictions M times in turn
(a prediction takes seconds: a few more of them cost little and steady its fastest). The data
are the store's first molecules up to the size asked.
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
from model_bench_data import FULL_CONFORMERS, bench_records, parse_arguments

from mlipdiv.data import write_store
from mlipdiv.models import fit_e0, potential_class, run_size
from mlipdiv.models.base import PREDICT_BATCH
from mlipdiv.models.train_run import training_statistics

BIN = Path(sys.executable).parent
GRAPH_PES = Path(__file__).with_name("graph_pes_reference.py")
# the reference command of every backend but MACE: train / predict subcommands on the config
SCRIPTS = {**dict.fromkeys(("schnet", "painn", "nequip", "tensornet"), GRAPH_PES),
           "ani": Path(__file__).with_name("torchani_reference.py")}
REFERENCES = {"mace": "mace_run_train / mace_eval_configs",
              **{backend: "graph-pes train_with_lightning / GraphPESCalculator.calculate_all"
                 for backend in ("schnet", "painn", "nequip", "tensornet")},
              "ani": "TorchANI batch_all_in_ram + training loop / pad_atomic_properties call"}


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


def timed(command: list[str], log: Path, env: dict[str, str]) -> float:
    """Wall time of a command, its output kept in `log`."""
    started = time.perf_counter()
    with log.open("w") as handle:
        completed = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    if completed.returncode:  # the log goes with the temporary directory: show its end
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"{tail}\n{' '.join(command[:3])} failed ({completed.returncode})")
    return time.perf_counter() - started


def mace_train_command(work: Path, out: Path, epochs: int, e0s: dict[int, float]) -> list[str]:
    size = run_size("mace", "fast")
    hp, settings = size.model, size.training
    return [
        str(BIN / "mace_run_train"), "--name", "bench", "--work_dir", str(out),
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


def commands(backend: str, work: Path, out: Path, data: dict, epochs: int
             ) -> dict[str, list[str]]:
    """The four commands of one backend, in the order they run; outputs under `out`."""
    ours = {
        "mlipdiv_train": [
            str(BIN / "mlipdiv"), "train", "--train", str(work / "train.h5"), "--valid",
            str(work / "valid.h5"), "--model", backend, "--size", "fast", "--epochs",
            str(epochs), "--device", "cpu", "--out", str(out / "run")],
        "mlipdiv_predict": [
            str(BIN / "mlipdiv"), "predict", str(out / "run"), str(work / "all.h5"), "--out",
            str(out / "pred.extxyz"), "--device", "cpu"],
    }
    if backend == "mace":
        theirs = {
            "reference_train": mace_train_command(work, out, epochs, data["e0s"]),
            "reference_predict": [
                str(BIN / "mace_eval_configs"), "--configs", str(work / "all.xyz"),
                "--model", str(out / "bench.model"), "--output", str(out / "mace-pred.xyz"),
                "--device", "cpu", "--default_dtype", "float32",
                "--batch_size", str(PREDICT_BATCH)]}
    else:
        # the config mlipdiv's train builds: the same module on both sides
        model = run_size(backend, "fast").model
        e0s = data["e0s"]
        config = {"elements": sorted(e0s), "e0": [e0s[z] for z in sorted(e0s)],
                  "model": model, "dtype": "float32",
                  "stats": training_statistics(data["train"],
                                               potential_class(backend).cutoff(model))}
        spec = out / "reference.json"
        spec.write_text(json.dumps({"backend": backend, "config": config}))
        script = str(SCRIPTS[backend])
        theirs = {
            "reference_train": [
                sys.executable, script, "train", "--config", str(spec),
                "--train", str(work / "train.xyz"), "--valid", str(work / "valid.xyz"),
                "--epochs", str(epochs), "--out", str(out / "reference")],
            "reference_predict": [
                sys.executable, script, "predict", "--config", str(spec),
                "--model", str(out / "reference" / "model.pt"), "--configs",
                str(work / "all.xyz"), "--output", str(out / "reference-pred.xyz")]}
    return {name: {**ours, **theirs}[name] for name in
            ("mlipdiv_train", "reference_train", "mlipdiv_predict", "reference_predict")}


def compare(backend: str, work: Path, data: dict, epochs: int, repeats: int,
            predict_repeats: int, env: dict[str, str]) -> dict:
    """Both sides of one backend timed end to end, `repeats` times in turn: train, then
    predict every conformer; then both predictions again, in turn, until each has run
    `predict_repeats` times (with the last models trained); each command's fastest wall time
    counts."""
    walls: dict[str, list[float]] = {}
    for repeat in range(repeats):
        out = work / f"{backend}-{repeat}"
        out.mkdir()
        for name, command in commands(backend, work, out, data, epochs).items():
            walls.setdefault(name, []).append(timed(command, out / f"{name}.log", env))
    for _ in range(predict_repeats - repeats):
        for name, command in commands(backend, work, out, data, epochs).items():
            if name.endswith("_predict"):
                walls[name].append(timed(command, out / f"{name}.log", env))
    wall = {name: min(times) for name, times in walls.items()}
    fastest = int(np.argmin(walls["mlipdiv_train"]))  # its run's epoch loop is reported
    record = json.loads((work / f"{backend}-{fastest}" / "run" / "run.json").read_text())
    loop_seconds = float(np.sum([h["seconds"] for h in record["members"][0]["history"]]))
    n_train, n_all = data["n_train"], data["n_all"]
    result = {
        "reference": REFERENCES[backend],
        "batch_size": run_size(backend, "fast").training.batch_size,
        "mlipdiv_device": record["device_name"],
        "mlipdiv_train_conformers_per_s": n_train * epochs / wall["mlipdiv_train"],
        "reference_train_conformers_per_s": n_train * epochs / wall["reference_train"],
        "train_ratio": wall["reference_train"] / wall["mlipdiv_train"],
        "mlipdiv_epoch_loop_conformers_per_s": n_train * epochs / loop_seconds,
        "mlipdiv_infer_conformers_per_s": n_all / wall["mlipdiv_predict"],
        "reference_infer_conformers_per_s": n_all / wall["reference_predict"],
        "infer_ratio": wall["reference_predict"] / wall["mlipdiv_predict"],
        "wall_s": wall, "wall_s_all": walls,
    }
    threads = work / f"{backend}-0" / "reference" / "threads.json"
    if threads.exists():
        result["reference_torch_threads"] = json.loads(threads.read_text())["torch_threads"]
    return result


def first_conformers(records: list, n: int) -> list:
    """The first molecules whose conformers add up to at least `n`."""
    total = 0
    for count, record in enumerate(records, 1):
        total += record.n_conformers
        if total >= n:
            return records[:count]
    return records


def add_options(parser) -> None:
    parser.add_argument(
        "--threads", type=int,
        default=int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads()),
        help="OMP_NUM_THREADS of every command, both sides (default: this process's)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run each command this many times in turn; fastest counts")
    parser.add_argument("--predict-repeats", type=int, default=None,
                        help="run the two predictions this many times in turn (at least "
                             "--repeats; default: --repeats): a prediction takes seconds, "
                             "so its fastest of several is what a noisy machine needs")


def main() -> None:
    args = parse_arguments(__doc__, ">= 300 conformers, 2 epochs", tuple(REFERENCES),
                           add_options)
    missing = [backend for backend in args.models if backend not in REFERENCES]
    if missing:
        raise SystemExit(f"--models: no reference trainer for {', '.join(missing)} "
                         f"(choose from {', '.join(REFERENCES)})")
    predict_repeats = max(args.predict_repeats or args.repeats, args.repeats)
    min_conformers, epochs = (300, 2) if args.quick else (FULL_CONFORMERS, 4)
    records = first_conformers(bench_records(args.workdir, min_conformers)[1], min_conformers)
    train = [r for i, r in enumerate(records) if i % 10]
    valid = [r for i, r in enumerate(records) if i % 10 == 0]
    data = {"train": train, "e0s": fit_e0(train).energies,
            "n_train": sum(r.n_conformers for r in train),
            "n_all": sum(r.n_conformers for r in records)}
    env = {**os.environ, "WANDB_MODE": "disabled",
           **dict.fromkeys(("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"),
                           str(args.threads))}
    results = {}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        for name, subset in (("train", train), ("valid", valid), ("all", records)):
            write_store(work / f"{name}.h5", subset, "GFN2-xTB (tblite)")
            to_mace_xyz(subset, work / f"{name}.xyz")
        for backend in args.models:
            results[backend] = result = compare(backend, work, data, epochs, args.repeats,
                                                predict_repeats, env)
            print(f"{backend:9s} training : mlipdiv "
                  f"{result['mlipdiv_train_conformers_per_s']:.1f} conf/s, reference "
                  f"{result['reference_train_conformers_per_s']:.1f} conf/s, ratio "
                  f"{result['train_ratio']:.2f}\n{backend:9s} inference: mlipdiv "
                  f"{result['mlipdiv_infer_conformers_per_s']:.1f} conf/s, reference "
                  f"{result['reference_infer_conformers_per_s']:.1f} conf/s, ratio "
                  f"{result['infer_ratio']:.2f}  ({result['reference']})", flush=True)
    print(json.dumps({
        "benchmark": "training_throughput", "quick": args.quick, "size": "fast",
        "n_train": data["n_train"], "n_valid": sum(r.n_conformers for r in valid),
        "n_infer": data["n_all"], "epochs": epochs, "threads": args.threads,
        "repeats": args.repeats, "predict_repeats": predict_repeats, "models": args.models,
        "results": results,
        "train_ratio_ok": {b: r["train_ratio"] >= 1.0 for b, r in results.items()},
        "infer_ratio_ok": {b: r["infer_ratio"] >= 1.0 for b, r in results.items()},
    }))


if __name__ == "__main__":
    main()
