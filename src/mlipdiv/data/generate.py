"""QM data generation (`mlipdiv generate`) and relabelling (`mlipdiv label`).

Pipeline per molecule: SMILES -> stereo fixed, hydrogens added -> conformers sampled
(`mlipdiv.data.sampling`) -> atoms put in canonical order (`identity_of`, as imports do) ->
energies and forces from the QM method -> one checkpoint file.

Molecules run in parallel worker processes (one tblite/BLAS thread each), started as the run
begins so that their start-up overlaps the input check (which they share as they come up); a
job is one molecule, its conformers labelled on one tblite calculator, and small molecules go
to a worker several at a time (`_Batches`: ~0.1 s of work a task, by the measured rate).
Every finished molecule is written atomically as its own small `.npz` file in `<out>.parts/`
(a skipped one as a small JSON note with the reason), so a run killed at any point and started
again with the same command does only the molecules that have no checkpoint yet. While
workers run, the parent adds finished parts to `<out>.tmp` in a fixed order; when all are
done it is renamed to `<out>` and the parts directory removed. A molecule that fails
(embedding, SCF, non-finite energy, ...) is skipped with a logged reason and counted; it never
stops the run. Worker processes are started with forkserver, so a script that calls
`generate` or `label_store` with workers > 1 must do so under `if __name__ == "__main__":`.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
import shutil
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
from rdkit import Chem

from mlipdiv.atomic import atomic_path, prepare_folder, write_json_atomic
from mlipdiv.data.identity import PerceptionError, adjacency, identity_of
from mlipdiv.data.importer import MISMATCH_FLAG
from mlipdiv.data.options import GenerateOptions
from mlipdiv.data.qm import LabelError, QMMethod
from mlipdiv.data.sampling import SAMPLERS, SamplingError, prepare_molecule, sample_conformers
from mlipdiv.data.sources import MoleculeEntry, MoleculeFilter, describe_source, select_molecules
from mlipdiv.data.store import ConformerStore, DamagedStoreError, MoleculeRecord, checksum_of
from mlipdiv.data.store_writer import StoreWriter
from mlipdiv.errors import FieldError, MlipdivError, check_seed, first_line
from mlipdiv.files import read_json, reading
from mlipdiv.locking import input_size, locks_output
from mlipdiv.workers import init_worker

log = logging.getLogger(__name__)

SETTINGS_FILE = "settings.json"
DUPLICATE = "same molecule as an earlier one"


@dataclass
class RunSummary:
    """What a generate/label run did: counts, skipped molecules and filtered entries by reason."""

    command: str
    out: str
    level_of_theory: str
    n_molecules: int = 0
    n_conformers: int = 0
    n_flagged: int = 0
    n_resumed: int = 0
    skipped: Counter = field(default_factory=Counter)
    filtered: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def as_dict(self) -> dict:
        # asdict would rebuild the Counters from (key, value) pairs, so they are copied here.
        return {**asdict(self), "skipped": dict(self.skipped), "filtered": dict(self.filtered),
                "n_skipped": self.n_skipped}

    def text(self) -> str:
        """Human-readable summary, one fact per line."""
        lines = [
            f"{self.command}: {self.out} ({self.level_of_theory}, {self.seconds:.1f} s)",
            f"molecules: {self.n_molecules} ({self.n_resumed} taken from checkpoints)",
            f"conformers: {self.n_conformers} ({self.n_flagged} flagged {MISMATCH_FLAG})",
            f"skipped molecules: {self.n_skipped}",
        ]
        lines += [f"  {reason}: {n}" for reason, n in sorted(self.skipped.items())]
        if self.filtered:
            lines.append(f"source entries filtered out: {sum(self.filtered.values())}")
            lines += [f"  {reason}: {n}" for reason, n in sorted(self.filtered.items())]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Job:
    index: int
    name: str
    parts: str
    payload: tuple
    cost: float = 0.0  # rough relative QM cost, to start the longest molecules first


def generate_molecule(entry: MoleculeEntry, options: GenerateOptions, seed: int) -> MoleculeRecord:
    """Sample and label the conformers of one molecule; atoms in canonical order.

    Raises SamplingError, PerceptionError or LabelError with the reason when it cannot.
    """
    method = replace(options.method, charge=entry.charge)
    mol = prepare_molecule(entry.smiles)
    conformers = sample_conformers(
        mol, options.conformers, options.sampler, options.temperature, method, seed
    )
    reference_graph = Chem.GetAdjacencyMatrix(mol).astype(bool)
    identity = identity_of(Chem.Mol(mol))
    order = identity.canonical_order
    numbers = np.array([atom.GetAtomicNum() for atom in mol.GetAtoms()])
    positions = conformers.positions[:, order]
    energy, forces = method.label_many(numbers[order], positions)
    flags = [
        "" if np.array_equal(graph, reference_graph) else MISMATCH_FLAG
        for graph in adjacency(numbers, conformers.positions)
    ]
    n_conf = len(positions)
    return MoleculeRecord(
        identity.inchikey, identity.smiles, identity.formula, numbers[order], positions,
        energy, forces,
        sampler=np.array(conformers.sampler, dtype=object),
        temperature=np.array(conformers.temperature, dtype=float),
        source=np.full(n_conf, entry.name, dtype=object),
        flags=np.array(flags, dtype=object),
    )


@locks_output("out", file=True)
def generate(
    source: str,
    out: str | os.PathLike,
    n_molecules: int,
    options: GenerateOptions,
    molecule_filter: MoleculeFilter | None = None,
    workers: int = 1,
    progress: bool = True,
) -> RunSummary:
    """Generate a labelled store from `n_molecules` molecules of a source (resumable);
    `molecule_filter` None accepts every neutral molecule of supported elements."""
    started = time.perf_counter()
    molecule_filter = molecule_filter or MoleculeFilter()
    _check_counts(n_molecules=n_molecules, conformers=options.conformers, workers=workers)
    check_seed(options.seed)
    options.method.check()
    if options.sampler not in SAMPLERS:
        raise FieldError("data.sampler", options.sampler, f"choose from {', '.join(SAMPLERS)}")
    if not options.temperature > 0:
        raise FieldError("data.temperature", options.temperature, "must be above 0 K")
    with WorkerPool(workers) as pool:  # workers start while molecules are chosen
        selection = select_molecules(source, n_molecules, molecule_filter, options.seed)
        for name, reason in selection.skipped_names:
            log.warning("skipped %s: %s", name, reason)
        settings = {
            "command": "generate", "source": describe_source(source), "sampler": options.sampler,
            "temperature": options.temperature, "conformers": options.conformers,
            "seed": options.seed, "method": asdict(options.method), **molecule_filter.describe(),
        }
        if not selection.entries:  # nothing to generate: say why, and write nothing
            reasons = {**selection.filtered, **selection.skipped}
            raise MlipdivError(f"generate {describe_source(source)}: no molecule passes the "
                               f"filters ({_reasons(reasons) or 'the source is empty'})")
        checkpoints = _Checkpoints(out, settings)
        jobs = [
            _Job(i, entry.name, str(checkpoints.directory),
                 (entry, options, _molecule_seed(options.seed, i)), float(entry.n_atoms) ** 2)
            for i, entry in enumerate(selection.entries)
        ]
        summary = RunSummary("generate", str(out), options.method.level_of_theory)
        summary.filtered.update(selection.filtered)
        attrs = {"sampler": options.sampler, "temperature": options.temperature,
                 "source": str(source), "seed": options.seed}
        _run(_generate_job, jobs, pool, checkpoints, summary, attrs, progress)
    summary.skipped.update(selection.skipped)
    summary.seconds = time.perf_counter() - started
    if summary.n_molecules == 0:  # every molecule failed: an empty store is no result
        Path(out).unlink(missing_ok=True)
        raise MlipdivError(f"generate: no molecule could be generated into {out} "
                           f"({_reasons(summary.skipped)})")
    return summary


def _reasons(counts: dict) -> str:
    """"reason: n" items, most frequent first."""
    return "; ".join(f"{reason}: {n}" for reason, n in
                     sorted(counts.items(), key=lambda item: -item[1]))


@locks_output("out", file=True, needs=lambda a: 2 * input_size(a["store_in"]))
def label_store(
    store_in: str | os.PathLike,
    out: str | os.PathLike,
    method: QMMethod,
    workers: int = 1,
    progress: bool = True,
    skip_damaged: bool = False,
) -> RunSummary:
    """Relabel every conformer of a store with `method` (only positions are used; provenance
    is kept). Parallel over molecules and resumable like `generate`. With `skip_damaged`,
    the input's damaged molecules are left out and counted in `skipped`, by name."""
    started = time.perf_counter()
    _check_counts(workers=workers)
    method.check()
    with WorkerPool(workers) as pool:  # workers start while the input is checked
        # the whole input is checked first, so damage stops the run before any work and a
        # rerun with --skip-damaged resumes the same checkpoints; the check reads every
        # dataset (~1 ms a molecule), so the workers share it as they come up
        keys = input_store(str(store_in)).inchikeys
        surveyed = pool.map_shared(functools.partial(_survey, str(store_in)), keys)
        damaged = [entry.key for entry in surveyed if entry.damage is not None]
        if damaged and not skip_damaged:
            raise next(entry.damage for entry in surveyed if entry.damage is not None)
        kept = [entry for entry in surveyed if entry.damage is None]
        if damaged and not kept:
            raise MlipdivError(f"{store_in}: every molecule of the store is damaged")
        checksum = checksum_of(entry.checksum_piece for entry in kept)
        costs = {entry.key: entry.cost for entry in kept}
        settings = {"command": "label", "store": os.path.abspath(store_in), "checksum": checksum,
                    "method": asdict(method)}
        checkpoints = _Checkpoints(out, settings)
        jobs = [_Job(i, key, str(checkpoints.directory), (str(store_in), key, method), cost)
                for i, (key, cost) in enumerate(costs.items())]
        summary = RunSummary("label", str(out), method.level_of_theory)
        summary.skipped.update({f"damaged in {store_in} ({key})": 1 for key in damaged})
        _run(_label_job, jobs, pool, checkpoints, summary, {"labelled_from": str(store_in)},
             progress)
    summary.seconds = time.perf_counter() - started
    return summary


def relabel(record: MoleculeRecord, method: QMMethod) -> MoleculeRecord:
    """The same conformers with energies and forces from `method` (charge from the SMILES)."""
    parsed = Chem.MolFromSmiles(record.smiles) if record.smiles else None
    charge = Chem.GetFormalCharge(parsed) if parsed is not None else 0
    energy, forces = replace(method, charge=charge).label_many(
        record.atomic_numbers, record.positions
    )
    return replace(record, energy=energy, forces=forces)


def _generate_job(job: _Job) -> MoleculeRecord | str:
    entry, options, seed = job.payload
    return _checkpointed(job, lambda: generate_molecule(entry, options, seed))


def _label_job(job: _Job) -> MoleculeRecord | str:
    store_path, inchikey, method = job.payload
    return _checkpointed(job, lambda: relabel(input_store(store_path).molecule(inchikey),
                                              method))


@dataclass(frozen=True)
class _Surveyed:
    """One input molecule as the run's check found it."""

    key: str
    damage: MlipdivError | None  # what is damaged (its one-line error), or None
    checksum_piece: bytes = b""
    cost: float = 0.0  # conformers x atoms^2, to start the longest molecules first


def _survey(path: str, keys: Sequence[str]) -> list[_Surveyed]:
    """Check molecules of an input store (`ConformerStore.checked_molecule`: every dataset
    read) and read what the run needs of the sound ones."""
    store = input_store(path)
    surveyed = []
    for key in keys:
        try:
            record = store.checked_molecule(key)
        except MlipdivError as damage:
            surveyed.append(_Surveyed(key, damage))
            continue
        cost = record.n_conformers * record.n_atoms ** 2  # from the record the check read
        surveyed.append(_Surveyed(key, None, store.checksum_piece(key), float(cost)))
    return surveyed


_input_stores: dict[str, ConformerStore] = {}


def input_store(path: str) -> ConformerStore:
    """A run's input store, opened once per process for all its jobs (`WorkerPool` closes it
    when the run ends): opening lists every molecule, so one open per job made a run over a
    store of many small molecules quadratic (20 ms a job at 20,000 molecules)."""
    store = _input_stores.get(path)
    if store is None:
        store = _input_stores[path] = ConformerStore(path)
    return store


def _close_input_stores() -> None:
    while _input_stores:
        _input_stores.popitem()[1].close()


def _checkpointed(job: _Job, make: Callable[[], MoleculeRecord],
                  save: Callable[[Path, object], None] | None = None) -> MoleculeRecord | str:
    """Run one molecule and checkpoint its record (with `save`: whatever `make` returns, as
    `save(path, result)`), or its skip reason; returns either."""
    try:
        record = make()
    except DamagedStoreError:  # the input store, not the molecule: stop (or --skip-damaged)
        raise
    except (SamplingError, PerceptionError, LabelError, MlipdivError) as exc:
        reason = str(exc)
    except Exception as exc:  # one bad molecule must never end the run
        reason = f"unexpected {first_line(exc, with_type=True)}"
    else:
        (save or _save_part)(Path(job.parts) / f"{job.index:06d}.npz", record)
        return record
    write_json_atomic(Path(job.parts) / f"{job.index:06d}.skip.json", {"name": job.name,
                                                                  "reason": reason})
    return reason


def _run(worker: Callable[[_Job], MoleculeRecord | str], jobs: Sequence[_Job], pool: WorkerPool,
         checkpoints: _Checkpoints, summary: RunSummary, attrs: dict, progress: bool) -> None:
    """Run the jobs that have no checkpoint while the store is assembled from the finished
    ones, then move the store into place and remove the parts."""
    # Longest first, so no worker is left with a big molecule while the others idle.
    ordered = sorted(jobs, key=lambda job: -job.cost)
    finished: dict[int, MoleculeRecord | str | None] = dict.fromkeys(checkpoints.finished())
    summary.n_resumed = sum(1 for job in jobs if job.index in finished)
    pending = deque(job.index for job in ordered)
    todo = [job for job in ordered if job.index not in finished]
    with StoreWriter(checkpoints.out, summary.level_of_theory, extra_attrs=attrs) as writer:
        checkpoints.add_ready(writer, pending, finished, summary)
        for job, outcome in _execute(worker, todo, pool, progress):
            if isinstance(outcome, str):
                log.warning("skipped %s: %s", job.name, outcome)
            finished[job.index] = outcome
            checkpoints.add_ready(writer, pending, finished, summary)
    checkpoints.remove()


def _execute(worker: Callable[[_Job], MoleculeRecord | str], jobs: Sequence[_Job],
             pool: WorkerPool, progress: bool):
    """Yield (job, outcome) as jobs finish, in `pool`'s processes when it has any."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task("molecules", total=len(jobs))
        executor = pool.executor()
        if executor is None or len(jobs) <= 1:
            for job in jobs:
                yield job, worker(job)
                bar.advance(task)
            return
        resume = (f"finished molecules are checkpointed in {Path(jobs[0].parts)}, rerun the "
                  "same command to resume")
        batches, running = _Batches(jobs, pool.workers), {}
        while batches.queue or running:
            while batches.queue and len(running) < 2 * pool.workers:  # one queued per worker
                batch = batches.next()
                running[executor.submit(_run_batch, worker, batch)] = batch
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                batch = running.pop(future)
                outcomes, seconds = _result(future, resume)
                batches.learn(batch, seconds)
                for job, outcome in zip(batch, outcomes, strict=True):
                    yield job, outcome
                    bar.advance(task)


# A task sent to a worker holds molecules worth about this many seconds (at the rate measured
# so far): the round trip of a task costs ~1 ms of the parent's and the worker's time, as
# much as a small molecule's GFN2-xTB single point, and an interrupt waits for the running
# tasks, so a task is no longer than this (or one molecule).
BATCH_SECONDS = 0.1
MAX_BATCH = 64


def _run_batch(worker: Callable[[_Job], MoleculeRecord | str],
               batch: Sequence[_Job]) -> tuple[list, float]:
    """A worker's task: the outcomes of consecutive jobs and the seconds they took."""
    started = time.perf_counter()
    return [worker(job) for job in batch], time.perf_counter() - started


class _Batches:
    """Jobs (longest first) grouped into tasks: one job a task until one has finished, then
    consecutive jobs up to BATCH_SECONDS by the measured seconds per unit of cost, and never
    more than the remaining work split four ways per worker, so the last tasks are single
    small molecules and the workers finish together."""

    def __init__(self, jobs: Sequence[_Job], workers: int):
        self.queue = deque(jobs)
        self.workers = workers
        self.remaining = sum(job.cost for job in jobs)
        self.cost = self.seconds = 0.0  # of the finished tasks

    def learn(self, batch: Sequence[_Job], seconds: float) -> None:
        self.cost += sum(job.cost for job in batch)
        self.seconds += seconds

    def next(self) -> list[_Job]:
        batch = [self.queue.popleft()]
        if self.cost > 0 and self.seconds > 0:
            rate = self.seconds / self.cost
            limit = min(BATCH_SECONDS, rate * self.remaining / (4 * self.workers))
            spent = rate * batch[0].cost
            while (self.queue and len(batch) < MAX_BATCH
                   and spent + rate * self.queue[0].cost <= limit):
                spent += rate * self.queue[0].cost
                batch.append(self.queue.popleft())
        self.remaining -= sum(job.cost for job in batch)
        return batch


def _result(future: Future, resume: str):
    """A worker's result; a worker that died is one line, ending in how to `resume`."""
    try:
        return future.result()
    except BrokenProcessPool:
        raise MlipdivError(f"a worker process died (out of memory or killed); {resume}"
                           ) from None


class WorkerPool:
    """The worker processes of one run (none for one worker: jobs then run in the caller),
    started in a background thread as soon as the run begins, so their start-up (forkserver,
    imports, ~0.3 s) overlaps the parent's own preparation (input check, molecule selection)
    instead of adding to it. One tblite/BLAS thread per worker: parallelism comes from the
    processes. Workers die with the command; leaving the block drops queued jobs (an
    interrupt does not compute them all first), waits for the running ones and closes the
    input stores the jobs opened (`input_store`)."""

    def __init__(self, workers: int):
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        self._starting: threading.Thread | None = None

    def __enter__(self) -> WorkerPool:
        if self.workers > 1:
            # forkserver, not fork: a parent that already ran OpenMP code cannot fork safely.
            # Importing tblite loads OpenMP without starting threads, so preloading it is safe.
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([__name__, "tblite.interface"])
            self._executor = ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=init_worker,
                initargs=(1, os.getpid()))
            self._starting = threading.Thread(target=self._start, daemon=True,
                                              name="mlipdiv-start-workers")
            self._starting.start()
        return self

    def _start(self) -> None:
        # a submit starts a process while none is idle: one no-op per worker starts them all
        try:
            for _ in range(self.workers):
                self._executor.submit(os.getpid)
        except Exception:  # noqa: BLE001 - the first job's submit meets it again, in the caller
            pass

    def executor(self) -> ProcessPoolExecutor | None:
        """The started pool (None for one worker)."""
        if self._starting is not None:
            self._starting.join()
        return self._executor

    def map_shared(self, function: Callable[[list], list], items: Sequence) -> list:
        """`function` over consecutive chunks of `items`, its lists joined in order. The
        calling process works through chunks from the end while the workers, once up, take
        them from the front: a short pass (the input check) is neither serial nor kept
        waiting for the workers' start."""
        n_chunks = max(1, min(8 * (self.workers + 1), len(items) // 8))
        bounds = np.linspace(0, len(items), n_chunks + 1).astype(int)
        chunks = [list(items[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        results: list[list | None] = [None] * n_chunks
        todo, running = deque(range(n_chunks)), {}
        while todo or running:
            started = self._starting is None or not self._starting.is_alive()
            while self._executor is not None and started and todo \
                    and len(running) < self.workers:
                index = todo.popleft()
                running[self._executor.submit(function, chunks[index])] = index
            if todo:
                index = todo.pop()
                results[index] = function(chunks[index])
            elif running:
                wait(running, return_when=FIRST_COMPLETED)
            for future in [future for future in running if future.done()]:
                results[running.pop(future)] = _result(future, "rerun the same command")
        return [item for chunk in results for item in chunk]

    def __exit__(self, *exc) -> None:
        executor = self.executor()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        _close_input_stores()  # of jobs run in this process (workers' close as they exit)


class _Checkpoints:
    """The `<out>.parts/` directory: one file per finished (or skipped) molecule."""

    def __init__(self, out: str | os.PathLike, settings: dict):
        self.out = Path(out)
        self.directory = self.out.with_name(self.out.name + ".parts")
        self.directory.mkdir(parents=True, exist_ok=True)
        settings_path = self.directory / SETTINGS_FILE
        settings = json.loads(json.dumps(settings, default=str))
        if settings_path.exists():
            previous = read_json(settings_path, "generate checkpoint settings",
                                 "remove the directory and rerun")
            changed = sorted(k for k in settings.keys() | previous.keys()
                             if settings.get(k) != previous.get(k))
            if changed:
                raise MlipdivError(
                    f"{self.directory}: checkpoints of a different run (differs in "
                    f"{', '.join(changed)}); rerun the same command or remove the directory"
                )
        else:
            write_json_atomic(settings_path, settings)
        # once here, not per checkpoint: listing a folder of n parts n times is quadratic
        prepare_folder(self.directory)

    def finished(self) -> set[int]:
        """Indices of molecules with a record or a skip note."""
        return {int(path.name.split(".")[0]) for path in self.directory.iterdir()
                if path.name[:6].isdigit() and not path.name.endswith(".tmp")}

    def add_ready(self, writer: StoreWriter, pending: deque[int],
                  finished: dict[int, MoleculeRecord | str | None], summary: RunSummary) -> None:
        """Add the finished molecules at the head of `pending` to the store, in that order (so
        the store does not depend on which worker finished first). `finished` maps an index to
        its record or skip reason, or to None for one that is on disk only."""
        while pending and pending[0] in finished:
            index = pending.popleft()
            outcome = finished.pop(index)
            if outcome is None:
                outcome = self._load(index)
            if isinstance(outcome, str):
                summary.skipped[outcome] += 1
            elif outcome.inchikey in writer:
                log.warning("skipped %s: %s", outcome.source[0], DUPLICATE)
                summary.skipped[DUPLICATE] += 1
            else:
                writer.add(outcome)
                summary.n_molecules += 1
                summary.n_conformers += outcome.n_conformers
                summary.n_flagged += sum(MISMATCH_FLAG in str(f) for f in outcome.flags)

    def _load(self, index: int) -> MoleculeRecord | str:
        part = self.directory / f"{index:06d}.npz"
        remedy = "remove it and rerun (that molecule is computed again)"
        if part.exists():
            with reading(part, "molecule checkpoint", remedy):
                return _load_part(part)
        note = self.directory / f"{index:06d}.skip.json"
        with reading(note, "molecule checkpoint", remedy):
            return str(read_json(note, "molecule checkpoint", remedy)["reason"])

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _save_part(path: Path, record: MoleculeRecord) -> None:
    """A molecule checkpoint: its record as plain arrays in an .npz (strings as unicode, so
    loading needs no pickle), written atomically."""
    arrays = {}
    for item in fields(record):
        value = getattr(record, item.name)
        if value is not None:
            arrays[item.name] = np.asarray(value, dtype=str if _is_text(value) else None)
    with atomic_path(path, prepared=True) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def _load_part(path: Path) -> MoleculeRecord:
    with np.load(path) as data:
        values = {name: data[name] for name in data.files}
    for name, value in values.items():
        if value.dtype.kind == "U":
            values[name] = str(value) if value.ndim == 0 else value.astype(object)
    return MoleculeRecord(**values)


def _is_text(value) -> bool:
    return isinstance(value, str) or (isinstance(value, np.ndarray) and value.dtype.kind == "O")


def _molecule_seed(seed: int, index: int) -> int:
    """A seed per molecule that depends only on the run seed and the molecule's position."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if value < 1:
            raise FieldError(name, value, "must be at least 1")
