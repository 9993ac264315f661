"""Molecule sources for `mlipdiv generate`: SMILES files and named sets shipped in packages.

A source is a `.smi` file (SMILES, optionally followed by a name, one per line), a `.csv` file
with a `smiles` column (and optionally `name` or `id`), or a named set inside an installed
package (`nci`: RDKit's `Data/NCI/first_5K.smi`, 5,000 NCI compounds).

Selection is deterministic: the entries are shuffled with the seed and walked in that order;
each entry is parsed and checked until `n` molecules are accepted. Entries that cannot be used
(unparsable SMILES, an element mlipdiv does not support, a radical) are *skipped* with a reason;
entries that are fine but outside the requested filters (elements, heavy-atom range, charge,
several fragments, already selected) are *filtered* (filters are checked first). Both are counted
by reason. Because the walk order depends only on the seed, the first `n` accepted molecules are
the same for any larger `n`.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rdkit import Chem
from rdkit.Chem import Descriptors

from mlipdiv.data.identity import SUPPORTED_ELEMENTS, quiet_rdkit
from mlipdiv.errors import FieldError, MlipdivError


def _nci_path() -> Path:
    from rdkit import RDConfig

    return Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"


NAMED_SOURCES = {"nci": _nci_path}

UNPARSABLE = "unparsable SMILES"
UNSUPPORTED_ELEMENT = "unsupported element"
RADICAL = "radical (open shell)"
DUPLICATE = "duplicate molecule"


@dataclass(frozen=True)
class MoleculeEntry:
    """One molecule of a source: where it came from, its SMILES, total formal charge and number
    of atoms with hydrogens."""

    name: str
    smiles: str
    charge: int = 0
    n_atoms: int = 0


@dataclass(frozen=True)
class MoleculeFilter:
    """Which molecules to accept. `elements` None means every element mlipdiv supports."""

    elements: frozenset[int] | None = None
    min_heavy_atoms: int = 1
    max_heavy_atoms: int = 1000
    neutral_only: bool = True

    def rejection(self, mol: Chem.Mol) -> str | None:
        """Why a parsed molecule (with explicit hydrogens) is outside the filter, or None."""
        if len(Chem.GetMolFrags(mol)) > 1:
            return "several fragments"
        if self.elements is not None:
            outside = {a.GetAtomicNum() for a in mol.GetAtoms()} - self.elements
            if outside:
                return "element outside the allowed elements"
        if not self.min_heavy_atoms <= mol.GetNumHeavyAtoms() <= self.max_heavy_atoms:
            return "heavy atoms outside the allowed range"
        if self.neutral_only and Chem.GetFormalCharge(mol) != 0:
            return "charged"
        return None

    def describe(self) -> dict:
        return {
            "elements": None if self.elements is None else sorted(self.elements),
            "heavy_atoms": [self.min_heavy_atoms, self.max_heavy_atoms],
            "neutral_only": self.neutral_only,
        }


@dataclass
class Selection:
    """The chosen molecules and what happened to the source entries walked to find them."""

    source: str
    entries: list[MoleculeEntry]
    skipped: Counter = field(default_factory=Counter)
    filtered: Counter = field(default_factory=Counter)
    skipped_names: list[tuple[str, str]] = field(default_factory=list)

    def skip(self, name: str, reason: str, detail: str) -> None:
        """Count an unusable entry under `reason`; `detail` is what the log shows."""
        self.skipped[reason] += 1
        self.skipped_names.append((name, detail))


def parse_elements(text: str | None) -> frozenset[int] | None:
    """'C,H,N,O' -> atomic numbers; None or '' -> None (all supported elements)."""
    if not text:
        return None
    from ase.data import atomic_numbers  # a dict: RDKit's table prints a dump on a miss

    numbers = set()
    for symbol in (s.strip() for s in text.split(",") if s.strip()):
        number = atomic_numbers.get(symbol, 0)  # "X" (a dummy atom) is 0 too
        if number == 0:
            raise FieldError("elements", None, f"unknown element symbol '{symbol}'")
        numbers.add(number)
    return frozenset(numbers)


def parse_heavy_atoms(text: str) -> tuple[int, int]:
    """'3:9' -> (3, 9); '5' -> (5, 5); ':9' -> (1, 9); '3:' -> (3, 1000)."""
    low, sep, high = text.partition(":")
    try:
        low_n = int(low) if low.strip() else 1
        high_n = (int(high) if high.strip() else 1000) if sep else low_n
    except ValueError:
        raise FieldError("heavy_atoms", None, f"'{text}' is not a range like 3:9") from None
    if low_n < 1 or high_n < low_n:
        raise FieldError("heavy_atoms", None, f"'{text}' is an empty range")
    return low_n, high_n


def read_entries(source: str) -> list[tuple[str, str]]:
    """(name, SMILES) pairs of a source: a named set or a .smi/.csv path."""
    if source in NAMED_SOURCES:
        path = NAMED_SOURCES[source]()
        if not path.exists():
            raise MlipdivError(f"molecule source '{source}': {path} is missing from the install")
        return _read_smi(path, prefix=f"{source}:")
    path = Path(source)
    if not path.exists():
        names = ", ".join(sorted(NAMED_SOURCES))
        raise FieldError("data.molecules", source, f"no such file and not a named set ({names})")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path)
    if suffix in (".smi", ".smiles", ".txt"):
        return _read_smi(path, prefix=f"{path.name}:")
    raise FieldError("data.molecules", source, f"expected a .smi or .csv file (got '{suffix}')")


def select_molecules(
    source: str, n: int, molecule_filter: MoleculeFilter, seed: int = 0
) -> Selection:
    """Choose up to `n` distinct molecules from a source, deterministically for a seed."""
    entries = read_entries(source)
    selection = Selection(str(source), [])
    seen: set[str] = set()
    for index in np.random.default_rng(seed).permutation(len(entries)):
        if len(selection.entries) >= n:
            break
        name, smiles = entries[index]
        mol = _parse(smiles)
        if mol is None:
            selection.skip(name, UNPARSABLE, UNPARSABLE)
            continue
        key = Chem.MolToInchiKey(mol) or smiles
        rejection = molecule_filter.rejection(mol) or (DUPLICATE if key in seen else None)
        if rejection:
            selection.filtered[rejection] += 1
        elif problem := _unusable(mol):
            selection.skip(name, *problem)
        else:
            seen.add(key)
            selection.entries.append(
                MoleculeEntry(name, smiles, Chem.GetFormalCharge(mol), mol.GetNumAtoms()))
    return selection


@quiet_rdkit()
def _parse(smiles: str) -> Chem.Mol | None:
    mol = Chem.MolFromSmiles(smiles) if smiles else None
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    return Chem.AddHs(mol)


@quiet_rdkit()
def _unusable(mol: Chem.Mol) -> tuple[str, str] | None:
    """(reason, detail) when mlipdiv cannot label a molecule, else None."""
    unsupported = sorted({a.GetSymbol() for a in mol.GetAtoms()
                          if a.GetAtomicNum() not in SUPPORTED_ELEMENTS})
    if unsupported:
        return UNSUPPORTED_ELEMENT, f"{UNSUPPORTED_ELEMENT} {', '.join(unsupported)}"
    if Descriptors.NumRadicalElectrons(mol):
        return RADICAL, RADICAL
    return None


def _read_smi(path: Path, prefix: str) -> list[tuple[str, str]]:
    entries = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line_no, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            label = fields[1] if len(fields) > 1 else f"line {line_no}"
            entries.append((f"{prefix}{label}", fields[0]))
    return entries


def _read_csv(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.DictReader(handle)
        columns = {c.lower(): c for c in reader.fieldnames or []}
        if "smiles" not in columns:
            raise MlipdivError(f"{path}: no 'smiles' column (columns: {reader.fieldnames})")
        name_column = columns.get("name") or columns.get("id")
        return [
            (f"{path.name}:{row[name_column] if name_column else f'row {i}'}",
             (row[columns['smiles']] or "").strip())
            for i, row in enumerate(reader, start=2)
        ]


def describe_source(source: str) -> str:
    """A stable description of a source for checkpoints: a named set, or the resolved path."""
    return source if source in NAMED_SOURCES else os.path.abspath(source)
