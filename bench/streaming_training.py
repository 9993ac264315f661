"""Streamed training at SPICE scale and beyond: a 1,000,000-conformer store against 10,000.

Builds (once, cached in `--workdir`) synthetic stores whose positions come from real
molecules: one RDKit ETKDG conformer of each of `--molecules` NCI molecules of H, C, N, O
(4-12 heavy atoms, RDKit's `Data/NCI/first_5K.smi`), jittered by Gaussian displacements
(0.05 Å per coordinate) into many conformers per molecule. The labels come from a cheap
vectorised numpy model -- harmonic bonds around the ETKDG geometry (30 eV/Å²) plus
per-element offsets -- and are only there to time training (not ASE's EMT, which has no
parameters for H, C, N, O worth the name). The large store (`--conformers`, default 1M) and
the small one (`--small`, default 10k) hold the same molecules, so their batches cost the
same; they are written a molecule at a time (bounded memory).

Then, each in its own subprocess (`mlipdiv train ... --device cpu`), for every backend of
`--models` (default mace, schnet; `--size fast`): streamed training (`--stream`) on the
large store, streamed on the small one, and the in-memory path on the small one, each for
the same `--steps` optimiser steps (two rounds; a whole epoch of 1M conformers takes hours on
a CPU: `--full-epoch` trains one epoch of each store instead, for a GPU machine). Prints for
each: conformers/s of the second round (steady state, loader started; the round's time
includes validating the 10 validation conformers, the same for all), the time to open the
set (the statistics/fingerprint pass for a streamed one, every graph for the in-memory one),
and the peak memory of the process tree: the sum of PSS over the trainer and its loader
workers sampled every 0.2 s from /proc (PSS counts the pages a fork shares once), and the
largest single process's peak RSS (getrusage of the trainer's wrapper). Then the throughput
ratio large/small (goal >= 0.8) and whether the large run's tree stayed <= 4 GB; the last
line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
from rdkit import Chem, RDConfig
from rdkit.Chem import AllChem

from mlipdiv.data import ConformerStore, MoleculeRecord
from mlipdiv.data.store_writer import StoreWriter
from mlipdiv.models import run_size

BIN = Path(sys.executable).parent
ELEMENTS = frozenset({1, 6, 7, 8})
OFFSETS = {1: -13.6, 6: -1029.8, 7: -1485.3, 8: -2041.2}  # eV, per element
BOND_K = 30.0  # eV/Å², harmonic bonds
JITTER = 0.05  # Å, per coordinate
VALID_PER_MOLECULE = 1
VALID_MOLECULES = 10
SAMPLE_S = 0.2
RSS_GOAL_GB = 4.0
RATIO_GOAL = 0.8
# the wrapper each training runs under: the largest process's peak RSS, from the kernel
WRAPPER = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
           "open(sys.argv[1], 'w').write(str(resource.getrusage("
           "resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(code)")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench-output/streaming"))
    parser.add_argument("--conformers", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--molecules", type=int, default=300)
    parser.add_argument("--models", nargs="+", default=["mace", "schnet"])
    parser.add_argument("--steps", type=int, default=120,
                        help="optimiser steps of every run (two rounds; throughput: the 2nd)")
    parser.add_argument("--full-epoch", action="store_true",
                        help="train one epoch of each store instead (a GPU machine)")
    parser.add_argument("--loader-workers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of training")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args()


def base_molecules(n: int, seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray,
                                                          np.ndarray]]:
    """(inchikey, atomic numbers, ETKDG positions, bonds (n_bonds, 2)) of the first `n` NCI
    molecules of H, C, N, O with 4-12 heavy atoms that embed, distinct InChIKeys."""
    path = Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"
    out, seen = [], set()
    for line in path.read_text().splitlines():
        mol = Chem.MolFromSmiles(line.split()[0]) if line.strip() else None
        if mol is None or not 4 <= mol.GetNumHeavyAtoms() <= 12 or "." in line.split()[0]:
            continue
        if any(a.GetAtomicNum() not in ELEMENTS for a in mol.GetAtoms()):
            continue
        key = Chem.MolToInchiKey(mol)
        if not key or key in seen:
            continue
        mol = Chem.AddHs(mol)
        params = AllChem.ETKDGv3()
        params.randomSeed = seed + 1
        if AllChem.EmbedMolecule(mol, params) != 0:
            continue
        seen.add(key)
        numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
        bonds = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()])
        out.append((key, numbers, mol.GetConformer().GetPositions(), bonds))
        if len(out) == n:
            return out
    raise SystemExit(f"{path}: only {len(out)} molecules fit")


def harmonic_labels(numbers: np.ndarray, reference: np.ndarray, bonds: np.ndarray,
                    positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Energies (n_conf,) and forces (n_conf, n_atoms, 3) of harmonic bonds around the
    reference geometry plus per-element offsets, vectorised over conformers."""
    i, j = bonds[:, 0], bonds[:, 1]
    r0 = np.linalg.norm(reference[i] - reference[j], axis=-1)
    d = positions[:, i] - positions[:, j]
    r = np.linalg.norm(d, axis=-1)
    energy = 0.5 * BOND_K * ((r - r0) ** 2).sum(axis=1) + sum(OFFSETS[int(z)] for z in numbers)
    pull = (-BOND_K * (r - r0) / r)[..., None] * d  # force on atom i of each bond
    incidence = np.zeros((len(bonds), len(numbers)))
    incidence[np.arange(len(bonds)), i], incidence[np.arange(len(bonds)), j] = 1.0, -1.0
    return energy, np.einsum("ba,cbk->cak", incidence, pull)


def synthetic_store(path: Path, molecules: list, n_conformers: int, seed: int,
                    first: int = 0) -> Path:
    """A store of `n_conformers` jittered conformers spread evenly over `molecules` (of
    molecules `first`.. only), labelled by `harmonic_labels`; reused when present."""
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    chosen = molecules[first:]
    per = np.full(len(chosen), n_conformers // len(chosen))
    per[:n_conformers % len(chosen)] += 1
    started = time.perf_counter()
    with StoreWriter(path, "synthetic harmonic bonds (bench/streaming_training.py)") as out:
        for (key, numbers, reference, bonds), n in zip(chosen, per, strict=True):
            for start in range(0, n, 20_000):  # bounded memory however many per molecule
                size = min(20_000, n - start)
                positions = reference + rng.normal(0.0, JITTER, (size, *reference.shape))
                energy, forces = harmonic_labels(numbers, reference, bonds, positions)
                out.add(MoleculeRecord(key, "", "", numbers, positions, energy, forces))
    print(f"{path.name}: {n_conformers} conformers of {len(chosen)} molecules written in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    return path


def tree_pss(process: psutil.Process) -> float:
    """PSS (bytes) of a process and its descendants; 0 for those already gone."""
    total = 0.0
    for member in (process, *process.children(recursive=True)):
        try:
            total += member.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def measured_run(command: list[str], log: Path, env: dict) -> dict:
    """Run a training command under the wrapper: wall time, peak tree PSS and largest
    single-process peak RSS (GB)."""
    maxrss = log.with_suffix(".maxrss")
    started, peak = time.perf_counter(), 0.0
    with log.open("w") as handle:
        process = subprocess.Popen(
            ["nice", sys.executable, "-c", WRAPPER, str(maxrss), *command],
            stdout=handle, stderr=subprocess.STDOUT, env=env)
        watched = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                peak = max(peak, tree_pss(watched))
            except psutil.NoSuchProcess:
                break
            time.sleep(SAMPLE_S)
    if process.wait():
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise SystemExit(f"{tail}\n{' '.join(command[:4])} failed ({process.returncode})")
    return {"wall_s": time.perf_counter() - started, "peak_tree_pss_gb": peak / 1e9,
            "peak_process_rss_gb": int(maxrss.read_text()) * 1024 / 1e9}


def train_once(model: str, store: Path, valid: Path, out: Path, stream: bool, steps: int,
               per_round: int, args: argparse.Namespace) -> dict:
    """One training subprocess and its figures."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    command = [str(BIN / "mlipdiv"), "train", "--train", str(store), "--valid", str(valid),
               "--model", model, "--size", "fast", "--steps", str(steps),
               "--steps-per-round", str(per_round), "--device", args.device,
               "--out", str(out)]
    if stream:
        command.append("--stream")
        if args.loader_workers is not None:
            command += ["--loader-workers", str(args.loader_workers)]
    figures = measured_run(command, out.with_suffix(".log"), env)
    record = json.loads((out / "run.json").read_text())
    history = record["members"][0]["history"]
    batch = run_size(model, "fast").training.batch_size
    last = history[-1]
    steps_in_round = last["step"] - (history[-2]["step"] if len(history) > 1 else 0)
    figures["conformers_per_s"] = steps_in_round * batch / last["seconds"]
    figures["open_s"] = figures["wall_s"] - sum(h["seconds"] for h in history)
    figures["n_train"] = record["n_train"]
    return figures


def main() -> None:
    args = parse_arguments()
    args.workdir.mkdir(parents=True, exist_ok=True)
    molecules = base_molecules(args.molecules)
    valid = synthetic_store(args.workdir / "valid.h5", molecules[:VALID_MOLECULES],
                            VALID_MOLECULES * VALID_PER_MOLECULE, seed=2)
    large = synthetic_store(args.workdir / f"train-{args.conformers}.h5", molecules,
                            args.conformers, seed=0)
    small = synthetic_store(args.workdir / f"train-{args.small}.h5", molecules, args.small,
                            seed=1)
    for path in (large, small):
        with ConformerStore(path) as store:
            size = path.stat().st_size / 1e9
            print(f"{path.name}: {store.total_conformers()} conformers, {len(store)} "
                  f"molecules, {size:.2f} GB", flush=True)
    results: dict = {}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.workdir / "runs").mkdir(exist_ok=True)
    for model in args.models:
        batch = run_size(model, "fast").training.batch_size
        runs = {}
        for name, store, n, stream in (("large_stream", large, args.conformers, True),
                                       ("small_stream", small, args.small, True),
                                       ("small_memory", small, args.small, False)):
            steps = -(-n // batch) if args.full_epoch else args.steps
            per_round = steps if args.full_epoch else max(1, steps // 2)
            out = args.workdir / "runs" / f"{stamp}-{model}-{name}"
            runs[name] = train_once(model, store, valid, out, stream, steps, per_round, args)
            f = runs[name]
            print(f"{model:7s} {name:13s} n={f['n_train']:>8d}: {f['conformers_per_s']:7.1f} "
                  f"conformers/s, open {f['open_s']:6.1f} s, peak tree PSS "
                  f"{f['peak_tree_pss_gb']:.2f} GB, largest process RSS "
                  f"{f['peak_process_rss_gb']:.2f} GB", flush=True)
        ratio = runs["large_stream"]["conformers_per_s"] / runs["small_stream"]["conformers_per_s"]
        rss = max(runs["large_stream"]["peak_tree_pss_gb"],
                  runs["large_stream"]["peak_process_rss_gb"])
        print(f"{model}: throughput {args.conformers}/{args.small} = {ratio:.2f} (goal >= "
              f"{RATIO_GOAL}), large run's memory {rss:.2f} GB (goal <= {RSS_GOAL_GB}): "
              f"{'met' if ratio >= RATIO_GOAL and rss <= RSS_GOAL_GB else 'NOT met'}",
              flush=True)
        results[model] = {**runs, "throughput_ratio": ratio, "large_memory_gb": rss}
    print(json.dumps({"conformers": args.conformers, "small": args.small,
                      "steps": None if args.full_epoch else args.steps,
                      "full_epoch": args.full_epoch, "threads": args.threads,
                      "device": args.device, "results": results}))


if __name__ == "__main__":
    main()
