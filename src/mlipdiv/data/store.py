"""The conformer store: one HDF5 file per dataset, close to the SPICE layout.

Layout::

    /                       attrs: format_version, level_of_theory, energy_unit, force_unit,
                                   length_unit, created_by
    /<InChIKey>/            attrs: smiles, inchikey, formula
                            (a second bond graph of one standard InChIKey, a tautomer or
                            protonation state, is /<InChIKey>-<8 hex>/: see data.importer)
        atomic_numbers      (n_atoms,)            int
        positions           (n_conf, n_atoms, 3)  Angstrom
        energy              (n_conf,)             eV        (absent: positions only)
        forces              (n_conf, n_atoms, 3)  eV/Angstrom (absent: positions or energies only)
        sampler, source, flags  (n_conf,)         str   provenance per conformer
        temperature         (n_conf,)             K (NaN where not applicable)
        labels/<name>/      a named label set beside the default one (energy, forces above):
            energy          (n_conf,)             eV          (NaN where not labelled)
            forces          (n_conf, n_atoms, 3)  eV/Angstrom (NaN where not labelled)
            labelled        (n_conf,)             bool        which conformers carry the set
    root attr label_sets    JSON {name: {level_of_theory, method, created_by}} of the named
                            sets (absent: the store has the default set only); every molecule
                            has a group for every named set, all unlabelled if need be

A conformer not labelled at a named set is explicit (NaN and `labelled` False), so a subset of
the conformers can carry an expensive level of theory; `ConformerStore.molecule(key,
labels=name)` reads a molecule at a set (the default set when `labels` is None or "default").

Reading is lazy (one molecule group at a time). Writing goes to a temporary file that is
renamed over the target only when complete, so a store is never left half-written. Numeric
datasets carry HDF5's Fletcher-32 checksum, so damaged bytes in their data are found when read.

A store damaged after writing (a copy cut short, bytes overwritten) makes h5py raise KeyError,
OSError, RuntimeError or ValueError at whichever read meets the damage; every read goes through
`ConformerStore._reading`, which turns them into `DamagedStoreError`: one line naming the
store, the molecule and the dataset, and what to do. `ConformerStore.check()` walks the whole
store (`mlipdiv info --check`), and `ConformerStore(path, skip_damaged=True)` leaves damaged
molecules out (listed in `damaged`) for the commands that stream a store.

The records a store holds, `MoleculeRecord`, are defined in `data.record` (and importable from
here).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from mlipdiv.atomic import (
    disk_full_is_an_error,
    remove_stale_temporaries,
    temporary_sibling,
    write_extxyz_atomic,
)
from mlipdiv.data.record import PROVENANCE_STR, MoleculeRecord
from mlipdiv.data.record import concatenate as concatenate  # re-exported
from mlipdiv.errors import MlipdivError, first_line

FORMAT_VERSION = 1
STR_DTYPE = h5py.string_dtype("utf-8")
# what h5py raises where a store's bytes are damaged (a broken B-tree or object header is a
# KeyError on lookup, a broken chunk an OSError on read, a broken heap a RuntimeError or
# ValueError); a molecule missing from the store is told apart before reading
HDF5_DAMAGE = (KeyError, OSError, RuntimeError, ValueError, TypeError, IndexError)
# the datasets every molecule group has (energy and forces are optional)
REQUIRED_DATASETS = ("atomic_numbers", "positions", *PROVENANCE_STR, "temperature")
# the named label sets: a group per molecule, their provenance in a root attribute
LABELS_GROUP = "labels"
LABEL_SETS_ATTR = "label_sets"
LABEL_SET_DATASETS = ("energy", "forces", "labelled")
DEFAULT_LABELS = "default"
LABEL_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
RESTORE = "restore it from a good copy or rerun the command that wrote it"
DAMAGE_REMEDY = (f"{RESTORE} "
                 "(`mlipdiv info STORE --check` lists every damaged molecule; profile, label "
                 "and split take --skip-damaged)")


class DamagedStoreError(MlipdivError):
    """A part of a store cannot be read: PATH: damaged store: cannot read PART (REASON);
    what to do. `inchikey` is the molecule concerned (None: the store's own structure)."""

    def __init__(self, path: str | os.PathLike, part: str, reason: str,
                 inchikey: str | None = None):
        self.path, self.part, self.reason, self.inchikey = str(path), part, reason, inchikey
        super().__init__(f"{path}: damaged store: cannot read {part} ({reason}); "
                         f"{DAMAGE_REMEDY}")

    def __reduce__(self):  # crosses process boundaries (worker pools) intact
        return type(self), (self.path, self.part, self.reason, self.inchikey)


class ConformerStore:
    """Read-only, lazy access to a store file. Use as a context manager or call `close()`.

    Damage met while reading raises `DamagedStoreError`. With `skip_damaged`, the store is
    checked when opened (`check()`: every dataset read once) and its damaged molecules are
    left out of every listing; `damaged` maps each to what could not be read."""

    def __init__(self, path: str | os.PathLike, skip_damaged: bool = False):
        self.path = Path(path)
        self.damaged: dict[str, str] = {}
        if not self.path.exists():
            raise MlipdivError(f"{self.path}: no such store")
        if self.path.is_dir():
            raise MlipdivError(f"{self.path}: is a directory, not a store file")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise MlipdivError(f"{self.path}: not a readable HDF5 store ({first_line(exc)}); "
                               f"if it is a damaged store, {RESTORE}") from None
        try:
            with self._reading("the store's attributes"):
                version = self._file.attrs.get("format_version")
            if version is None:
                raise MlipdivError(
                    f"{self.path}: not an mlipdiv store (no format_version attribute)")
            with self._reading("the list of molecules (root group)"):
                self._keys = sorted(self._file.keys())
            self._key_set = set(self._keys)
            if skip_damaged:
                self.damaged = self.check()
                self._keys = [k for k in self._keys if k not in self.damaged]
                self._key_set = set(self._keys)
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> ConformerStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    @contextmanager
    def _reading(self, part: str, inchikey: str | None = None) -> Iterator[None]:
        """Inside the block, an HDF5 error is damage to `part` (of molecule `inchikey`)."""
        try:
            yield
        except MlipdivError:
            raise
        except HDF5_DAMAGE as exc:
            # a KeyError's text is its quoted key: take the message itself
            reason = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args \
                else first_line(exc)
            raise DamagedStoreError(self.path, part, reason, inchikey) from None

    def _in_molecule(self, inchikey: str, dataset: str | None = None):
        what = f"molecule {inchikey}" + (f" (dataset '{dataset}')" if dataset else "")
        return self._reading(what, inchikey)

    def check(self) -> dict[str, str]:
        """Read every group and dataset once; {inchikey: what is damaged} of the molecules
        that cannot be read or whose arrays are impossible (wrong shapes, non-finite values,
        atomic numbers outside 1-118). Raises DamagedStoreError when the store's own
        structure (the list of molecules) is damaged."""
        self._damage_errors: dict[str, MlipdivError] = {}
        for key in self._keys:
            try:
                self._check_molecule(key)
            except MlipdivError as exc:
                self._damage_errors[key] = exc
        return {key: f"{exc.part}: {exc.reason}" if isinstance(exc, DamagedStoreError)
                else f"molecule {key}: {exc}" for key, exc in self._damage_errors.items()}

    def refuse_damaged(self) -> None:
        """Raise the first damaged molecule's one-line error, if a check found any."""
        errors = getattr(self, "_damage_errors", {})
        if errors:
            raise next(iter(errors.values()))

    def _check_molecule(self, key: str) -> None:
        with self._in_molecule(key):
            group = self._file[key]
            names = set(group.keys())
            dict(group.attrs)
        missing = [name for name in REQUIRED_DATASETS if name not in names]
        if missing:
            raise DamagedStoreError(self.path, f"molecule {key}",
                                    f"no dataset {', '.join(missing)}", key)
        for name in sorted(names - {LABELS_GROUP}):
            with self._in_molecule(key, name):
                group[name][()]
        for labels in self._named_sets():
            where = f"{LABELS_GROUP}/{labels}"
            with self._in_molecule(key, where):
                sets = group[LABELS_GROUP][labels]
                present = set(sets.keys())
            missing = [n for n in LABEL_SET_DATASETS if n not in present]
            if missing:
                raise DamagedStoreError(self.path, f"molecule {key} (label set '{labels}')",
                                        f"no dataset {', '.join(missing)}", key)
            for name in LABEL_SET_DATASETS:
                with self._in_molecule(key, f"{where}/{name}"):
                    sets[name][()]
            self.molecule(key, labels=labels)  # shapes, and finite where labelled
        record = self.molecule(key)
        if not np.all((record.atomic_numbers >= 1) & (record.atomic_numbers <= 118)):
            raise DamagedStoreError(self.path, f"molecule {key} (dataset 'atomic_numbers')",
                                    "atomic numbers outside 1-118", key)

    @property
    def attrs(self) -> dict:
        with self._reading("the store's attributes"):
            return {k: _plain(v) for k, v in self._file.attrs.items()}

    @property
    def level_of_theory(self) -> str:
        with self._reading("the store's attributes"):
            return str(self._file.attrs.get("level_of_theory", "unknown"))

    def label_sets(self) -> dict[str, dict]:
        """{name: provenance} of the store's label sets, the default set ("default": the
        store's level_of_theory) first; provenance holds at least `level_of_theory`."""
        default = {"level_of_theory": self.level_of_theory}
        return {DEFAULT_LABELS: default, **self._named_sets()}

    def _named_sets(self) -> dict[str, dict]:
        with self._reading(f"the store's attributes ('{LABEL_SETS_ATTR}')"):
            text = _plain(self._file.attrs.get(LABEL_SETS_ATTR, "{}"))
            sets = json.loads(text)
            if not isinstance(sets, dict):
                raise ValueError(f"'{LABEL_SETS_ATTR}' is not a JSON object")
        return sets

    def _label_set_name(self, labels: str | None) -> str | None:
        """None for the default set; a named set's name, checked to exist."""
        if labels is None or labels == DEFAULT_LABELS:
            return None
        if labels not in self._named_sets():
            raise MlipdivError(f"{self.path}: no label set '{labels}' (the store has "
                               f"{', '.join(self.label_sets())})")
        return labels

    def label_mask(self, inchikey: str, labels: str | None = None) -> np.ndarray:
        """Which conformers of a molecule carry the label set (default: the default set)."""
        name = self._label_set_name(labels)
        group = self._group(inchikey)
        if name is None:
            with self._in_molecule(inchikey, "energy"):
                return np.full(self.n_conformers(inchikey), "energy" in group)
        with self._in_molecule(inchikey, f"{LABELS_GROUP}/{name}/labelled"):
            return group[LABELS_GROUP][name]["labelled"][()].astype(bool)

    def label_counts(self, labels: str | None = None) -> dict:
        """Conformers and molecules labelled at a set, of how many; `unlabelled_molecules`
        names the molecules with no labelled conformer."""
        masks = {key: self.label_mask(key, labels) for key in self._keys}
        return {"labelled_conformers": int(sum(m.sum() for m in masks.values())),
                "n_conformers": int(sum(len(m) for m in masks.values())),
                "labelled_molecules": sum(1 for m in masks.values() if m.any()),
                "n_molecules": len(masks),
                "unlabelled_molecules": [k for k, m in masks.items() if not m.any()]}

    @property
    def inchikeys(self) -> list[str]:
        return list(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, inchikey: str) -> bool:
        return inchikey in self._key_set

    def n_conformers(self, inchikey: str) -> int:
        group = self._group(inchikey)
        with self._in_molecule(inchikey, "positions"):
            return int(group["positions"].shape[0])

    def conformer_counts(self) -> dict[str, int]:
        """Conformers per molecule, read from dataset shapes only (no data loaded)."""
        return {k: self.n_conformers(k) for k in self._keys}

    def total_conformers(self) -> int:
        return sum(self.conformer_counts().values())

    def group_attrs(self, inchikey: str) -> dict:
        """smiles, inchikey and formula of a molecule without loading its arrays."""
        group = self._group(inchikey)
        with self._in_molecule(inchikey):
            return {k: _plain(v) for k, v in group.attrs.items()}

    def atomic_numbers(self, inchikey: str) -> np.ndarray:
        group = self._group(inchikey)
        with self._in_molecule(inchikey, "atomic_numbers"):
            return group["atomic_numbers"][()]

    def geometry(self, inchikey: str) -> tuple[np.ndarray, np.ndarray]:
        """(atomic numbers, every conformer's positions (n_conf, n_atoms, 3) in Angstrom) with
        one group lookup and nothing else read (what the near-duplicate check needs)."""
        group = self._group(inchikey)
        with self._in_molecule(inchikey, "atomic_numbers"):
            numbers = group["atomic_numbers"][()]
        with self._in_molecule(inchikey, "positions"):
            return numbers, group["positions"][()]

    def overview(self) -> Iterator[tuple[str, str, np.ndarray, int]]:
        """(inchikey, smiles, atomic numbers, conformers) of every molecule, one group lookup
        each and no conformer data read (a molecule table of a large store)."""
        for key in self._keys:
            group = self._group(key)
            with self._in_molecule(key):
                smiles = _plain(group.attrs.get("smiles", ""))
                numbers = group["atomic_numbers"][()]
                n_conf = int(group["positions"].shape[0])
            yield key, smiles, numbers, n_conf

    def molecule(self, inchikey: str, conformers: Iterable[int] | None = None,
                 labels: str | None = None) -> MoleculeRecord:
        """Load one molecule, optionally only the listed conformer indices (in that order),
        with the energies and forces of label set `labels` (None: the default set). At a
        named set the record's `label_mask` says which conformers are labelled (the others
        have NaN energy and forces)."""
        name = self._label_set_name(labels)
        group = self._group(inchikey)
        n_conf = self.n_conformers(inchikey)
        if conformers is None:
            sel: slice | np.ndarray = slice(None)
            order = None
        else:
            idx = np.asarray(list(conformers), dtype=np.int64)
            if len(idx) and (idx.min() < 0 or idx.max() >= n_conf):
                raise MlipdivError(
                    f"{self.path}: molecule {inchikey} has {n_conf} conformers, asked for index "
                    f"{int(idx.max() if idx.max() >= n_conf else idx.min())}"
                )
            # h5py fancy indexing needs increasing unique indices; reorder afterwards.
            sel, order = np.unique(idx, return_inverse=True)

        def read(name, where=group, prefix=""):
            with self._in_molecule(inchikey, prefix + name):
                data = where[name][sel] if len(where[name].shape) else where[name][()]
            return data if order is None else data[order]

        with self._in_molecule(inchikey):
            labelled = "energy" in group
            with_forces = "forces" in group
            attrs = {k: _plain(v) for k, v in group.attrs.items()}
        mask = None
        if name is not None:
            prefix = f"{LABELS_GROUP}/{name}/"
            with self._in_molecule(inchikey, prefix[:-1]):
                where = group[LABELS_GROUP][name]
            mask = read("labelled", where, prefix).astype(bool)
            energy, forces = read("energy", where, prefix), read("forces", where, prefix)
            if energy.shape != mask.shape or forces.shape[:1] != mask.shape:
                raise DamagedStoreError(self.path, f"molecule {inchikey} (label set "
                                        f"'{name}')", "datasets of different lengths", inchikey)
            labelled = with_forces = True
        return MoleculeRecord(
            inchikey=inchikey,
            smiles=str(attrs.get("smiles", "")),
            formula=str(attrs.get("formula", "")),
            atomic_numbers=self.atomic_numbers(inchikey),
            positions=read("positions"),
            energy=(energy if mask is not None else read("energy")) if labelled else None,
            forces=(forces if mask is not None else read("forces")) if with_forces else None,
            sampler=_decode(read("sampler")),
            temperature=read("temperature"),
            source=_decode(read("source")),
            flags=_decode(read("flags")),
            label_mask=mask,
        )

    def molecules(self, inchikeys: Iterable[str] | None = None,
                  labels: str | None = None) -> Iterator[MoleculeRecord]:
        """Iterate molecules lazily, one group in memory at a time (at label set `labels`)."""
        for key in self._keys if inchikeys is None else inchikeys:
            yield self.molecule(key, labels=labels)

    def select(self, pairs: Iterable[tuple[str, int]],
               labels: str | None = None) -> Iterator[MoleculeRecord]:
        """Records restricted to the given (inchikey, conformer index) pairs, grouped by
        molecule in first-seen order (at label set `labels`)."""
        grouped: dict[str, list[int]] = {}
        for key, idx in pairs:
            grouped.setdefault(key, []).append(int(idx))
        for key, indices in grouped.items():
            if key not in self:
                raise MlipdivError(f"{self.path}: molecule {key} is not in the store")
            yield self.molecule(key, indices, labels)

    def to_atoms(self, pairs: Iterable[tuple[str, int]] | None = None,
                 labels: str | None = None) -> list:
        """A list of `ase.Atoms` for the selected conformers (all when pairs is None), with
        the labels of set `labels` (an unlabelled conformer has no calculator)."""
        records = self.molecules(labels=labels) if pairs is None else self.select(pairs, labels)
        return [atoms for record in records for atoms in record.to_atoms()]

    def checksum(self, skip: Iterable[str] = ()) -> str:
        """Content fingerprint: molecules, conformer counts and label arrays (of the molecules
        not in `skip`: those a split made with --skip-damaged left out).

        Cheap enough for large stores (energies only, not positions), and changes whenever a
        molecule or conformer is added, removed or relabelled.
        """
        digest = hashlib.sha256()
        left_out = set(skip)
        for key in (k for k in self._keys if k not in left_out):
            group = self._group(key)
            with self._in_molecule(key, "positions"):
                digest.update(key.encode())
                digest.update(str(group["positions"].shape).encode())
            with self._in_molecule(key, "energy"):
                if "energy" in group:
                    digest.update(np.ascontiguousarray(group["energy"][()]).tobytes())
                else:
                    digest.update(np.ascontiguousarray(group["positions"][:, 0, :]).tobytes())
        return digest.hexdigest()

    def _group(self, inchikey: str) -> h5py.Group:
        if inchikey not in self:
            raise MlipdivError(f"{self.path}: molecule {inchikey} is not in the store")
        with self._in_molecule(inchikey):
            return self._file[inchikey]


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
    """Copy the selected (inchikey, conformer) pairs of a store into a new store."""
    return write_store(path, store.select(pairs), store.level_of_theory)


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


def export_extxyz(
    store: ConformerStore, path: str | os.PathLike,
    pairs: Iterable[tuple[str, int]] | None = None,
) -> int:
    """Write (selected) conformers to extended XYZ, energy/forces as calculator results."""
    frames = store.to_atoms(pairs)
    write_extxyz_atomic(path, frames)
    return len(frames)


def _decode(values: np.ndarray) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value
