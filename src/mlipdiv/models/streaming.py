"""Training on a store too large to hold as graphs: `StoreTrainingSet`.

The in-memory path (`train_run.train` on records) prepares every conformer's graph once and
keeps them all. A `StoreTrainingSet` instead reads its conformers from the HDF5 store when a
batch needs them and prepares that batch's graphs (neighbour lists) in
`torch.utils.data.DataLoader` worker processes, a few batches ahead (MACE's and graph-pes's
large-set loaders work this way: a lazy dataset, graphs built in the loader's workers). The
main process only collates the prepared items and trains.

What it holds, whatever the store's size: the store's path, the selection as two int32
arrays (molecule, conformer: 8 bytes a conformer, the only O(n) memory) and each molecule's
atomic numbers. Peak memory is then the model, the optimiser and `workers * prefetch`
batches in flight, independent of the number of conformers.

Order: the batches are those of the in-memory path (`training.batch_orders`: the same
permutation per pass from the same seed, the same resumption from the step count), and a
batch is prepared and collated as the in-memory one, so training on a `StoreTrainingSet`
gives the weights of training on the same conformers in memory.

Statistics (`scan`): one pass over the selection, a molecule at a time in chunks of
conformers (bounded memory), computes over ALL of it (as MACE does) the data fingerprint
(byte for byte the in-memory `data_fingerprint`), the force RMS and mean neighbour count
(`training_statistics`) and the E0 fit's sufficient statistics (conformers and energy sum
per molecule: `e0.fit_e0_grouped`). The default label set is trained (named label sets are
not streamed).
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from mlipdiv.allocator import keep_freed_memory
from mlipdiv.data.store import ConformerStore
from mlipdiv.errors import FieldError, MlipdivError
from mlipdiv.models.base import Batch, Conformer, Potential, default_dtype
from mlipdiv.models.e0 import E0Fit, fit_e0_grouped

if TYPE_CHECKING:
    from mlipdiv.models.spec import TrainingSpec

# loader workers preparing graphs: half the CPUs (the other half trains), 1 to 4
DEFAULT_WORKERS = max(1, min(4, (os.cpu_count() or 2) // 2))
PREFETCH = 4  # batches each worker prepares ahead
SCAN_PAIRS = 2_000_000  # atom pairs per chunk of the statistics pass (~50 MB of distances)


@dataclass(frozen=True)
class MoleculeSummary:
    """What the training checks need of one molecule of the selection, without its arrays:
    the attributes `train_run` reads of a `MoleculeRecord` (duck-typed alike)."""

    inchikey: str
    atomic_numbers: np.ndarray
    n_conformers: int
    labelled: bool
    has_forces: bool

    @property
    def n_atoms(self) -> int:
        return len(self.atomic_numbers)


@dataclass(frozen=True)
class TrainingScan:
    """The whole-selection figures of one pass (`StoreTrainingSet.scan`)."""

    fingerprint: str
    force_rms: float
    avg_num_neighbors: float
    energy_sums: tuple[float, ...]  # per molecule of the selection, for the E0 fit

    @property
    def stats(self) -> dict:
        """`training_statistics`' dict."""
        return {"force_rms": self.force_rms, "avg_num_neighbors": self.avg_num_neighbors}


class StoreTrainingSet(Sequence[Conformer]):
    """The conformers of a store (all, or the given (inchikey, conformer) pairs grouped by
    molecule in first-seen order, as `ConformerStore.select`), read on demand; the training
    set of `train_run.train` when it should not be held in memory. `workers` loader
    processes (0: in the training process; default DEFAULT_WORKERS) each prepare `prefetch`
    batches ahead. Each process opens its own store handle (reopened after a fork)."""

    def __init__(self, path: str | os.PathLike, pairs: Iterable[tuple[str, int]] | None = None,
                 workers: int | None = None, prefetch: int = PREFETCH):
        self.path = Path(path)
        self.workers = DEFAULT_WORKERS if workers is None else int(workers)
        if self.workers < 0:
            raise MlipdivError(f"loader workers: {self.workers}; give 0 (in process) or more")
        self.prefetch = max(1, int(prefetch))
        self._handle: tuple[int, ConformerStore] | None = None
        store = self._store()
        if pairs is None:
            counts = store.conformer_counts()
            selected = {key: np.arange(n, dtype=np.int32) for key, n in counts.items()}
        else:
            selected = _grouped(store, pairs)
        self.summaries: list[MoleculeSummary] = []
        for key, indices in selected.items():
            kind = store.label_kind(key)
            self.summaries.append(MoleculeSummary(
                key, store.atomic_numbers(key).astype(np.int64), len(indices),
                kind != "none", kind == "energy+forces"))
        sizes = [len(indices) for indices in selected.values()]
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.molecule_index = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
        self.conformer_index = (np.concatenate(list(selected.values())).astype(np.int32)
                                if sizes else np.zeros(0, dtype=np.int32))

    # ---- the store handle, one per process
    def _store(self) -> ConformerStore:
        if self._handle is None or self._handle[0] != os.getpid():
            self._handle = (os.getpid(), ConformerStore(self.path))
        return self._handle[1]

    def close(self) -> None:
        """Close this process's store handle (reopened by the next read)."""
        if self._handle is not None and self._handle[0] == os.getpid():
            self._handle[1].close()
        self._handle = None

    def __getstate__(self) -> dict:  # a spawned worker opens its own handle
        return {**self.__dict__, "_handle": None}

    # ---- the Sequence of conformers
    def __len__(self) -> int:
        return len(self.molecule_index)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return self.conformers(np.arange(len(self))[index])
        if not -len(self) <= index < len(self):
            raise IndexError(f"conformer {index} of {len(self)}")
        return self.conformers([index % len(self)])[0]

    def conformers(self, indices: Sequence[int] | np.ndarray) -> list[Conformer]:
        """The conformers at positions `indices` of the set, in that order, read one
        molecule at a time (as `train_run.training_conformers` makes them: energy-only
        conformers carry NaN forces)."""
        indices = np.asarray(indices, dtype=np.int64)
        store, out = self._store(), [None] * len(indices)
        molecules = self.molecule_index[indices]
        for molecule in np.unique(molecules):
            where = np.flatnonzero(molecules == molecule)
            summary = self.summaries[molecule]
            arrays = store.read_arrays(summary.inchikey, ("positions", "energy", "forces"),
                                       self.conformer_index[indices[where]])
            if not summary.labelled:
                raise MlipdivError(f"{self.path}: molecule {summary.inchikey} has no labels")
            forces = arrays["forces"]
            if forces is None:
                forces = np.full(arrays["positions"].shape, np.nan)
            for k, position in enumerate(where):
                out[position] = Conformer(summary.atomic_numbers, arrays["positions"][k],
                                          float(arrays["energy"][k]), forces[k])
        return out  # type: ignore[return-value]

    # ---- the training stream (training.StreamedItems)
    def stream(self, potential: Potential, orders: Iterator[np.ndarray]) -> Iterator[Batch]:
        """The batches of `orders`, their graphs prepared `prefetch` batches ahead in
        `workers` DataLoader processes and collated here, on the potential's device."""
        if self.workers:
            self.close()  # the workers open their own; none is inherited across the fork
        loader = torch.utils.data.DataLoader(
            _PreparedBatches(self, potential), batch_size=None, sampler=_Orders(orders),
            num_workers=self.workers, collate_fn=_as_is, worker_init_fn=_one_thread,
            prefetch_factor=self.prefetch if self.workers else None)
        batches = iter(loader)
        try:
            for items in batches:
                if isinstance(items, _Failure):
                    raise MlipdivError(items.message)
                yield potential.collate(pickle.loads(items) if isinstance(items, bytes)
                                        else items)
        finally:
            del batches  # ends the workers

    # ---- whole-selection figures
    def scan(self, cutoff: float) -> TrainingScan:
        """Fingerprint, force RMS, mean neighbours within `cutoff` and per-molecule energy
        sums over the whole selection, a chunk of conformers at a time (see the module)."""
        store, digest = self._store(), hashlib.sha256()
        squares, components, neighbours, atoms = 0.0, 0, 0, 0
        sums = []
        for molecule, summary in enumerate(self.summaries):
            indices = self.conformer_index[self._offsets[molecule]:self._offsets[molecule + 1]]
            chunk = max(1, SCAN_PAIRS // max(1, summary.n_atoms) ** 2)
            digest.update(summary.inchikey.encode())
            digest.update(np.ascontiguousarray(summary.atomic_numbers).tobytes())
            for part in _chunks(indices, chunk):
                positions = store.read_arrays(summary.inchikey, ("positions",), part)
                positions = positions["positions"]
                digest.update(np.ascontiguousarray(positions).tobytes())
                neighbours += _neighbours(positions, cutoff)
                atoms += positions.shape[0] * positions.shape[1]
            if summary.labelled:
                energy = store.read_arrays(summary.inchikey, ("energy",), _selection(indices))
                digest.update(np.ascontiguousarray(energy["energy"]).tobytes())
                sums.append(float(energy["energy"].sum()))
            else:
                sums.append(0.0)
            if summary.has_forces:
                for part in _chunks(indices, chunk):
                    forces = store.read_arrays(summary.inchikey, ("forces",), part)["forces"]
                    digest.update(np.ascontiguousarray(forces).tobytes())
                    squares += float(np.sum(forces ** 2))
                    components += forces.size
        # energy-only training sets (`mask_missing_forces`) have no force scale: 1 eV/A
        force_rms = float(np.sqrt(squares / components)) if components else 1.0
        return TrainingScan(digest.hexdigest(), force_rms, neighbours / max(atoms, 1),
                            tuple(sums))

    def fit_e0(self, scan: TrainingScan) -> E0Fit:
        """The least-squares E0s of `e0.fit_e0` on this set, from the scan's energy sums."""
        if not self.summaries or not all(s.labelled for s in self.summaries):
            raise MlipdivError("E0 fit: the training set must be non-empty and labelled")
        elements = sorted({int(z) for s in self.summaries for z in s.atomic_numbers})
        return fit_e0_grouped(elements, [s.atomic_numbers for s in self.summaries],
                              [s.n_conformers for s in self.summaries], scan.energy_sums)


def streamed_training_set(path: str | os.PathLike, spec: TrainingSpec) -> StoreTrainingSet:
    """The `StoreTrainingSet` of every conformer of the store at `path`, with the spec's
    loader workers; FieldError("train") for a file that is not a store (.h5): other formats
    are imported to a store first (`mlipdiv import`)."""
    path = Path(path)
    if not path.exists():
        raise FieldError("train", path, "no such store")
    if path.suffix not in (".h5", ".hdf5"):
        raise FieldError("train", path, "streaming reads a store (.h5); import the file "
                         "first (`mlipdiv import`) or train without stream")
    spec.run_size()  # the spec's own errors (a loader_workers without stream) first
    return StoreTrainingSet(path, workers=spec.loader_workers)


class _PreparedBatches(torch.utils.data.Dataset):
    """Map-style dataset whose item is one batch: its conformers read and prepared (in a
    loader worker); a store error comes back as a `_Failure` to be raised in one line.
    A worker sends the batch as one pickled bytes object: torch's own transfer puts every
    tensor in its own shared-memory file, and a batch of graphs holds hundreds of small
    tensors (a MACE batch of 10 came at 3.6 batches/s that way, against 46 in process)."""

    def __init__(self, conformers: StoreTrainingSet, potential: Potential):
        self.conformers, self.potential = conformers, potential

    def __getitem__(self, order: np.ndarray) -> list | bytes | _Failure:  # type: ignore[override]
        try:
            batch = self.conformers.conformers(order)
        except MlipdivError as exc:
            return _Failure(str(exc))
        with default_dtype(self.potential.dtype):
            items = [self.potential.prepare(c) for c in batch]
        if torch.utils.data.get_worker_info() is None:
            return items
        return pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)


class _Orders(torch.utils.data.Sampler):
    """The sampler of the stream: the index array of each batch, in order (endless)."""

    def __init__(self, orders: Iterator[np.ndarray]):
        self.orders = orders

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.orders


@dataclass(frozen=True)
class _Failure:
    message: str


def _as_is(items):
    return items


def _one_thread(worker: int) -> None:
    """A loader worker prepares graphs on one thread (the training process has the rest),
    keeping freed memory for its next batch (`allocator`)."""
    torch.set_num_threads(1)
    keep_freed_memory()


def _grouped(store: ConformerStore, pairs: Iterable[tuple[str, int]]) -> dict[str, np.ndarray]:
    """{inchikey: conformer indices} of pairs, molecules in first-seen order, checked."""
    grouped: dict[str, list[int]] = {}
    for key, index in pairs:
        grouped.setdefault(key, []).append(int(index))
    out = {}
    for key, indices in grouped.items():
        if key not in store:
            raise MlipdivError(f"{store.path}: molecule {key} is not in the store")
        n = store.n_conformers(key)
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise MlipdivError(f"{store.path}: molecule {key} has {n} conformers, asked for "
                               f"index {bad[0]}")
        out[key] = np.asarray(indices, dtype=np.int32)
    return out


def _selection(indices: np.ndarray) -> slice | np.ndarray:
    """A slice when the indices are a contiguous increasing run (the fast HDF5 read)."""
    if len(indices) and indices[-1] - indices[0] == len(indices) - 1 and np.all(
            np.diff(indices) == 1):
        return slice(int(indices[0]), int(indices[-1]) + 1)
    return indices


def _chunks(indices: np.ndarray, size: int) -> Iterator[slice | np.ndarray]:
    for start in range(0, len(indices), size):
        yield _selection(indices[start:start + size])


def _neighbours(positions: np.ndarray, cutoff: float) -> int:
    """Ordered atom pairs closer than `cutoff` (self excluded), over (n_conf, n_atoms, 3)."""
    diff = positions[:, :, None, :] - positions[:, None, :, :]
    distance = np.linalg.norm(diff, axis=-1)
    return int(((distance < cutoff) & (distance > 0)).sum())
