"""`mlipdiv split`: held-out test sets carved out of a store, the rest left as the training pool,
and the SPLITS directory that holds them.

`make_splits` carves each registered test-set kind (`mlipdiv.design.test_sets`) in its carving
order, runs the leak check and writes the split. A SPLITS directory holds the (inchikey,
conformer) pairs of each set as Parquet, the per-molecule table, and a manifest with the
options, seed, counts and the store's checksum; it is written only after the leak check
passes, and loading it against a changed store is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from ase.data import chemical_symbols

from mlipdiv.atomic import atomic_directory
from mlipdiv.data.store import ConformerStore
from mlipdiv.design.kinds import test_set_kinds, test_set_names
from mlipdiv.design.leaks import assert_no_leaks
from mlipdiv.design.ood import OOD_SHIFTS, OodShift, SizeShift, ood_syntax, parse_ood
from mlipdiv.design.split_sets import ByMolecule, Carving, SplitOptions, Splits, SplitSet
from mlipdiv.design.test_sets import WholeMoleculeSet
from mlipdiv.diversity.structural import scaffolds
from mlipdiv.errors import MlipdivError
from mlipdiv.files import read_json, read_parquet, reading
from mlipdiv.locking import locks_output

__all__ = [
    # this module: the SPLITS files
    "MANIFEST", "MOLECULE_TABLE", "SPLITS_FORMAT", "SPLITS_REMEDY", "load_splits",
    "make_splits", "molecule_table", "read_pairs", "write_pairs", "write_splits",
    # where tests reach them through this module (their homes: ood, split_sets, test_sets)
    "OOD_SHIFTS", "OodShift", "SizeShift", "SplitOptions", "WholeMoleculeSet", "ood_syntax",
    "parse_ood",
]

SPLITS_FORMAT = "mlipdiv-splits"
MANIFEST = "manifest.json"
MOLECULE_TABLE = "molecules.parquet"
SPLITS_REMEDY = "rerun `mlipdiv split` (a study: rerun it with --force)"


# ---------------------------------------------------------------- the SPLITS files
def load_splits(path: str | os.PathLike, verify: bool = True) -> Splits:
    """Read a SPLITS directory; with `verify`, refuse it if a store changed since the split."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise MlipdivError(f"{path}: not a SPLITS directory (no {MANIFEST})")
    manifest = read_json(manifest_path, "splits manifest", SPLITS_REMEDY)
    with reading(manifest_path, "splits manifest", SPLITS_REMEDY):
        if manifest.get("format") != SPLITS_FORMAT:
            raise MlipdivError(f"{manifest_path}: not an mlipdiv splits manifest")
        store_path = _resolve_store(path, manifest["store"])
        ood_store = manifest.get("ood_store")
        ood_path = _resolve_store(path, ood_store) if ood_store else store_path
        if verify:
            _verify_checksum(store_path, manifest["store"])
            if ood_store:
                _verify_checksum(ood_path, ood_store)
    sets = {}
    for name in ("pool", *test_set_names()):
        file = path / f"{name}.parquet"
        if file.is_file():
            sets[name] = SplitSet(name, ood_path if name == "ood" else store_path,
                                  read_pairs(file))
        elif name == "pool" or name in manifest.get("counts", {}):
            raise MlipdivError(f"{file}: missing split table; {SPLITS_REMEDY}")
    molecules = read_parquet(path / MOLECULE_TABLE, "splits molecule table", SPLITS_REMEDY)
    return Splits(path, store_path, sets, molecules, manifest)


def read_pairs(path: Path) -> ByMolecule:
    """(inchikey, conformer) pairs of a Parquet file grouped by molecule (file order kept)."""
    with reading(path, "split table", SPLITS_REMEDY):
        table = pq.read_table(path).to_pandas()
        grouped: ByMolecule = {}
        for key, frame in table.groupby("inchikey", sort=False):
            grouped[str(key)] = frame["conformer"].to_numpy(dtype=np.int64)
    return grouped


def write_pairs(by_molecule: ByMolecule, path: Path) -> None:
    keys = [k for k, v in by_molecule.items() for _ in range(len(v))]
    indices = np.concatenate(list(by_molecule.values())) if by_molecule else np.empty(0, int)
    table = pa.table({"inchikey": pa.array(keys, pa.string()).dictionary_encode(),
                      "conformer": pa.array(indices.astype(np.int32))})
    pq.write_table(table, path)


def _resolve_store(splits_dir: Path, entry: dict) -> Path:
    relative = splits_dir / entry["relative_path"]
    return relative if relative.exists() else Path(entry["path"])


def _verify_checksum(store_path: Path, entry: dict) -> None:
    """The store's checksum (without the damaged molecules the split left out) must be the
    manifest's."""
    with ConformerStore(store_path) as store:
        if store.checksum(entry.get("damaged_molecules", ())) != entry["checksum"]:
            raise MlipdivError(
                f"{store_path}: the store changed since the split was made (checksum mismatch); "
                "split it again"
            )


def _store_entry(store: ConformerStore, splits_dir: Path) -> dict:
    absolute = store.path.resolve()
    return {"path": str(absolute),
            "relative_path": os.path.relpath(absolute, splits_dir.resolve()),
            "checksum": store.checksum(),
            **({"damaged_molecules": sorted(store.damaged)} if store.damaged else {})}


# ---------------------------------------------------------------- the molecule table
def molecule_table(store: ConformerStore) -> pd.DataFrame:
    """One row per molecule from group attributes and atomic numbers only (no positions):
    inchikey, connectivity block, smiles, scaffolds, heavy atoms, elements, conformers."""
    rows = []
    for key, smiles, numbers, n_conformers in store.overview():
        murcko, generic = scaffolds(smiles)
        rows.append({
            "inchikey": key, "connectivity": key[:14], "smiles": smiles,
            "scaffold": murcko, "generic_scaffold": generic,
            "n_heavy_atoms": int((numbers > 1).sum()),
            "elements": ",".join(sorted({chemical_symbols[int(z)] for z in numbers})),
            "n_conformers": n_conformers,
        })
    return pd.DataFrame(rows, columns=["inchikey", "connectivity", "smiles", "scaffold",
                                       "generic_scaffold", "n_heavy_atoms", "elements",
                                       "n_conformers"])


# ---------------------------------------------------------------- making a split
@locks_output("out")
def make_splits(store_path: str | os.PathLike, out: str | os.PathLike,
                options: SplitOptions = SplitOptions(),
                skip_damaged: bool = False) -> tuple[Splits, list[str]]:
    """Carve the test sets (each registered kind in its carving order), run the leak check,
    and write SPLITS only if it passes. Returns the splits and the messages about skipped
    sets. With `skip_damaged`, the store's damaged molecules are left out of every set
    (named in the manifest's store entry and the messages)."""

    options.check()
    out = Path(out)
    store_path = Path(store_path)
    with ConformerStore(store_path, skip_damaged=skip_damaged) as store:
        if store.damaged:
            carving_messages = [f"{len(store.damaged)} damaged molecule(s) of {store_path} "
                                f"skipped: {', '.join(store.damaged)}"]
        else:
            carving_messages = []
        if len(store) == 0:
            raise MlipdivError(f"{store_path}: the store holds no molecules")
        table = molecule_table(store)
        carving = Carving(options, store, store_path, table, np.random.default_rng(options.seed),
                          set(table["inchikey"]))
        for kind in test_set_kinds(carving=True):
            kind.carve(carving)
        carving.sets["pool"] = SplitSet("pool", store_path, carving.training_pool())
        manifest = {
            "format": SPLITS_FORMAT, "version": 1,
            "store": _store_entry(store, out),
            "ood_store": None,
            "options": {**options.__dict__, "ood_store": str(options.ood_store or "") or None},
            "seed": options.seed,
            "skipped": carving_messages + carving.messages,
            **carving.extra,
        }
    if options.ood_store:
        with ConformerStore(options.ood_store) as ood:
            manifest["ood_store"] = _store_entry(ood, out)
    ordered = {name: carving.sets[name] for name in ("pool", *test_set_names())
               if name in carving.sets}
    manifest["counts"] = {name: {"molecules": s.n_molecules, "conformers": s.n_conformers}
                          for name, s in ordered.items()}
    splits = Splits(out, store_path, ordered, table, manifest)
    assert_no_leaks(splits)
    write_splits(splits)
    return splits, carving_messages + carving.messages


def write_splits(splits: Splits) -> None:
    """Write the directory next to its target and move it into place."""
    out = splits.path
    if out.exists() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise MlipdivError(f"{out}: exists and is not a SPLITS directory; not overwriting it")
    with atomic_directory(out) as tmp:
        for name, split_set in splits.sets.items():
            write_pairs(split_set.by_molecule, tmp / f"{name}.parquet")
        splits.molecules.to_parquet(tmp / MOLECULE_TABLE, index=False)
        (tmp / MANIFEST).write_text(json.dumps(splits.manifest, indent=1, default=str))

