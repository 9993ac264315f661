"""A named label set added to a store in place (`mlipdiv label STORE --method dft --as dft`).

The conformers to label are a stated subset (`n_molecules` molecules spread evenly over the
store's sorted InChIKeys, `conformers_per_molecule` conformers spread evenly over each
molecule's), less those the set holds already, so a rerun with a larger subset labels only
the new conformers. Molecules run in parallel worker processes like `generate` and `label`;
each finished molecule is checkpointed atomically in `<store>.labels-<name>.parts/` (its
conformer indices, energies and forces), so a run killed at any point and started again with
the same command computes only the molecules without a checkpoint. When all are done the set
is written in one atomic rewrite of the store (`store_writer.write_label_set`) and the parts
removed.
A molecule that fails is skipped with its reason and counted; its conformers stay unlabelled.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mlipdiv.atomic import atomic_path
from mlipdiv.data.generate import (
    RunSummary,
    WorkerPool,
    _check_counts,
    _checkpointed,
    _Checkpoints,
    _execute,
    _Job,
    input_store,
    relabel,
)
from mlipdiv.data.qm import QMMethod
from mlipdiv.data.store import ConformerStore
from mlipdiv.data.store_writer import check_label_set_name, write_label_set
from mlipdiv.errors import MlipdivError
from mlipdiv.files import read_json, reading
from mlipdiv.locking import input_size, locks_output


def spread(n_items: int, n_chosen: int | None) -> np.ndarray:
    """`n_chosen` indices of `n_items` spread evenly, first and last included (all: None)."""
    if n_chosen is None or n_chosen >= n_items:
        return np.arange(n_items)
    return np.unique(np.round(np.linspace(0, n_items - 1, n_chosen)).astype(np.int64))


@locks_output("store", file=True, needs=lambda a: 2 * input_size(a["store"]))
def add_label_set(
    store: str | os.PathLike,
    name: str,
    method: QMMethod,
    n_molecules: int | None = None,
    conformers_per_molecule: int | None = None,
    workers: int = 1,
    progress: bool = True,
    skip_damaged: bool = False,
) -> RunSummary:
    """Label a subset of a store's conformers with `method` as label set `name`, in place
    (resumable). `summary.n_conformers` counts the conformers labelled by this run."""
    started = time.perf_counter()
    check_label_set_name(name)
    _check_counts(workers=workers, **{k: v for k, v in (
        ("molecules", n_molecules), ("conformers_per_molecule", conformers_per_molecule))
        if v is not None})
    method.check()
    with WorkerPool(workers) as pool:  # workers start while the store is read
        with ConformerStore(store, skip_damaged=True) as opened:
            damaged = list(opened.damaged)
            if not skip_damaged:
                opened.refuse_damaged()
            keys = [opened.inchikeys[i] for i in spread(len(opened), n_molecules)]
            has_set = name in opened.label_sets()
            known = opened.label_sets().get(name, {}).get("level_of_theory")
            if has_set and known != method.level_of_theory:
                raise MlipdivError(f"{store}: label set '{name}' holds {known}, not "
                                   f"{method.level_of_theory}; choose another --as name")
            todo = {}
            for key in keys:
                chosen = spread(opened.n_conformers(key), conformers_per_molecule)
                done = opened.label_mask(key, name) if has_set else np.zeros(0, bool)
                todo[key] = chosen[~done[chosen]] if has_set else chosen
            costs = {key: len(todo[key]) * len(opened.atomic_numbers(key)) ** 2 for key in keys}
            checksum = opened.checksum()
        settings = {"command": "label --as", "store": os.path.abspath(store), "checksum": checksum,
                    "name": name, "method": asdict(method), "molecules": n_molecules,
                    "conformers_per_molecule": conformers_per_molecule}
        base = Path(store).with_name(f"{Path(store).name}.labels-{name}")
        checkpoints = _Checkpoints(base, settings)
        jobs = [_Job(i, key, str(checkpoints.directory), (str(store), key, todo[key], method),
                     costs[key]) for i, key in enumerate(keys) if len(todo[key])]
        summary = RunSummary(f"label --as {name}", str(store), method.level_of_theory)
        summary.skipped.update({f"damaged in {store} ({key})": 1 for key in damaged})
        finished = checkpoints.finished()
        summary.n_resumed = sum(1 for job in jobs if job.index in finished)
        todo_jobs = sorted((job for job in jobs if job.index not in finished),
                           key=lambda job: -job.cost)
        for _ in _execute(_label_set_job, todo_jobs, pool, progress):
            pass
    labels = {}
    for job in jobs:
        outcome = _load_labels(checkpoints.directory, job.index)
        if isinstance(outcome, str):
            summary.skipped[outcome] += 1
            continue
        labels[job.name] = outcome
        summary.n_molecules += 1
        summary.n_conformers += len(outcome[0])
    write_label_set(store, name, {"level_of_theory": method.level_of_theory,
                                  "method": asdict(method)}, labels)
    checkpoints.remove()
    summary.seconds = time.perf_counter() - started
    return summary


def _label_set_job(job: _Job):
    store_path, inchikey, indices, method = job.payload

    def make():
        record = relabel(input_store(store_path).molecule(inchikey, indices), method)
        return np.asarray(indices), record.energy, record.forces

    return _checkpointed(job, make, _save_labels)


def _save_labels(path: Path, result) -> None:
    indices, energy, forces = result
    with atomic_path(path, prepared=True) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, indices=indices, energy=energy, forces=forces)


def _load_labels(directory: Path, index: int):
    """(indices, energies, forces) of a checkpointed molecule, or its skip reason."""
    part = directory / f"{index:06d}.npz"
    remedy = "remove it and rerun (that molecule is computed again)"
    if not part.exists():
        note = directory / f"{index:06d}.skip.json"
        return str(read_json(note, "molecule checkpoint", remedy)["reason"])
    with reading(part, "molecule checkpoint", remedy), np.load(part) as data:
        return data["indices"], data["energy"], data["forces"]


@locks_output("store", file=True, needs=lambda a: 2 * input_size(a["store"]))
def import_label_set(store: str | os.PathLike, name: str, other: str | os.PathLike,
                     tolerance: float = 1e-4) -> RunSummary:
    """Add the default labels of another store (another level of theory of the same
    conformers: a dataset imported twice with different --energy-key/--forces-key) as label
    set `name`. A conformer is matched by molecule and positions (every coordinate within
    `tolerance` Angstrom); conformers without a match stay unlabelled and are counted."""
    started = time.perf_counter()
    check_label_set_name(name)
    with ConformerStore(other) as source:
        provenance = {"level_of_theory": source.level_of_theory, "imported_from": str(other)}
        summary = RunSummary(f"label --as {name} --from {other}", str(store),
                             source.level_of_theory)
        labels = {}
        with ConformerStore(store) as target:
            for key in target.inchikeys:
                if key not in source:
                    summary.skipped[f"not in {other}"] += 1
                    continue
                numbers, positions = target.geometry(key)
                record = source.molecule(key)
                if not record.has_forces or not np.array_equal(record.atomic_numbers, numbers):
                    summary.skipped[f"{other}: no forces or another atom order"] += 1
                    continue
                found = [np.flatnonzero(np.abs(record.positions - xyz).max(axis=(1, 2))
                                        <= tolerance)[:1] for xyz in positions]
                pairs = np.array([(i, hit[0]) for i, hit in enumerate(found) if len(hit)],
                                 dtype=np.int64).reshape(-1, 2)
                summary.skipped["conformers without a match"] += len(positions) - len(pairs)
                if len(pairs):
                    labels[key] = (pairs[:, 0], record.energy[pairs[:, 1]],
                                   record.forces[pairs[:, 1]])
                    summary.n_molecules += 1
                    summary.n_conformers += len(pairs)
    summary.skipped = +summary.skipped  # drop zero counts
    write_label_set(store, name, provenance, labels)
    summary.seconds = time.perf_counter() - started
    return summary
