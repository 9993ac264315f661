"""xyz text layouts: extended XYZ (`extxyz`), the original MD17 xyz (`md17xyz`), QM9 raw
xyz (`qm9`: a file, a directory or a tarball of them) and plain XYZ (`xyz`)."""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mlipdiv.data.formats.base import TAR_SUFFIXES
from mlipdiv.data.formats.frames import AseFramesFormat
from mlipdiv.errors import MlipdivError, first_line

# the shortest line an atom of an xyz frame can have ("H 0 0 0\n"): an atom count larger than
# the bytes left / this cannot be true, and is refused before a parser tries to read it
MIN_XYZ_ATOM_LINE_BYTES = 8


def xyz_counts_fit(path: Path) -> None:
    """Refuse at once an xyz-family file whose frame header counts more atoms than the bytes
    after it can hold (a parser would otherwise try to read them all): one pass in C-speed
    line skips, before the frames are parsed."""
    from collections import deque
    from itertools import islice

    size = path.stat().st_size
    with open(path, "rb") as handle:
        index = 0
        while line := handle.readline():
            if not line.strip():
                continue
            try:
                n_atoms = int(line.split()[0])
            except ValueError:
                return  # not a count: the parser says so, naming the frame
            left = size - handle.tell()
            if n_atoms < 0 or n_atoms * MIN_XYZ_ATOM_LINE_BYTES > left:
                raise MlipdivError(
                    f"{path}: frame {index}: header says {n_atoms} atoms but only {left} bytes "
                    f"follow (at most {left // MIN_XYZ_ATOM_LINE_BYTES} atom lines): the count "
                    "is wrong or the file is cut short")
            deque(islice(handle, n_atoms + 1), maxlen=0)  # the comment and atom lines
            index += 1


_EXTXYZ_KEY_VALUE = re.compile(r"(^|\s)[A-Za-z_][\w\-]*=\S")


def _xyz_comment(text: str) -> str | None:
    lines = text.splitlines()
    return lines[1] if len(lines) > 1 else None


class ExtxyzFormat(AseFramesFormat):
    """Extended XYZ read with `ase.io.iread` (streamed frame by frame); recognised by the
    `.extxyz` suffix or a `.xyz` whose comment line holds key=value pairs."""

    name = "extxyz"
    title = "extended XYZ frames"

    @classmethod
    def recognises(cls, probe):
        if probe.container:
            return False
        comment = _xyz_comment(probe.text)
        return probe.suffix == ".extxyz" or (probe.suffix == ".xyz" and (
            comment is None or bool(_EXTXYZ_KEY_VALUE.search(comment))))

    def frames(self):
        from ase.io import iread

        xyz_counts_fit(self.path)
        index = 0
        iterator = iread(self.path, index=":", format="extxyz")
        while True:
            try:
                atoms = next(iterator)
            except StopIteration:
                return
            except Exception as exc:  # ASE raises many types on malformed text
                raise MlipdivError(
                    f"{self.path}: frame {index}: not valid extxyz ({first_line(exc)})"
                ) from None
            yield f"{self.path.name}:{index}", atoms
            index += 1


def _xyz_blocks(handle, path: Path, name: str) -> Iterator[tuple[int, str, list[list[str]]]]:
    """(frame index, comment line, atom rows split in fields) of a plain XYZ text; blank lines
    between frames are allowed."""
    index, line_no = 0, 0
    lines = iter(handle)
    for line in lines:
        line_no += 1
        if not line.strip():
            continue
        where = f"{path}: {name}frame {index}"
        try:
            n_atoms = int(line.split()[0])
        except ValueError:
            raise MlipdivError(f"{where}: not valid extxyz/xyz (line {line_no}: expected an "
                               f"atom count, got '{line.strip()[:40]}')") from None
        comment = next(lines, None)
        line_no += 1
        rows = []
        for _ in range(n_atoms):
            row = next(lines, None)
            line_no += 1
            if row is None or len(row.split()) < 4:
                raise MlipdivError(f"{where}: not valid extxyz/xyz (frame ends before its "
                                   f"{n_atoms} atoms, line {line_no})")
            rows.append(row.replace("*^", "e").split())
        yield index, (comment or "").rstrip("\n"), rows
        index += 1


def _xyz_atoms(rows: list[list[str]], where: str, columns: int = 3):
    """ase.Atoms from xyz rows (symbol or atomic number, x, y, z), plus the float columns
    after x, y, z up to `columns` in total."""
    from ase import Atoms
    from ase.data import atomic_numbers

    numbers, values = [], []
    for k, row in enumerate(rows):
        symbol = row[0]
        z = int(symbol) if symbol.isdigit() else atomic_numbers.get(symbol.capitalize())
        if z is None:
            raise MlipdivError(f"{where}: atom {k}: unknown element '{symbol}'")
        try:
            values.append([float(v) for v in row[1:1 + columns]])
        except ValueError:
            raise MlipdivError(f"{where}: atom {k}: not a number in '{' '.join(row)}'") from None
        if len(values[-1]) != columns:
            raise MlipdivError(f"{where}: atom {k}: expected {columns} numbers after the "
                               f"element, got {len(values[-1])}")
        numbers.append(z)
    array = np.array(values, dtype=np.float64).reshape(len(rows), columns)
    return Atoms(numbers=numbers, positions=array[:, :3]), array[:, 3:]


class Md17XyzFormat(AseFramesFormat):
    """The original MD17 xyz: a frame's comment line is its energy alone and the atom lines
    carry the forces as columns 5-7; kcal/mol and kcal/mol/Angstrom (MD17's convention)."""

    name = "md17xyz"
    title = "original MD17 xyz (energy comment line, forces in columns 5-7)"
    energy_unit = "kcal/mol"

    @classmethod
    def recognises(cls, probe):
        lines = probe.text.splitlines()
        if probe.container or probe.suffix != ".xyz" or len(lines) < 3:
            return False
        try:
            float(lines[1].strip())
        except ValueError:
            return False
        return len(lines[2].split()) == 7

    def frames(self):
        with _open_text(self.path) as handle:
            for index, comment, rows in _xyz_blocks(handle, self.path, ""):
                where = f"{self.path}: frame {index}"
                atoms, forces = _xyz_atoms(rows, where, columns=6)
                try:
                    atoms.info["energy"] = float(comment.strip())
                except ValueError:
                    raise MlipdivError(f"{where}: comment line '{comment[:40]}' is not an "
                                       "energy") from None
                atoms.arrays["forces"] = forces
                yield f"{self.path.name}:{index}", atoms


QM9_PROPERTIES = ("A", "B", "C", "mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0",
                  "U", "H", "G", "Cv")


class Qm9XyzFormat(AseFramesFormat):
    """QM9 raw xyz (`dsgdb9nsd_NNNNNN.xyz`): a file per molecule, read alone, from a directory
    of them, or from the published tarball. Line 2 holds `gdb <id>` and 15 properties
    (energies U0, U, H, G, zpve, homo, lumo, gap in Hartree); atom lines add a Mulliken charge;
    then frequencies, the GDB and relaxed SMILES, and InChIs. Energy `U0` by default (any
    property name with --energy-key); no forces. The relaxed SMILES is the perception
    template."""

    name = "qm9"
    title = "QM9 raw xyz (a file, a directory or a tarball of them)"
    default_energy_key = "U0"
    total_energy = True
    default_forces_key = ""
    default_level_of_theory = "B3LYP/6-31G(2df,p)"
    energy_unit = "hartree"
    units_fixed = True
    accepts_directory = True

    @classmethod
    def recognises(cls, probe):
        comment = _xyz_comment(probe.text)
        return comment is not None and comment.startswith("gdb ")

    def _texts(self) -> Iterator[tuple[str, io.TextIOBase]]:
        if self.path.is_dir():
            for file in sorted(self.path.glob("*.xyz")):
                with _open_text(file) as handle:
                    yield file.name, handle
            return
        if self.path.suffix.lower() in TAR_SUFFIXES and tarfile.is_tarfile(self.path):
            try:
                with tarfile.open(self.path) as tar:
                    for member in tar:
                        if member.isfile() and member.name.endswith(".xyz"):
                            raw = tar.extractfile(member)
                            yield member.name, io.TextIOWrapper(raw, errors="replace")
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise MlipdivError(f"{self.path}: unreadable tarball ({first_line(exc)})"
                                   ) from None
            return
        with _open_text(self.path) as handle:
            yield self.path.name, handle

    def frames(self):
        for name, handle in self._texts():
            where = f"{self.path}: {name}" if name != self.path.name else str(self.path)
            text = handle.read().splitlines()
            try:
                n_atoms = int(text[0].split()[0])
                fields = text[1].split()
                if fields[0] != "gdb" or len(fields) < 2 + len(QM9_PROPERTIES):
                    raise ValueError("line 2 is not 'gdb <id>' and 15 properties")
                values = [float(v.replace("*^", "e")) for v in fields[2:2 + len(QM9_PROPERTIES)]]
                rows = [line.replace("*^", "e").split() for line in text[2:2 + n_atoms]]
                if n_atoms < 1 or len(rows) != n_atoms:
                    raise ValueError(f"line 1 counts {n_atoms} atoms, the file holds "
                                     f"{len(rows)} lines after line 2")
                smiles = text[3 + n_atoms].split() if len(text) > 3 + n_atoms else []
            except (IndexError, ValueError) as exc:
                raise MlipdivError(f"{where}: not a QM9 xyz file ({first_line(exc)})") from None
            atoms, _ = _xyz_atoms(rows, where)
            atoms.info.update(dict(zip(QM9_PROPERTIES, values, strict=True)))
            atoms.info["name"] = f"gdb {fields[1]}"
            if smiles:
                atoms.info["smiles"] = smiles[-1]
            atoms.info["source"] = name
            yield name, atoms


class PlainXyzFormat(AseFramesFormat):
    """Plain XYZ frames (element, x, y, z; extra columns ignored; blank lines between frames
    allowed): positions only, Angstrom unless --length-unit says otherwise."""

    name = "xyz"
    title = "plain XYZ frames (positions only)"
    default_energy_key = ""
    default_forces_key = ""
    default_level_of_theory = "unlabelled"

    @classmethod
    def recognises(cls, probe):
        return not probe.container and probe.suffix == ".xyz"

    def frames(self):
        with _open_text(self.path) as handle:
            for index, _comment, rows in _xyz_blocks(handle, self.path, ""):
                atoms, _ = _xyz_atoms(rows, f"{self.path}: frame {index}")
                yield f"{self.path.name}:{index}", atoms


def _open_text(path: Path):
    try:
        return path.open("r", errors="replace")
    except OSError as exc:
        raise MlipdivError(f"{path}: unreadable ({first_line(exc)})") from None
