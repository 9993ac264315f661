"""Labelling throughput: `mlipdiv label` with 1 and 2 workers against bare tblite loops.

Builds an unlabelled store of distinct ETKDG conformers of NCI molecules (C, H, N, O; 6-12
heavy atoms; 167 molecules x 12 conformers = 2,004 by default), then times, on the same
conformers:

- bare tblite: GFN2-xTB single points in a plain loop (one tblite calculator per molecule,
  positions updated, one thread), in 1 and in 2 processes that take the next molecule from a
  shared counter. The records are read and tblite loaded before the clock starts, so
  `bare_2_vs_1` is the hardware's own scaling (memory bandwidth, shared caches, turbo), the
  ceiling of any pool on this machine;
- the pool: `mlipdiv.data.generate.label_store` (the library function behind `mlipdiv label`:
  input check, workers, checkpoints, final store; all in the clock) with 1 and 2 workers.

Ratios printed: `pool_2_vs_1` (issue 23's figure: 2 workers against one, goal >= 1.9),
`bare_2_vs_1`, `pool_2_vs_bare_1` (the pool against a plain single-process loop) and the
pool's overheads over the bare loops with as many processes (`pool_1_overhead`,
`pool_2_overhead`; `pool_1_cpu_overhead` in CPU time, which other jobs disturb far less).
With `--repeats N` the four timings alternate N times and the fastest of each counts (other
jobs on the shared cores only ever slow a run down); the load average is printed before and
after. As the fastest runs of a busy shared machine can come from different minutes,
`pool_2_vs_1_paired` is also given: the median over repeats of the ratio of the two pool runs
made one after the other. On Linux the machine's CPU time during each pool run is read from
/proc/stat: `pool_2_idle_cores` (the share of the two cores' time the 2-worker run left idle:
start-up, the input check, the last molecule) and `pool_2_cpu_vs_1` (all CPU seconds of the
2-worker run over those of the 1-worker run: what the pool's processes and contention add).
The SCF restart of `XtbSeries` (off in the library) is measured in one process too: its
CPU-time gain and its largest energy and force differences from the fresh starts.
Human-readable lines go to stderr, the figures as one JSON line last.

    .venv/bin/python bench/labelling.py [--quick] [--molecules 167] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem

from mlipdiv.data import ConformerStore, MoleculeRecord, QMMethod, write_store
from mlipdiv.data.generate import label_store
from mlipdiv.data.identity import identity_of
from mlipdiv.data.qm import XtbSeries
from mlipdiv.data.sampling import prepare_molecule
from mlipdiv.data.sources import MoleculeFilter, parse_elements, select_molecules
from mlipdiv.data.units import (
    BOHR_TO_ANGSTROM,
    HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM,
    HARTREE_TO_EV,
)

Labels = dict[str, tuple[np.ndarray, np.ndarray]]  # inchikey -> energies (eV), forces (eV/A)


def build_store(path: Path, n_molecules: int, n_conformers: int) -> int:
    """Unlabelled store of distinct ETKDG conformers; returns the number of conformers."""
    selection = select_molecules("nci", n_molecules, MoleculeFilter(
        parse_elements("C,H,N,O"), 6, 12), seed=0)
    records = []
    for entry in selection.entries:
        mol = prepare_molecule(entry.smiles)
        params = AllChem.ETKDGv3()
        params.randomSeed = 1  # RDKit's randomSeed 0 embeds every conformer identically
        AllChem.EmbedMultipleConfs(mol, n_conformers, params)
        if mol.GetNumConformers() < n_conformers:
            continue
        identity = identity_of(Chem.Mol(mol))
        order = identity.canonical_order
        numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])[order]
        positions = np.array([c.GetPositions() for c in mol.GetConformers()])[:, order]
        records.append(MoleculeRecord(identity.inchikey, identity.smiles, identity.formula,
                                      numbers, positions))
    return write_store(path, records, "unlabelled (ETKDG)", created_by="bench/labelling.py")


def bare_labels(numbers: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GFN2-xTB energies and forces of one molecule's conformers straight from tblite: one
    calculator, its positions updated, every SCF from a fresh start (as `label` does)."""
    from tblite.interface import Calculator

    calc = Calculator("GFN2-xTB", numbers, positions[0] / BOHR_TO_ANGSTROM)
    calc.set("verbosity", 0)
    energies, forces = [], []
    for xyz in positions:
        calc.update(xyz / BOHR_TO_ANGSTROM)
        result = calc.singlepoint()
        energies.append(result.get("energy") * HARTREE_TO_EV)
        forces.append(-result.get("gradient") * HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM)
    return np.array(energies), np.stack(forces)


def _bare_process(path: str, keys: list[str], counter, barrier, results) -> None:
    """One bare process: load, wait for the start, label the molecules the shared counter
    hands out, and send back its finishing time, CPU seconds and {key: labels}."""
    import tblite.interface  # noqa: F401  (loaded first, so the thread limit reaches its OpenMP)
    from threadpoolctl import threadpool_limits

    with ConformerStore(path) as store:
        records = {key: store.molecule(key) for key in keys}
    with threadpool_limits(1):
        bare_labels(records[keys[-1]].atomic_numbers, records[keys[-1]].positions[:1])
        labels: Labels = {}
        barrier.wait()
        cpu = time.process_time()
        while True:
            with counter.get_lock():
                index = counter.value
                counter.value += 1
            if index >= len(keys):
                break
            record = records[keys[index]]
            labels[keys[index]] = bare_labels(record.atomic_numbers, record.positions)
    results.put((time.perf_counter(), time.process_time() - cpu, labels))


def bare_run(path: Path, processes: int) -> tuple[float, float, Labels]:
    """Wall and CPU seconds of `processes` bare processes labelling the whole store (largest
    molecules first, as the pool orders them), and the labels."""
    with ConformerStore(path) as store:
        keys = sorted(store.inchikeys, key=lambda key: -store.n_conformers(key)
                      * len(store.atomic_numbers(key)) ** 2)
    # spawn, not the pool's forkserver: a forkserver started here would lack the pool's preload
    context = multiprocessing.get_context("spawn")
    counter, barrier, results = context.Value("i", 0), context.Barrier(processes + 1), \
        context.Queue()
    workers = [context.Process(target=_bare_process,
                               args=(str(path), keys, counter, barrier, results))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    finished = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    labels = {key: value for _, _, part in finished for key, value in part.items()}
    return (max(end for end, _, _ in finished) - started, sum(cpu for _, cpu, _ in finished),
            labels)


def restart_check(path: Path) -> dict:
    """CPU seconds of fresh-start and restarted SCFs over the store in this process (the two
    alternate molecule by molecule, so a change of load hits both alike), and the largest
    differences of the restarted labels from the fresh ones."""
    from threadpoolctl import threadpool_limits

    with ConformerStore(path) as store:
        records = list(store.molecules())
    seconds = {False: 0.0, True: 0.0}
    energy_difference = force_difference = 0.0
    with threadpool_limits(1):
        for record in records:
            labels = {}
            for restart in (False, True):
                cpu = time.process_time()
                series = XtbSeries("GFN2-xTB", record.atomic_numbers, restart=restart)
                labels[restart] = [series.singlepoint(xyz) for xyz in record.positions]
                seconds[restart] += time.process_time() - cpu
            for (energy, gradient), (again, regradient) in zip(labels[False], labels[True],
                                                               strict=True):
                energy_difference = max(energy_difference, float(abs(energy - again)))
                force_difference = max(force_difference, float(np.abs(gradient - regradient).max()))
    return {
        "restart_cpu_gain": round(1 - seconds[True] / seconds[False], 3),
        "restart_max_energy_difference_ev": energy_difference * HARTREE_TO_EV,
        "restart_max_force_difference_ev_per_a":
            force_difference * HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM,
    }


def machine_cpu() -> tuple[float, float] | None:
    """(busy, idle) CPU seconds of the whole machine since boot (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(value) for value in stat.readline().split()[1:]]
    except OSError:
        return None
    hertz = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq = ticks[:7]
    return (user + nice + system + irq + softirq) / hertz, (idle + iowait) / hertz


def pool_run(store: Path, out: Path, workers: int) -> tuple[float, float]:
    """Wall seconds of `label_store` with `workers` workers (the output removed first, so
    every run does all the work), and this process's CPU seconds (all of them at 1 worker)."""
    out.unlink(missing_ok=True)
    method = QMMethod("gfn2-xtb")
    started, cpu = time.perf_counter(), time.process_time()
    label_store(store, out, method, workers, False)
    return time.perf_counter() - started, time.process_time() - cpu


def machine_figures(machine: dict[str, list[tuple[float, float]]]) -> dict:
    """Medians over repeats of the 2-worker run's idle share of the cores and of its CPU
    seconds over the 1-worker run's (empty without /proc/stat)."""
    if not (machine["pool_1"] and machine["pool_2"]):
        return {}
    idle = [idle / (busy + idle) for busy, idle in machine["pool_2"]]
    cpu = [two[0] / one[0] for one, two in zip(machine["pool_1"], machine["pool_2"],
                                                strict=True)]
    return {"pool_2_idle_cores": round(float(np.median(idle)), 3),
            "pool_2_cpu_vs_1": round(float(np.median(cpu)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 molecules x 10 conformers")
    parser.add_argument("--molecules", type=int, default=167, help="molecules in the store")
    parser.add_argument("--conformers", type=int, default=12, help="conformers per molecule")
    parser.add_argument("--repeats", type=int, default=1,
                        help="alternate the four timings this many times; the fastest counts")
    args = parser.parse_args()
    n_molecules, n_conformers = (20, 10) if args.quick else (args.molecules, args.conformers)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        store, out = Path(tmp) / "positions.h5", Path(tmp) / "labelled.h5"
        n_total = build_store(store, n_molecules, n_conformers)
        with ConformerStore(store) as opened:  # warm-up: load tblite and its parameters once
            QMMethod("gfn2-xtb").label(opened.atomic_numbers(opened.inchikeys[0]),
                                       opened.molecule(opened.inchikeys[0]).positions[0])
        times: dict[str, list[float]] = {"bare_1": [], "bare_2": [], "pool_1": [], "pool_2": []}
        cpu_times: dict[str, list[float]] = {name: [] for name in times}
        machine: dict[str, list[tuple[float, float]]] = {"pool_1": [], "pool_2": []}
        for repeat in range(args.repeats):
            order = list(times) if repeat % 2 == 0 else list(reversed(times))
            for name in order:
                kind, n = name.split("_")
                if kind == "bare":
                    seconds, cpu, bare = bare_run(store, int(n))
                else:
                    before = machine_cpu()
                    seconds, cpu = pool_run(store, out, int(n))
                    after = machine_cpu()
                    if before is not None and after is not None:
                        machine[name].append((after[0] - before[0], after[1] - before[1]))
                times[name].append(seconds)
                cpu_times[name].append(cpu)
                print(f"repeat {repeat + 1}: {name} {seconds:.2f} s "
                      f"(load {os.getloadavg()[0]:.2f})", file=sys.stderr)
        with ConformerStore(out) as labelled:
            pool_labels = {r.inchikey: (r.energy, r.forces) for r in labelled.molecules()}
            atoms = np.mean([len(labelled.atomic_numbers(k)) for k in labelled.inchikeys])
        restart = restart_check(store)
    best = {name: min(values) for name, values in times.items()}
    figures = {
        "benchmark": "labelling", "method": "GFN2-xTB", "conformers": n_total,
        "molecules": len(pool_labels), "mean_atoms": round(float(atoms), 1),
        "repeats": args.repeats,
        **{f"{name}_conformers_per_s": round(n_total / t, 1) for name, t in best.items()},
        "pool_2_vs_1": round(best["pool_1"] / best["pool_2"], 3),
        "bare_2_vs_1": round(best["bare_1"] / best["bare_2"], 3),
        "pool_2_vs_1_paired": round(float(np.median(np.divide(times["pool_1"],
                                                              times["pool_2"]))), 3),
        "pool_2_vs_bare_1": round(best["bare_1"] / best["pool_2"], 3),
        "pool_1_overhead": round(best["pool_1"] / best["bare_1"] - 1, 3),
        "pool_2_overhead": round(best["pool_2"] / best["bare_2"] - 1, 3),
        "pool_1_cpu_overhead": round(min(cpu_times["pool_1"]) / min(cpu_times["bare_1"]) - 1, 3),
        "max_energy_difference_ev": max(float(np.abs(pool_labels[k][0] - bare[k][0]).max())
                                        for k in pool_labels),
        "max_force_difference_ev_per_a": max(float(np.abs(pool_labels[k][1] - bare[k][1]).max())
                                             for k in pool_labels),
        **machine_figures(machine),
        **restart,
        "seconds": {name: [round(t, 2) for t in values] for name, values in times.items()},
        "cpu_count": os.cpu_count(), "load_average_1min_before": load_before[0],
        "load_average_1min_after": os.getloadavg()[0],
    }
    print(f"pool 2 workers vs 1: {figures['pool_2_vs_1']}x (goal 1.9; paired median "
          f"{figures['pool_2_vs_1_paired']}x); bare tblite 2 "
          f"processes vs 1: {figures['bare_2_vs_1']}x; pool 2 vs plain loop: "
          f"{figures['pool_2_vs_bare_1']}x", file=sys.stderr)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
