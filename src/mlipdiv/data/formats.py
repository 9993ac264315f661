"""Readers for public QM dataset layouts, each declared by a few class attributes.

A format class states its native units, its default energy/force keys, whether forces are
stored as gradients, and whether one source group holds one molecule. The base class does the
common work: shape checks, atomic-number checks, unit conversion to eV / Angstrom (through
`mlipdiv.data.units`, at this boundary only) and dropping conformers whose labels are missing
or non-finite, counted by reason in `skipped`.

Readers stream: `groups()` yields one `SourceGroup` at a time and never holds more.
Structural damage (unreadable file, missing coordinates, shape mismatch, unknown atomic
number) raises `MlipdivError` naming the file, the group or frame and the reason.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import h5py
import numpy as np

from mlipdiv.data.identity import SUPPORTED_ELEMENTS, quiet_rdkit
from mlipdiv.data.units import energy_to_ev, force_to_ev_per_angstrom, length_to_angstrom
from mlipdiv.errors import FieldError, MlipdivError, first_line

AUTO = "auto"
MAX_ATOMIC_NUMBER = 118
# extxyz / ASE db runs of one molecule are cut into groups of at most this many frames so that
# memory stays bounded however long the run is.
MAX_FRAMES_PER_GROUP = 20_000


@dataclass
class ConformerBlock:
    """Conformers of one source group sharing one atom order, in eV and Angstrom."""

    atomic_numbers: np.ndarray
    positions: np.ndarray
    energy: np.ndarray
    forces: np.ndarray
    source: np.ndarray
    sampler: np.ndarray
    temperature: np.ndarray
    flags: np.ndarray

    @property
    def n_conformers(self) -> int:
        return len(self.positions)


@dataclass
class SourceGroup:
    """One group of a source file (a SPICE molecule, an ANI-1x formula, a run of xyz frames)."""

    name: str
    blocks: list[ConformerBlock] = field(default_factory=list)
    charge: int = 0

    @property
    def n_conformers(self) -> int:
        return sum(block.n_conformers for block in self.blocks)


@dataclass(frozen=True)
class Probe:
    """What auto-detection knows of a file: its lower-case suffix, its first 16 bytes and, for
    HDF5, the keys of its first top-level group (and whether they are all subgroups)."""

    path: Path
    suffix: str
    header: bytes
    hdf5_keys: frozenset[str] | None = None  # None: not HDF5
    first_group: h5py.Group | None = None


# every concrete format by name, in definition order (which is the order auto-detection tries)
REGISTERED: dict[str, type[DatasetFormat]] = {}


class DatasetFormat:
    """Base reader: subclasses declare units and keys and implement `groups()`.

    A concrete format declares `name` (the `--format` choice) in its class body; defining it
    registers it, and `recognises(probe)` is how `--format auto` finds it. Intermediate bases
    (Hdf5Format, AseFramesFormat...) declare no name and do not register."""

    name: ClassVar[str]
    title: ClassVar[str]  # a few words for `mlipdiv formats`
    default_energy_key: ClassVar[str]
    default_forces_key: ClassVar[str]
    default_level_of_theory: ClassVar[str]
    energy_unit: ClassVar[str] = "eV"
    length_unit: ClassVar[str] = "angstrom"
    force_length_unit: ClassVar[str] = "angstrom"
    forces_are_gradient: ClassVar[bool] = False
    # True: a group is one molecule by construction (SPICE), so minority graphs are distortions.
    one_molecule_per_group: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            return
        missing = [a for a in ("title", "default_energy_key", "default_forces_key",
                               "default_level_of_theory") if not hasattr(cls, a)]
        if missing:
            raise TypeError(f"format {cls.name} must declare {', '.join(missing)}")
        if REGISTERED.setdefault(cls.name, cls) is not cls:
            raise TypeError(f"format {cls.name} is defined twice")

    @classmethod
    def recognises(cls, probe: Probe) -> bool:
        """Whether `--format auto` should read this file with this format."""
        return False

    def __init__(self, path: str | Path, energy_key: str | None = None,
                 forces_key: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise MlipdivError(f"{self.path}: no such file")
        self.energy_key = energy_key or self.default_energy_key
        self.forces_key = forces_key or self.default_forces_key
        self.skipped: Counter[str] = Counter()

    @property
    def level_of_theory(self) -> str:
        if (self.energy_key, self.forces_key) == (self.default_energy_key,
                                                   self.default_forces_key):
            return f"{self.default_level_of_theory} ({self.name})"
        return f"energy '{self.energy_key}', forces '{self.forces_key}' ({self.name})"

    @property
    def n_groups(self) -> int | None:
        """Number of source groups when known up front (for progress), else None."""
        return None

    def groups(self) -> Iterator[SourceGroup]:
        raise NotImplementedError

    def skip(self, reason: str, n_conformers: int) -> None:
        """Count conformers left out of the import, by reason."""
        if n_conformers:
            self.skipped[reason] += n_conformers

    def block(self, where: str, atomic_numbers, positions, energy, forces, source: Iterable[str],
              sampler=None, temperature=None, flags=None) -> ConformerBlock | None:
        """Check and convert native arrays to a block in eV / Angstrom.

        Conformers with non-finite coordinates or labels are dropped and counted; a block left
        empty, or holding an element mlipdiv does not support, returns None (counted).
        """
        numbers = np.asarray(atomic_numbers).reshape(-1).astype(np.int64)
        positions = np.asarray(positions, dtype=np.float64)
        n_conf, n_atoms = len(positions), len(numbers)
        energy = np.asarray(energy, dtype=np.float64).reshape(-1)
        forces = np.asarray(forces, dtype=np.float64)
        if positions.shape != (n_conf, n_atoms, 3):
            raise MlipdivError(f"{self.path}: {where}: positions shape {positions.shape} does "
                               f"not match {n_atoms} atomic numbers")
        if forces.shape != positions.shape:
            raise MlipdivError(f"{self.path}: {where}: forces '{self.forces_key}' shape "
                               f"{forces.shape} does not match positions {positions.shape}")
        if energy.shape != (n_conf,):
            raise MlipdivError(f"{self.path}: {where}: {len(energy)} energies "
                               f"'{self.energy_key}' for {n_conf} conformers")
        unknown = sorted({int(z) for z in numbers if not 1 <= z <= MAX_ATOMIC_NUMBER})
        if unknown:
            raise MlipdivError(f"{self.path}: {where}: unknown atomic number(s) {unknown}")
        unsupported = sorted({int(z) for z in numbers} - SUPPORTED_ELEMENTS)
        if unsupported:
            self.skip(f"unsupported element(s) {unsupported}", n_conf)
            return None
        finite = (np.isfinite(energy) & np.isfinite(forces).all(axis=(1, 2))
                  & np.isfinite(positions).all(axis=(1, 2)))
        self.skip("non-finite coordinates, energy or forces", int((~finite).sum()))
        if not finite.any():
            return None
        keep = np.flatnonzero(finite)
        force_factor = force_to_ev_per_angstrom(self.energy_unit, self.force_length_unit)
        return ConformerBlock(
            atomic_numbers=numbers,
            positions=positions[keep] * length_to_angstrom(self.length_unit),
            energy=energy[keep] * energy_to_ev(self.energy_unit),
            forces=forces[keep] * (-force_factor if self.forces_are_gradient else force_factor),
            source=_strings(source, n_conf)[keep],
            sampler=_strings(sampler, n_conf)[keep],
            temperature=(np.full(n_conf, np.nan) if temperature is None
                         else np.asarray(temperature, dtype=np.float64))[keep],
            flags=_strings(flags, n_conf)[keep],
        )


def _strings(values: Iterable[str] | None, n: int) -> np.ndarray:
    if values is None:
        return np.full(n, "", dtype=object)
    return np.asarray(list(values), dtype=object)


# ---------------------------------------------------------------- HDF5 layouts
class Hdf5Format(DatasetFormat):
    """A file with one top-level HDF5 group per source group; subclasses read one group."""

    def __init__(self, path, energy_key=None, forces_key=None):
        super().__init__(path, energy_key, forces_key)
        self._file = open_hdf5(self.path)

    @property
    def n_groups(self) -> int:
        return len(self._file)

    def groups(self) -> Iterator[SourceGroup]:
        try:
            for name in self._file:
                try:
                    group = self.read_group(name, self._file[name])
                except (OSError, KeyError, ValueError, TypeError) as exc:
                    raise MlipdivError(
                        f"{self.path}: group {name}: unreadable ({first_line(exc)})"
                    ) from None
                if group is not None and group.blocks:
                    yield group
        finally:
            self._file.close()

    def read_group(self, name: str, group: h5py.Group) -> SourceGroup | None:
        raise NotImplementedError

    def require(self, group: h5py.Group, key: str, where: str) -> np.ndarray:
        """A dataset the layout cannot do without: missing is an error, not a skip."""
        if not isinstance(group, h5py.Group) or key not in group:
            raise MlipdivError(f"{self.path}: {where}: missing key '{key}'")
        return group[key][()]

    def labels(self, group: h5py.Group, n_conformers: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The chosen energy and force arrays, or None (skipped, counted) when absent."""
        for key in (self.energy_key, self.forces_key):
            if key not in group:
                self.skip(f"missing key '{key}'", n_conformers)
                return None
        return group[self.energy_key][()], group[self.forces_key][()]


def open_hdf5(path: Path) -> h5py.File:
    """Open an HDF5 file read-only, turning truncated or foreign files into one-line errors."""
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise MlipdivError(f"{path}: not a readable HDF5 file ({first_line(exc)})") from None


class ArrayGroupFormat(Hdf5Format):
    """Layouts with one block of arrays per group: `atomic_numbers`, a (n_conf, n_atoms, 3)
    positions dataset named by `positions_key`, and the label datasets. A `smiles` dataset,
    where present, gives the net charge that bond perception needs."""

    positions_key: ClassVar[str]

    def read_group(self, name, group):
        numbers = self.require(group, "atomic_numbers", f"group {name}")
        positions = self.require(group, self.positions_key, f"group {name}")
        labels = self.labels(group, len(positions))
        if labels is None:
            return None
        block = self.block(f"group {name}", numbers, positions, *labels,
                           source=[f"{name}[{i}]" for i in range(len(positions))])
        return SourceGroup(name, [block] if block else [], _smiles_charge(group))


class SpiceFormat(ArrayGroupFormat):
    """SPICE: a group per molecule; `conformations` in Bohr, `dft_total_energy` in Hartree,
    `dft_total_gradient` in Hartree/Bohr (minus the force); the charge comes from `smiles`."""

    name = "spice"
    title = "SPICE HDF5 (a group per molecule)"
    positions_key = "conformations"
    default_energy_key = "dft_total_energy"
    default_forces_key = "dft_total_gradient"
    default_level_of_theory = "wB97M-D3(BJ)/def2-TZVPPD"
    energy_unit = "hartree"
    length_unit = "bohr"
    force_length_unit = "bohr"
    forces_are_gradient = True
    one_molecule_per_group = True

    @classmethod
    def recognises(cls, probe):
        return probe.hdf5_keys is not None and cls.positions_key in probe.hdf5_keys


@quiet_rdkit()
def _smiles_charge(group: h5py.Group) -> int:
    """Total formal charge of the group's SMILES (0 when absent): bond perception needs it."""
    if "smiles" not in group:
        return 0
    from rdkit import Chem

    value = np.asarray(group["smiles"][()]).reshape(-1)[0]
    mol = Chem.MolFromSmiles(value.decode() if isinstance(value, bytes) else str(value),
                             sanitize=False)
    return 0 if mol is None else sum(atom.GetFormalCharge() for atom in mol.GetAtoms())


class Qm7xFormat(Hdf5Format):
    """QM7-X: a group per molecule id holding one subgroup per conformer
    (`Geom-m{m}-i{i}-c{c}-opt` / `...-d{k}`) with `atNUM`, `atXYZ` (Angstrom), `ePBE0+MBD`
    (eV, an array of one value) and `totFOR` (eV/Angstrom). Isomers `i` share a group, so
    groups are split into molecules by perception."""

    name = "qm7x"
    title = "QM7-X HDF5 (a subgroup per conformer)"
    default_energy_key = "ePBE0+MBD"
    default_forces_key = "totFOR"
    default_level_of_theory = "PBE0+MBD"

    @classmethod
    def recognises(cls, probe):
        keys, group = probe.hdf5_keys, probe.first_group
        return bool(keys) and all(isinstance(group[k], h5py.Group) and "atXYZ" in group[k]
                                  for k in keys)

    def read_group(self, name, group):
        by_layout: dict[bytes, list] = {}
        for conf_name in group:
            where = f"group {name}/{conf_name}"
            conf = group[conf_name]
            numbers = np.asarray(self.require(conf, "atNUM", where)).astype(np.int64)
            positions = self.require(conf, "atXYZ", where)
            labels = self.labels(conf, 1)
            if labels is None:
                continue
            energy = np.asarray(labels[0]).reshape(-1)
            if len(energy) != 1:
                raise MlipdivError(f"{self.path}: {where}: '{self.energy_key}' holds "
                                   f"{len(energy)} values, expected 1")
            block = self.block(where, numbers, [positions], energy, [labels[1]], [
                f"{name}/{conf_name}"])
            if block is not None:
                by_layout.setdefault(numbers.tobytes(), []).append(block)
        return SourceGroup(name, [_stack(blocks) for blocks in by_layout.values()])


def _stack(blocks: list[ConformerBlock]) -> ConformerBlock:
    """One block from single-conformer blocks sharing an atom order."""
    return ConformerBlock(blocks[0].atomic_numbers, *(
        np.concatenate([getattr(b, name) for b in blocks])
        for name in ("positions", "energy", "forces", "source", "sampler", "temperature",
                     "flags")))


class Ani1xFormat(ArrayGroupFormat):
    """ANI-1x release: a group per chemical formula, several molecules per group, with
    `atomic_numbers`, `coordinates` (Angstrom), `wb97x_dz.energy` (Hartree) and
    `wb97x_dz.forces` (Hartree/Angstrom). Values a conformer lacks are NaN (skipped)."""

    name = "ani1x"
    title = "ANI-1x release HDF5 (a group per formula)"
    positions_key = "coordinates"
    default_energy_key = "wb97x_dz.energy"
    default_forces_key = "wb97x_dz.forces"
    default_level_of_theory = "wB97X/6-31G(d)"
    energy_unit = "hartree"

    @classmethod
    def recognises(cls, probe):
        return probe.hdf5_keys is not None and cls.positions_key in probe.hdf5_keys


# ---------------------------------------------------------------- ASE layouts
class AseFramesFormat(DatasetFormat):
    """Frames read through ASE (eV, Angstrom). Energy and forces come from the calculator
    results, or from the named `info` / `arrays` keys. Consecutive frames with the same atoms
    (and the same `inchikey`/`smiles`/`name` info value, where given) form one source group;
    `source`, `sampler`, `temperature`, `flags` and `charge` info values are kept."""

    default_energy_key = "energy"
    default_forces_key = "forces"
    default_level_of_theory = "unknown"
    group_info_keys = ("inchikey", "smiles", "name")

    def frames(self) -> Iterator[tuple[str, object]]:
        """(where, ase.Atoms) pairs in file order."""
        raise NotImplementedError

    def groups(self) -> Iterator[SourceGroup]:
        run: list[tuple[str, object]] = []
        run_key = None
        n_frames = 0
        for where, atoms in self.frames():
            n_frames += 1
            key = (atoms.numbers.tobytes(),
                   next((str(atoms.info[k]) for k in self.group_info_keys if k in atoms.info),
                        ""))
            if run and (key != run_key or len(run) >= MAX_FRAMES_PER_GROUP):
                yield from self._group_of(run)
                run = []
            run_key = key
            run.append((where, atoms))
        if run:
            yield from self._group_of(run)
        if n_frames == 0:
            raise MlipdivError(f"{self.path}: no frames ({self.name} file is empty)")

    def _group_of(self, run: list[tuple[str, object]]) -> Iterator[SourceGroup]:
        labelled = []
        for where, atoms in run:
            energy, forces = (_lookup(atoms, self.energy_key), _lookup(atoms, self.forces_key))
            if energy is None or forces is None:
                missing = self.energy_key if energy is None else self.forces_key
                self.skip(f"missing key '{missing}'", 1)
                continue
            forces = np.asarray(forces, dtype=np.float64)
            if forces.shape != atoms.positions.shape:
                raise MlipdivError(f"{self.path}: {where}: forces '{self.forces_key}' shape "
                                   f"{forces.shape} does not match positions "
                                   f"{atoms.positions.shape}")
            labelled.append((where, atoms, energy, forces))
        if not labelled:
            return
        first = labelled[0][1]
        block = self.block(
            labelled[0][0], first.numbers, [a.positions for _, a, _, _ in labelled],
            [e for _, _, e, _ in labelled], [f for _, _, _, f in labelled],
            source=[str(a.info.get("source", w)) for w, a, _, _ in labelled],
            sampler=[str(a.info.get("sampler", "")) for _, a, _, _ in labelled],
            temperature=[float(a.info.get("temperature", math.nan)) for _, a, _, _ in labelled],
            flags=[str(a.info.get("flags", "")) for _, a, _, _ in labelled],
        )
        if block is not None:
            yield SourceGroup(labelled[0][0], [block], int(first.info.get("charge", 0)))


def _lookup(atoms, key: str):
    """A label by name: calculator result first, then `info`, then `arrays`."""
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    for table in (results, atoms.info, atoms.arrays):
        if key in table:
            return table[key]
    return None


class ExtxyzFormat(AseFramesFormat):
    """Extended XYZ read with `ase.io.iread` (streamed frame by frame)."""

    name = "extxyz"
    title = "extended XYZ frames"

    @classmethod
    def recognises(cls, probe):
        return probe.suffix in (".xyz", ".extxyz")

    def frames(self):
        from ase.io import iread

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


class AseDbFormat(AseFramesFormat):
    """ASE database (`ase.db`); key-value pairs and `data` entries are usable as keys."""

    name = "asedb"
    title = "ASE database rows"

    @classmethod
    def recognises(cls, probe):
        return probe.header.startswith(b"SQLite format 3") or probe.suffix == ".db"

    def frames(self):
        import ase.db

        try:
            rows = ase.db.connect(self.path, type="db").select()
            for row in rows:
                atoms = row.toatoms()
                atoms.info.update(row.key_value_pairs)
                for key, value in row.get("data", {}).items():
                    value = np.asarray(value)
                    if value.shape == atoms.positions.shape:
                        atoms.arrays[key] = value
                    else:
                        atoms.info[key] = value
                yield f"{self.path.name}:row {row.id}", atoms
        except MlipdivError:
            raise
        except Exception as exc:  # sqlite3 / ASE errors on a foreign or damaged file
            raise MlipdivError(
                f"{self.path}: not a readable ASE database ({first_line(exc)})"
            ) from None


def format_names() -> tuple[str, ...]:
    """The `--format` choices: "auto" and every registered format."""
    return (AUTO, *REGISTERED)


def format_table() -> list[dict]:
    """One row per registered format: name, title, native units, default keys (what
    `mlipdiv formats` prints)."""
    rows = []
    for name, cls in REGISTERED.items():
        forces_unit = f"{cls.energy_unit}/{cls.force_length_unit}"
        rows.append({
            "name": name, "energy_unit": cls.energy_unit, "length_unit": cls.length_unit,
            "forces_unit": f"-d({forces_unit})" if cls.forces_are_gradient else forces_unit,
            "energy_key": cls.default_energy_key, "forces_key": cls.default_forces_key,
            "title": cls.title,
        })
    return rows


def detect_format(path: str | Path) -> str:
    """The first registered format (definition order) that recognises the file by its
    suffix, its first bytes or, for HDF5, its first group's keys."""
    path = Path(path)
    if not path.is_file():
        raise MlipdivError(f"{path}: no such file")
    suffix = path.suffix.lower()
    with path.open("rb") as handle:
        header = handle.read(16)
    probe = Probe(path, suffix, header)
    found = next((name for name, cls in REGISTERED.items() if cls.recognises(probe)), None)
    if found:
        return found
    if not h5py.is_hdf5(path) and suffix not in (".h5", ".hdf5"):
        raise MlipdivError(f"{path}: cannot detect the format (not one of "
                           f"{', '.join(REGISTERED)}); pass --format")
    with open_hdf5(path) as file:
        first = next(iter(file.values()), None)
        group = first if isinstance(first, h5py.Group) else None
        probe = Probe(path, suffix, header, frozenset(group.keys()) if group else frozenset(),
                      group)
        found = next((name for name, cls in REGISTERED.items() if cls.recognises(probe)), None)
    if found:
        return found
    raise MlipdivError(f"{path}: HDF5 layout not recognised as any of "
                       f"{', '.join(REGISTERED)}; pass --format")


def open_format(path: str | Path, format: str = "auto", energy_key: str | None = None,
                forces_key: str | None = None) -> DatasetFormat:
    """A reader for `path` (`format` one of `format_names()`; 'auto' detects it)."""
    if format != AUTO and format not in REGISTERED:
        raise FieldError("format", None, f"unknown format '{format}' (choose from "
                         f"{', '.join(format_names())})")
    name = detect_format(path) if format == AUTO else format
    return REGISTERED[name](path, energy_key, forces_key)
