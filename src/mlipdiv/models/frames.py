"""Reading what a run trains on, is scored on or predicts: labelled conformers of a store or
of any file `mlipdiv import` reads (`read_records`), and ASE frames in file order
(`read_frames`)."""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from pathlib import Path

from mlipdiv.data.store import ConformerStore, MoleculeRecord
from mlipdiv.errors import MlipdivError

log = logging.getLogger(__name__)


def read_records(path: str | os.PathLike, skipped: Counter | None = None
                 ) -> list[MoleculeRecord]:
    """Labelled conformers of a store (.h5), or of any file `mlipdiv import` reads (extxyz,
    ASE db, ...), imported through a temporary store, as one record per molecule.

    Conformers the import skips (a NaN/inf coordinate or label, a missing label, ...) are
    never dropped silently: they are logged with their reasons and added to `skipped`."""
    path = Path(path)
    if not path.exists():
        raise MlipdivError(f"{path}: no such file")
    if path.suffix in (".h5", ".hdf5"):
        with ConformerStore(path) as store:
            return list(store.molecules())
    # the readers (and RDKit, for molecule identity) only when a file needs importing
    from mlipdiv.data.importer import import_dataset

    with tempfile.TemporaryDirectory() as tmp:
        summary = import_dataset(path, Path(tmp) / "imported.h5")
        if summary.skipped:
            log.warning("%s: %d conformers skipped (%s)", path, summary.n_skipped,
                        ", ".join(f"{reason}: {n}" for reason, n in summary.skipped.items()))
            if skipped is not None:
                skipped.update(summary.skipped)
        with ConformerStore(Path(tmp) / "imported.h5") as store:
            return list(store.molecules())


def read_frames(path: str | os.PathLike) -> list:
    """`ase.Atoms` frames of a store (.h5) or any file ASE reads, in file order."""
    from ase.io import read

    path = Path(path)
    if not path.exists():
        raise MlipdivError(f"{path}: no such file")
    if path.suffix in (".h5", ".hdf5"):
        with ConformerStore(path) as store:
            return store.to_atoms()
    try:
        return read(path, index=":")
    except Exception as exc:  # ase raises many types for a malformed file
        raise MlipdivError(f"{path}: not a readable structure file ({exc})") from None
