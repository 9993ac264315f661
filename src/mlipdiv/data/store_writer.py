"""Writing conformer stores: `StoreWriter` (molecule by molecule, atomically: a store is
complete or absent), `write_store` and `write_subset`, and adding a named label set in place
(`write_label_set`, one atomic rewrite). `store.py` reads them."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np

from mlipdiv.atomic import (
    disk_full_is_an_error,
    remove_stale_temporaries,
    temporary_sibling,
)
from mlipdiv.data.record import PROVENANCE_STR, MoleculeRecord
from mlipdiv.data.record import concatenate as concatenate  # re-exported
from mlipdiv.data.store import (
    DEFAULT_LABELS,
    FORMAT_VERSION,
    LABEL_SET_NAME,
    LABEL_SETS_ATTR,
    LABELS_GROUP,
    STR_DTYPE,
    ConformerStore,
)
from mlipdiv.errors import MlipdivError


class _WriteGuard(io.FileIO):
    """The file under a store being written. HDF5 reports a failed write (a full disk) only
    inside its cache, often while freeing an object where h5py ignores the error, and h5py
    then crashes in close(). So a failed write is kept here instead of reaching HDF5, later
    writes are dropped (the file is discarded anyway), and the writer raises it in one line."""

    failure: OSError | None = None

    def write(self, data) -> int:
        if self.failure is None:
            try:
                return super().write(data)
            except OSError as exc:
                self.failure = exc
        return len(memoryview(data))

    def truncate(self, size: int | None = None) -> int:
        if self.failure is None:
            try:
                return super().truncate(size)
            except OSError as exc:  # extending the file can fail as a write does
                self.failure = exc
        return self.tell() if size is None else size

    def raise_failure(self, path: Path) -> None:
        if self.failure is not None:
            with disk_full_is_an_error(path):
                raise self.failure


class StoreWriter:
    """Writes a store atomically: data go to `<path>.tmp`, renamed over `path` on `close()`.

    `add()` appends conformers to a molecule, creating its group on first sight; appending
    a record whose atoms differ from the stored molecule's is an error.
    On an exception inside a `with` block the temporary file is removed and the target kept.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        level_of_theory: str,
        created_by: str | None = None,
        extra_attrs: dict | None = None,
    ):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.path)  # of writers killed before they could
        self.tmp_path = temporary_sibling(self.path)
        with disk_full_is_an_error(self.path):
            self._handle = _WriteGuard(self.tmp_path, "w+")
            self._file = h5py.File(self._handle, "w")
        attrs = self._file.attrs
        attrs["format_version"] = FORMAT_VERSION
        attrs["level_of_theory"] = level_of_theory
        attrs["energy_unit"] = "eV"
        attrs["force_unit"] = "eV/Angstrom"
        attrs["length_unit"] = "Angstrom"
        attrs["created_by"] = created_by or " ".join(["mlipdiv", *sys.argv[1:]])
        for key, value in (extra_attrs or {}).items():
            attrs[key] = value
        self.n_conformers = 0

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def set_attr(self, key: str, value) -> None:
        """Set a store-level attribute (e.g. what was learnt while writing)."""
        self._file.attrs[key] = value

    def __contains__(self, inchikey: str) -> bool:
        """Whether a molecule has been written already."""
        return inchikey in self._file

    def add(self, record: MoleculeRecord) -> None:
        """Append a molecule's conformers (creating the molecule group if new)."""
        record.validate()
        if record.inchikey in self._file:
            self._append(self._file[record.inchikey], record)
        else:
            self._create(record)
        self._handle.raise_failure(self.path)
        self.n_conformers += record.n_conformers

    def close(self) -> None:
        """Finish writing and move the file into place (synced first, so a crash keeps the
        old store or the whole new one)."""
        try:
            self._file.close()
            self._handle.raise_failure(self.path)
            with disk_full_is_an_error(self.path):
                os.fsync(self._handle.fileno())
                self._handle.close()
                os.replace(self.tmp_path, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop everything written; the target path is left untouched."""
        try:
            self._file.close()
        finally:
            self._handle.close()
            self.tmp_path.unlink(missing_ok=True)

    def add_label_set(self, inchikey: str, name: str,
                      labels: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> None:
        """Give a molecule already written the group of named label set `name` (unlabelled
        but for the given (conformer indices, energies, forces)); the caller records the
        set's provenance in the root attribute (`set_attr`)."""
        _write_label_group(self._file[inchikey], name, labels)
        self._handle.raise_failure(self.path)

    def _create(self, record: MoleculeRecord) -> None:
        group = self._file.create_group(record.inchikey)
        group.attrs["smiles"] = record.smiles
        group.attrs["inchikey"] = record.inchikey
        group.attrs["formula"] = record.formula
        group.create_dataset("atomic_numbers", data=record.atomic_numbers.astype(np.int16),
                             fletcher32=True)
        n_atoms = record.n_atoms

        def resizable(name, data, dtype=None):
            shape = data.shape
            group.create_dataset(
                name, data=data, dtype=dtype, maxshape=(None, *shape[1:]),
                chunks=(max(1, min(len(data), max(1, 65536 // max(1, 24 * n_atoms)))),
                        *shape[1:]),
                fletcher32=dtype is None,  # HDF5 filters cannot apply to strings
            )

        resizable("positions", record.positions)
        if record.labelled:
            resizable("energy", record.energy)
        if record.has_forces:
            resizable("forces", record.forces)
        for name in PROVENANCE_STR:
            resizable(name, np.asarray(getattr(record, name), dtype=object), STR_DTYPE)
        resizable("temperature", np.asarray(record.temperature, dtype=np.float64))

    def _append(self, group: h5py.Group, record: MoleculeRecord) -> None:
        if not np.array_equal(group["atomic_numbers"][()], record.atomic_numbers):
            raise MlipdivError(
                f"molecule {record.inchikey}: appended conformers have a different atom order"
            )
        stored = "energy+forces" if "forces" in group else "energy" if "energy" in group \
            else "none"
        if stored != record.label_kind:
            raise MlipdivError(f"molecule {record.inchikey}: mixing labels ({stored} stored, "
                               f"{record.label_kind} appended)")
        names = ["positions", *PROVENANCE_STR, "temperature"]
        if record.labelled:
            names += ["energy"]
        if record.has_forces:
            names += ["forces"]
        for name in names:
            dataset = group[name]
            old = dataset.shape[0]
            dataset.resize(old + record.n_conformers, axis=0)
            values = getattr(record, name)
            dataset[old:] = np.asarray(values, dtype=object) if name in PROVENANCE_STR else values


def write_store(
    path: str | os.PathLike,
    records: Iterable[MoleculeRecord],
    level_of_theory: str,
    created_by: str | None = None,
) -> int:
    """Write records to a new store atomically; returns the number of conformers written."""
    with StoreWriter(path, level_of_theory, created_by) as writer:
        for record in records:
            writer.add(record)
    return writer.n_conformers


def write_subset(
    store: ConformerStore, pairs: Iterable[tuple[str, int]], path: str | os.PathLike
) -> int:
    """Copy the selected (inchikey, conformer) pairs of a store into a new store, with every
    named label set of those conformers (a conformer unlabelled at a set stays so)."""
    grouped: dict[str, list[int]] = {}
    for key, index in pairs:
        grouped.setdefault(key, []).append(int(index))
    named = store._named_sets()
    with StoreWriter(path, store.level_of_theory) as writer:
        for record in store.select((key, i) for key, indices in grouped.items()
                                   for i in indices):
            writer.add(record)
        for name in named:
            for key, indices in grouped.items():
                record = store.molecule(key, indices, labels=name)
                kept = np.flatnonzero(record.label_mask)
                writer.add_label_set(key, name, (kept, record.energy[kept],
                                                 record.forces[kept]))
        if named:
            writer.set_attr(LABEL_SETS_ATTR, json.dumps(named))
    return writer.n_conformers


def check_label_set_name(name: str) -> None:
    """A named label set: letters, digits and _.+- (not "default", the store's own set)."""
    if name == DEFAULT_LABELS or not LABEL_SET_NAME.fullmatch(name):
        raise MlipdivError(f"label set name '{name}': use letters, digits and _.+- (up to 64, "
                           f"not '{DEFAULT_LABELS}', the store's own labels)")


def write_label_set(
    path: str | os.PathLike, name: str, provenance: dict,
    labels: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> None:
    """Add (or extend) label set `name` of a store in place, atomically: the store is copied
    to a temporary sibling, the set written there and the copy renamed over the store (a
    crash keeps the old store or the whole new one). `labels` maps a molecule to (conformer
    indices, energies (eV), forces (eV/Angstrom)) of those conformers; conformers labelled
    before keep their labels unless given again, molecules not given get an all-unlabelled
    group. An existing set of another level of theory is refused."""
    path = Path(path)
    check_label_set_name(name)
    with ConformerStore(path) as store:
        sets = store._named_sets()
        known = sets.get(name, provenance)["level_of_theory"]
        if known != provenance["level_of_theory"]:
            raise MlipdivError(f"{path}: label set '{name}' holds {known}, not "
                               f"{provenance['level_of_theory']}; choose another --as name")
        missing = sorted(set(labels) - set(store.inchikeys))
    if missing:
        raise MlipdivError(f"{path}: molecule {missing[0]} is not in the store")
    remove_stale_temporaries(path)
    tmp = temporary_sibling(path)
    try:
        with disk_full_is_an_error(path):
            shutil.copyfile(path, tmp)
            with h5py.File(tmp, "r+") as file:
                for key in file:
                    _write_label_group(file[key], name, labels.get(key))
                file.attrs[LABEL_SETS_ATTR] = json.dumps({**sets, name: provenance})
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_label_group(group: h5py.Group, name: str, labels) -> None:
    """Create the molecule's group of label set `name` (unlabelled) if new, then write the
    given (indices, energies, forces)."""
    n_conf, n_atoms = group["positions"].shape[:2]
    sets = group.require_group(LABELS_GROUP)
    if name not in sets:
        target = sets.create_group(name)
        for dataset, shape, fill in (("energy", (n_conf,), np.nan),
                                     ("forces", (n_conf, n_atoms, 3), np.nan),
                                     ("labelled", (n_conf,), False)):
            target.create_dataset(dataset, data=np.full(shape, fill), fletcher32=True,
                                  dtype=bool if dataset == "labelled" else np.float64)
    if labels is None:
        return
    target = sets[name]
    indices, energy, forces = labels
    indices = np.asarray(indices, dtype=np.int64)
    mask, stored_energy, stored_forces = (target[d][()] for d in
                                          ("labelled", "energy", "forces"))
    mask[indices], stored_energy[indices], stored_forces[indices] = True, energy, forces
    target["labelled"][...], target["energy"][...] = mask, stored_energy
    target["forces"][...] = stored_forces


