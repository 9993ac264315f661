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
import json
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from mlipdiv.atomic import (
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


def checksum_of(pieces: Iterable[bytes]) -> str:
    """A store's checksum from its molecules' `ConformerStore.checksum_piece`s, in key order."""
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece)
    return digest.hexdigest()


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
        self._damage_errors = {key: error for key in self._keys
                               if (error := self.damage(key)) is not None}
        return {key: f"{exc.part}: {exc.reason}" if isinstance(exc, DamagedStoreError)
                else f"molecule {key}: {exc}" for key, exc in self._damage_errors.items()}

    def damage(self, key: str) -> MlipdivError | None:
        """What `check` finds damaged in one molecule (its one-line error), or None."""
        try:
            self.checked_molecule(key)
        except MlipdivError as exc:
            return exc
        return None

    def refuse_damaged(self) -> None:
        """Raise the first damaged molecule's one-line error, if a check found any."""
        errors = getattr(self, "_damage_errors", {})
        if errors:
            raise next(iter(errors.values()))

    def checked_molecule(self, key: str) -> MoleculeRecord:
        """A molecule read with every check `check` makes (every group and dataset read
        once); raises its one-line error where it is damaged."""
        with self._in_molecule(key):
            group = self._file[key]
            names = set(group.keys())
            dict(group.attrs)
        missing = [name for name in REQUIRED_DATASETS if name not in names]
        if missing:
            raise DamagedStoreError(self.path, f"molecule {key}",
                                    f"no dataset {', '.join(missing)}", key)
        # the others once here; these are read (and checked) by `self.molecule` below, and
        # reading them twice made this check ~4 % of a GFN2-xTB relabelling's time
        read_below = {*REQUIRED_DATASETS, "energy", "forces"}
        for name in sorted(names - {LABELS_GROUP} - read_below):
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
        return record

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

    def common_mask(self, inchikey: str, label_sets: Iterable[str]) -> np.ndarray:
        """Which conformers of a molecule carry every one of the given label sets."""
        return np.logical_and.reduce([self.label_mask(inchikey, name) for name in label_sets]
                                     + [np.ones(self.n_conformers(inchikey), bool)])

    def common_counts(self, label_sets: Iterable[str]) -> dict[str, int]:
        """Conformers of each molecule labelled at every given label set (molecules with
        none left out)."""
        label_sets = list(label_sets)
        counts = {key: int(self.common_mask(key, label_sets).sum()) for key in self._keys}
        return {key: count for key, count in counts.items() if count}

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
        with self._in_molecule(inchikey):
            # every dataset looked up once: an h5py lookup costs as much as a small read
            datasets = {key: group[key] for key in group if key != LABELS_GROUP}
            attrs = {k: _plain(v) for k, v in group.attrs.items()}
        with self._in_molecule(inchikey, "positions"):
            n_conf = int(datasets["positions"].shape[0])
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

        def read(name, where=None, prefix=""):
            with self._in_molecule(inchikey, prefix + name):
                dataset = datasets[name] if where is None else where[name]
                data = dataset[sel] if len(dataset.shape) else dataset[()]
            return data if order is None else data[order]

        labelled, with_forces = "energy" in datasets, "forces" in datasets
        with self._in_molecule(inchikey, "atomic_numbers"):
            numbers = datasets["atomic_numbers"][()]
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
            atomic_numbers=numbers,
            positions=read("positions"),
            energy=(energy if mask is not None else read("energy")) if labelled else None,
            forces=(forces if mask is not None else read("forces")) if with_forces else None,
            sampler=_decode(read("sampler")),
            temperature=read("temperature"),
            source=_decode(read("source")),
            flags=_decode(read("flags")),
            label_mask=mask,
        )

    def label_kind(self, inchikey: str) -> str:
        """A molecule's default labels without reading them, as `MoleculeRecord.label_kind`:
        "energy+forces", "energy" (energies only) or "none" (positions only)."""
        group = self._group(inchikey)
        with self._in_molecule(inchikey):
            labelled, forces = "energy" in group, "forces" in group
        return "energy+forces" if labelled and forces else "energy" if labelled else "none"

    def read_arrays(self, inchikey: str, names: Iterable[str],
                    selection: slice | np.ndarray) -> dict[str, np.ndarray | None]:
        """Datasets `names` (e.g. positions, energy, forces) of a molecule at the conformers
        `selection` (a slice, or indices in any order), float64 as a record holds them; None
        for a dataset the molecule lacks. Nothing else is read: what a training stream needs
        per batch (`models.streaming`)."""
        group = self._group(inchikey)
        order = None
        if not isinstance(selection, slice):
            selection, order = np.unique(np.asarray(selection, dtype=np.int64),
                                         return_inverse=True)
            if selection[-1] - selection[0] == len(selection) - 1:
                # a contiguous run (one conformer, in a shuffled batch) as a slice: h5py's
                # fast path, several times quicker than a point selection
                selection = slice(int(selection[0]), int(selection[-1]) + 1)
        out: dict[str, np.ndarray | None] = {}
        for name in names:
            with self._in_molecule(inchikey, name):
                dataset = group.get(name)
                if dataset is None:
                    out[name] = None
                    continue
                data = np.asarray(dataset[selection], dtype=np.float64)
            out[name] = data if order is None else data[order]
        return out

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
        left_out = set(skip)
        return checksum_of(self.checksum_piece(k) for k in self._keys if k not in left_out)

    def checksum_piece(self, key: str) -> bytes:
        """What `checksum` hashes of one molecule (key, conformer count, energies), so parts
        of a store can be fingerprinted apart (in worker processes) and joined in order."""
        group = self._group(key)
        with self._in_molecule(key, "positions"):
            head = key.encode() + str(group["positions"].shape).encode()
        with self._in_molecule(key, "energy"):
            data = group["energy"][()] if "energy" in group else group["positions"][:, 0, :]
        return head + np.ascontiguousarray(data).tobytes()

    def _group(self, inchikey: str) -> h5py.Group:
        if inchikey not in self:
            raise MlipdivError(f"{self.path}: molecule {inchikey} is not in the store")
        with self._in_molecule(inchikey):
            return self._file[inchikey]


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
