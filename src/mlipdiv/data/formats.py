"""Readers for public QM dataset layouts, each declared by a few class attributes.

A format class states its native units, its default energy/force keys, whether forces are
stored as gradients, whether one source group holds one molecule, and whether its layout fixes
its units (`units_fixed`). The base class does the common work: shape checks, atomic-number
checks, unit conversion to eV / Angstrom (through `mlipdiv.data.units`, at this boundary
only), the plausibility check of the converted values, and dropping conformers whose labels are
missing or non-finite, counted by reason in `skipped`.

Units, most specific first: a `--energy-unit / --length-unit / --forces-unit` flag (refused by
formats whose layout fixes the units), then a unit the file states (an HDF5 `units`
attribute, sGDML's `e_unit`/`r_unit`, schnetpack's database metadata; noted in `messages`),
then the format's declared default. Forces default to energy unit / length unit.

Labels are optional: a block may carry energies and forces, energies only, or neither
(positions to label later). Readers stream: `groups()` yields one `SourceGroup` at a time and
never holds more. Structural damage (unreadable file, missing coordinates, shape mismatch,
unknown atomic number) raises `MlipdivError` naming the file, the group or frame and the
reason.
"""

from __future__ import annotations

import io
import math
import re
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import h5py
import numpy as np

from mlipdiv.data.identity import SUPPORTED_ELEMENTS, quiet_rdkit
from mlipdiv.data.units import (
    ENERGY_UNITS,
    LENGTH_UNITS,
    energy_to_ev,
    force_to_ev_per_angstrom,
    frame_problems,
    length_to_angstrom,
    parse_energy_unit,
    parse_force_unit,
    parse_length_unit,
    plausibility_problem,
    uncompressed,
)
from mlipdiv.errors import FieldError, MlipdivError, first_line

AUTO = "auto"
MAX_ATOMIC_NUMBER = 118
# extxyz / ASE db runs of one molecule are cut into groups of at most this many frames so that
# memory stays bounded however long the run is.
MAX_FRAMES_PER_GROUP = 20_000
# conformers of a block whose geometry the plausibility check looks at (the rest are alike)
PLAUSIBILITY_SAMPLE = 32
TAR_SUFFIXES = (".tar", ".tgz", ".gz", ".bz2", ".xz")
# the shortest line an atom of an xyz frame can have ("H 0 0 0\n"): an atom count larger than
# the bytes left / this cannot be true, and is refused before a parser tries to read it
MIN_XYZ_ATOM_LINE_BYTES = 8
TEXT_PROBE_BYTES = 4096
# dataset / info / arrays keys that hold forces or gradients (named when not read)
FORCES_LIKE = re.compile(r"forc|grad|(^|[_.])f($|[_.])|FOR$", re.IGNORECASE)


@dataclass
class ConformerBlock:
    """Conformers of one source group sharing one atom order, in eV and Angstrom. `energy`
    is None for positions only; `forces` is None for energies only (or positions only)."""

    atomic_numbers: np.ndarray
    positions: np.ndarray
    energy: np.ndarray | None
    forces: np.ndarray | None
    source: np.ndarray
    sampler: np.ndarray
    temperature: np.ndarray
    flags: np.ndarray

    @property
    def n_conformers(self) -> int:
        return len(self.positions)

    def subset(self, keep: np.ndarray) -> ConformerBlock:
        """The block restricted to the conformer indices `keep`."""
        return ConformerBlock(
            self.atomic_numbers, self.positions[keep],
            None if self.energy is None else self.energy[keep],
            None if self.forces is None else self.forces[keep],
            self.source[keep], self.sampler[keep], self.temperature[keep], self.flags[keep])


@dataclass
class SourceGroup:
    """One group of a source file (a SPICE molecule, an ANI-1x formula, a run of xyz frames).
    `smiles`, where the file gives one (SPICE's mapped SMILES, ANI-1's, QM9's), is the
    template for bonds and charges when the geometry alone does not perceive."""

    name: str
    blocks: list[ConformerBlock] = field(default_factory=list)
    charge: int = 0
    smiles: str = ""

    @property
    def n_conformers(self) -> int:
        return sum(block.n_conformers for block in self.blocks)


@dataclass(frozen=True)
class Probe:
    """What auto-detection knows of a path: its lower-case suffix, its first 16 bytes, the
    first 4 KiB as text, for HDF5 the keys of its first top-level group, and `container`
    ("directory" or "tarball") when the path is one — `text` is then its first .xyz file's."""

    path: Path
    suffix: str
    header: bytes
    hdf5_keys: frozenset[str] | None = None  # None: not HDF5
    first_group: h5py.Group | None = None
    text: str = ""
    container: str = ""


# every concrete format by name, in definition order (which is the order auto-detection tries)
REGISTERED: dict[str, type[DatasetFormat]] = {}


class DatasetFormat:
    """Base reader: subclasses declare units and keys and implement `groups()`.

    A concrete format declares `name` (the `--format` choice) in its class body; defining it
    registers it, and `recognises(probe)` is how `--format auto` finds it. Intermediate bases
    (Hdf5Format, AseFramesFormat...) declare no name and do not register. A default key ""
    means the layout has no such label."""

    name: ClassVar[str]
    title: ClassVar[str]  # a few words for `mlipdiv formats`
    default_energy_key: ClassVar[str]
    default_forces_key: ClassVar[str]
    default_level_of_theory: ClassVar[str]
    energy_unit: ClassVar[str] = "eV"
    length_unit: ClassVar[str] = "angstrom"
    force_length_unit: ClassVar[str] = "angstrom"
    forces_are_gradient: ClassVar[bool] = False
    # True: the layout defines its units, so the unit flags are refused.
    units_fixed: ClassVar[bool] = True
    # True: --forces-unit is accepted even where the layout fixes the other units (files of
    # the layout store forces in more than one unit).
    forces_unit_flag: ClassVar[bool] = False
    # True: a group is one molecule by construction (SPICE), so minority graphs are distortions.
    one_molecule_per_group: ClassVar[bool] = False
    accepts_directory: ClassVar[bool] = False
    # True: the default energy key holds total (all-electron DFT) energies, checked per frame
    # against the free-atom sum (`frame_problems`); unknown for free-form layouts
    total_energy: ClassVar[bool] = False
    # set by `open_format`: frames no molecule can have are skipped and counted, not refused
    skip_bad_frames: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            return
        missing = [a for a in ("title", "default_energy_key", "default_forces_key",
                               "default_level_of_theory") if not hasattr(cls, a)]
        if missing:
            raise TypeError(f"format {cls.name} must declare {', '.join(missing)}")
        if cls.energy_unit not in ENERGY_UNITS or {cls.length_unit, cls.force_length_unit} - set(
                LENGTH_UNITS):
            raise TypeError(f"format {cls.name}: unknown native unit")
        if REGISTERED.setdefault(cls.name, cls) is not cls:
            raise TypeError(f"format {cls.name} is defined twice")

    @classmethod
    def recognises(cls, probe: Probe) -> bool:
        """Whether `--format auto` should read this file with this format."""
        return False

    def __init__(self, path: str | Path, energy_key: str | None = None,
                 forces_key: str | None = None, energy_unit: str | None = None,
                 length_unit: str | None = None, forces_unit: str | None = None):
        self.path = Path(path)
        if not (self.path.is_file() or (self.accepts_directory and self.path.is_dir())):
            raise MlipdivError(f"{self.path}: no such file")
        self.energy_key_given, self.forces_key_given = energy_key is not None, \
            forces_key is not None
        self.energy_key = self.default_energy_key if energy_key is None else energy_key
        self.forces_key = self.default_forces_key if forces_key is None else forces_key
        self.skipped: Counter[str] = Counter()
        self.messages: list[str] = []
        self._resolve_units(energy_unit, length_unit, forces_unit)

    # ---- units
    def _resolve_units(self, energy_unit, length_unit, forces_unit) -> None:
        given = {k: v for k, v in (("energy_unit", energy_unit), ("length_unit", length_unit),
                                   ("forces_unit", forces_unit)) if v is not None}
        refused = {k: v for k, v in given.items()
                   if not (k == "forces_unit" and self.forces_unit_flag)}
        if refused and self.units_fixed:
            flag, value = next(iter(refused.items()))
            flexible = ", ".join(n for n, c in REGISTERED.items() if not c.units_fixed)
            raise FieldError(flag, value, f"format {self.name} fixes its units "
                             f"({self.units_text()}); unit flags apply to {flexible}")
        self._stated: set[str] = set(given)
        self.energy_unit = (type(self).energy_unit if energy_unit is None
                            else _checked(energy_unit, parse_energy_unit(energy_unit),
                                          "energy_unit", ENERGY_UNITS))
        self.length_unit = (type(self).length_unit if length_unit is None
                            else _checked(length_unit, parse_length_unit(length_unit),
                                          "length_unit", LENGTH_UNITS))
        if forces_unit is not None:
            parsed = parse_force_unit(forces_unit)
            if parsed is None:
                raise FieldError("forces_unit", forces_unit, "expected <energy>/<length>, e.g. "
                                 "kcal/mol/angstrom or hartree/bohr")
            self.force_energy_unit, self.force_length_unit = parsed
        else:
            self.force_energy_unit = self.energy_unit
            self.force_length_unit = (type(self).force_length_unit if length_unit is None
                                      else self.length_unit)

    @classmethod
    def units_text(cls) -> str:
        forces = f"{cls.energy_unit}/{cls.force_length_unit}"
        return (f"energy {cls.energy_unit}, length {cls.length_unit}, forces "
                + (f"-d({forces})" if cls.forces_are_gradient else forces))

    @property
    def units(self) -> dict[str, str]:
        """The units this reader converts from (after flags and the file's own)."""
        forces = f"{self.force_energy_unit}/{self.force_length_unit}"
        return {"energy": self.energy_unit, "length": self.length_unit,
                "forces": f"-d({forces})" if self.forces_are_gradient else forces}

    def file_unit(self, kind: str, text, where: str) -> None:
        """A unit the file states for `kind` (energy, length or forces): it wins over the
        format's default (noted), a flag wins over it (noted when they differ)."""
        if text is None:
            return
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        text = str(np.asarray(text).reshape(-1)[0]) if not isinstance(text, str) else text
        if not text.strip():
            return
        parse = {"energy": parse_energy_unit, "length": parse_length_unit,
                 "forces": parse_force_unit}[kind]
        parsed = parse(text)
        if parsed is None:
            raise MlipdivError(f"{self.path}: {where}: unknown unit '{text}' (choose a unit "
                               f"with --{kind}-unit)")
        current = ((self.force_energy_unit, self.force_length_unit) if kind == "forces"
                   else getattr(self, f"{kind}_unit"))
        if f"{kind}_unit" in self._stated:
            if parsed != current:
                self.note(f"{where}: the file says '{text}'; --{kind}-unit overrides it")
            return
        if parsed == current:
            self.note(f"{where}: units '{text}' read from the file")
            return
        self.note(f"{where}: units '{text}' read from the file (they win over the {self.name} "
                  f"default {current if isinstance(current, str) else '/'.join(current)})")
        if kind == "forces":
            self.force_energy_unit, self.force_length_unit = parsed
            self._stated.add("forces_unit")
        else:
            setattr(self, f"{kind}_unit", parsed)
            if "forces_unit" not in self._stated:  # forces follow energy / length
                if kind == "energy":
                    self.force_energy_unit = parsed
                else:
                    self.force_length_unit = parsed

    def note_unread_forces(self, keys: Iterable[str], read: Iterable[str] = ()) -> None:
        """Name in the summary every key that looks like forces or gradients and is not
        read, with the flag that reads it."""
        read = {self.forces_key, *read} if self.forces_key else set(read)
        for key in keys:
            if key not in read and FORCES_LIKE.search(str(key)):
                self.note(f"'{key}' looks like forces and is not read (--forces-key {key} "
                          "reads it" + ("" if self.units_fixed and not self.forces_unit_flag
                                        else "; --forces-unit gives its unit") + ")")

    def note(self, message: str) -> None:
        """A message for the import summary (each said once)."""
        if message not in self.messages:
            self.messages.append(message)

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
              sampler=None, temperature=None, flags=None,
              names: list[str] | None = None) -> ConformerBlock | None:
        """Check and convert native arrays to a block in eV / Angstrom (energy and forces may
        be None: not in the file).

        Conformers with non-finite coordinates or labels are dropped and counted; a block left
        empty, or holding an element mlipdiv does not support, returns None (counted). Values
        no molecule can have in the stated units stop the import (`plausibility_problem`), and
        so does a single frame no molecule can have (`frame_problems`: atoms on top of each
        other, an impossible energy), named by `names` (one per conformer; default: `where`
        and its index), unless `skip_bad_frames` (then it is skipped and counted).
        """
        numbers = np.asarray(atomic_numbers).reshape(-1).astype(np.int64)
        positions = np.asarray(positions, dtype=np.float64)
        n_conf, n_atoms = len(positions), len(numbers)
        if positions.shape != (n_conf, n_atoms, 3):
            raise MlipdivError(f"{self.path}: {where}: positions shape {positions.shape} does "
                               f"not match {n_atoms} atomic numbers")
        if energy is None and forces is not None:
            self.note(f"forces '{self.forces_key}' without energies are not imported")
            forces = None
        if forces is not None:
            forces = np.asarray(forces, dtype=np.float64)
            if forces.shape != positions.shape:
                raise MlipdivError(f"{self.path}: {where}: forces '{self.forces_key}' shape "
                                   f"{forces.shape} does not match positions {positions.shape}")
        if energy is not None:
            energy = np.asarray(energy, dtype=np.float64).reshape(-1)
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
        finite = np.isfinite(positions).all(axis=(1, 2))
        if energy is not None:
            finite &= np.isfinite(energy)
        if forces is not None:
            finite &= np.isfinite(forces).all(axis=(1, 2))
        self.skip("non-finite coordinates, energy or forces", int((~finite).sum()))
        if not finite.any():
            return None
        keep = np.flatnonzero(finite)
        force_factor = force_to_ev_per_angstrom(self.force_energy_unit, self.force_length_unit)
        out = ConformerBlock(
            atomic_numbers=numbers,
            positions=positions[keep] * length_to_angstrom(self.length_unit),
            energy=None if energy is None else energy[keep] * energy_to_ev(self.energy_unit),
            forces=None if forces is None else forces[keep] * (
                -force_factor if self.forces_are_gradient else force_factor),
            source=_strings(source, n_conf)[keep],
            sampler=_strings(sampler, n_conf)[keep],
            temperature=(np.full(n_conf, np.nan) if temperature is None
                         else np.asarray(temperature, dtype=np.float64))[keep],
            flags=_strings(flags, n_conf)[keep],
        )
        sample = slice(0, PLAUSIBILITY_SAMPLE)
        judged = None if out.forces is None else out.forces[uncompressed(numbers, out.positions)]
        problem = plausibility_problem(
            numbers, out.positions[sample], out.energy, judged,
            (self.energy_unit, self.length_unit, self.force_energy_unit, self.force_length_unit))
        if problem:
            if self.units_fixed:
                problem = re.sub(r": pass --\S+ \S+$", f", but format {self.name} fixes its "
                                 "units: is --format right?", problem)
            raise MlipdivError(f"{self.path}: {where}: {problem}")
        return self._without_bad_frames(out, [names[i] if names else f"{where}: conformer {i}"
                                              for i in keep])

    def _without_bad_frames(self, block: ConformerBlock, names: list[str]) -> ConformerBlock | None:
        """`block` less the frames `frame_problems` finds: refused in one line naming the
        first, or (with `skip_bad_frames`) skipped and counted by reason."""
        total = self.total_energy and self.energy_key == self.default_energy_key
        problems = frame_problems(block.atomic_numbers, block.positions, block.energy, total)
        if not problems:
            return block
        if not self.skip_bad_frames:
            index, (_, detail) = min(problems.items())
            raise MlipdivError(f"{self.path}: {names[index]}: {detail}; pass --skip-bad-frames "
                               "to skip such frames (counted)")
        for reason, _ in problems.values():
            self.skip(reason, 1)
        keep = np.array([i for i in range(block.n_conformers) if i not in problems], dtype=int)
        return block.subset(keep) if len(keep) else None


def _checked(text: str, parsed: str | None, flag: str, choices) -> str:
    if parsed is None:
        raise FieldError(flag, text, f"unknown unit (choose from {', '.join(choices)})")
    return parsed


def _strings(values: Iterable[str] | None, n: int) -> np.ndarray:
    if values is None:
        return np.full(n, "", dtype=object)
    return np.asarray(list(values), dtype=object)


def _text(value) -> str:
    """A string stored in HDF5 as bytes, an array of one string, or an array of characters."""
    array = np.asarray(value).reshape(-1)
    parts = [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in array]
    return parts[0] if len(parts) == 1 else "".join(parts)


# ---------------------------------------------------------------- HDF5 layouts
class Hdf5Format(DatasetFormat):
    """A file whose groups hold the source groups; subclasses read one group (`read_group`)
    or several from one HDF5 group (`read`)."""

    def __init__(self, path, energy_key=None, forces_key=None, **units):
        super().__init__(path, energy_key, forces_key, **units)
        self._file = open_hdf5(self.path)

    @property
    def n_groups(self) -> int:
        return len(self._file)

    def entries(self) -> Iterator[tuple[str, h5py.Group]]:
        """(name, HDF5 group) pairs to read: the top-level groups."""
        for name in self._file:
            yield name, self._file[name]

    def groups(self) -> Iterator[SourceGroup]:
        try:
            for name, obj in self.entries():
                try:
                    found = list(self.read(name, obj))
                except (OSError, KeyError, ValueError, TypeError) as exc:
                    raise MlipdivError(
                        f"{self.path}: group {name}: unreadable ({first_line(exc)})"
                    ) from None
                yield from (g for g in found if g is not None and g.blocks)
        finally:
            self._file.close()

    def read(self, name: str, group: h5py.Group) -> Iterable[SourceGroup | None]:
        return [self.read_group(name, group)]

    def read_group(self, name: str, group: h5py.Group) -> SourceGroup | None:
        raise NotImplementedError

    def require(self, group: h5py.Group, key: str, where: str) -> np.ndarray:
        """A dataset the layout cannot do without: missing is an error, not a skip."""
        if not isinstance(group, h5py.Group) or key not in group:
            raise MlipdivError(f"{self.path}: {where}: missing key '{key}'")
        return group[key][()]

    def labels(self, group: h5py.Group, n_conformers: int) -> tuple | None:
        """The chosen energy and force arrays (None where the layout has no such key), or
        None (skipped, counted) when a key is absent."""
        found = []
        for key in (self.energy_key, self.forces_key):
            if not key:
                found.append(None)
                continue
            if key not in group:
                self.skip(f"missing key '{key}'", n_conformers)
                return None
            found.append(group[key][()])
        return tuple(found)

    def dataset_units(self, group: h5py.Group, positions_key: str) -> None:
        """Units stated by `units` attributes of the positions and label datasets."""
        for key, kind in ((positions_key, "length"), (self.energy_key, "energy"),
                          (self.forces_key, "forces")):
            if key and key in group and "units" in group[key].attrs:
                self.file_unit(kind, group[key].attrs["units"], f"'{key}'")


def open_hdf5(path: Path) -> h5py.File:
    """Open an HDF5 file read-only, turning truncated or foreign files into one-line errors."""
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise MlipdivError(f"{path}: not a readable HDF5 file ({first_line(exc)})") from None


class ArrayGroupFormat(Hdf5Format):
    """Layouts with one block of arrays per group: `atomic_numbers`, a (n_conf, n_atoms, 3)
    positions dataset named by `positions_key`, and the label datasets. A `smiles` dataset,
    where present, gives the net charge and the template for bond perception."""

    positions_key: ClassVar[str]

    def read_group(self, name, group):
        numbers = self.require(group, "atomic_numbers", f"group {name}")
        positions = self.require(group, self.positions_key, f"group {name}")
        self.dataset_units(group, self.positions_key)
        self.note_unread_forces(group.keys())
        labels = self.labels(group, len(positions))
        if labels is None:
            return None
        block = self.block(f"group {name}", numbers, positions, *labels,
                           source=[f"{name}[{i}]" for i in range(len(positions))])
        smiles = _text(group["smiles"][()]) if "smiles" in group else ""
        return SourceGroup(name, [block] if block else [], smiles_charge(smiles), smiles)


class SpiceFormat(ArrayGroupFormat):
    """SPICE: a group per molecule; `conformations` in Bohr, `dft_total_energy` in Hartree,
    `dft_total_gradient` in Hartree/Bohr (minus the force); the charge comes from `smiles`."""

    name = "spice"
    title = "SPICE HDF5 (a group per molecule)"
    positions_key = "conformations"
    default_energy_key = "dft_total_energy"
    total_energy = True
    default_forces_key = "dft_total_gradient"
    default_level_of_theory = "wB97M-D3(BJ)/def2-TZVPPD"
    energy_unit = "hartree"
    length_unit = "bohr"
    force_length_unit = "bohr"
    forces_are_gradient = True
    one_molecule_per_group = True

    @classmethod
    def recognises(cls, probe):
        return probe.hdf5_keys is not None and {cls.positions_key, "atomic_numbers"} <= \
            probe.hdf5_keys


class SpiceInputFormat(Hdf5Format):
    """SPICE pipeline input (openmm/spice-dataset): a group per molecule with `conformations`
    (units in the dataset's `units` attribute, nanometers) and a mapped `smiles`, which gives
    the atomic numbers (atom map k = atom k) and the charge. No labels: `mlipdiv label` them."""

    name = "spice-input"
    title = "SPICE pipeline input HDF5 (conformations + mapped smiles, no labels)"
    default_energy_key = ""
    default_forces_key = ""
    default_level_of_theory = "unlabelled"
    length_unit = "nm"
    force_length_unit = "nm"
    units_fixed = False
    one_molecule_per_group = True

    @classmethod
    def recognises(cls, probe):
        return (probe.hdf5_keys is not None and {"conformations", "smiles"} <= probe.hdf5_keys
                and "atomic_numbers" not in probe.hdf5_keys)

    def read_group(self, name, group):
        where = f"group {name}"
        smiles = _text(self.require(group, "smiles", where))
        positions = self.require(group, "conformations", where)
        self.dataset_units(group, "conformations")
        numbers = mapped_atomic_numbers(smiles)
        if numbers is None:
            raise MlipdivError(f"{self.path}: {where}: smiles '{smiles}' is not atom-mapped "
                               "(every atom :1..:n), so it cannot give the atomic numbers")
        labels = self.labels(group, len(positions))
        if labels is None:
            return None
        block = self.block(where, numbers, positions, *labels,
                           source=[f"{name}[{i}]" for i in range(len(positions))])
        return SourceGroup(name, [block] if block else [], smiles_charge(smiles), smiles)


@quiet_rdkit()
def smiles_charge(smiles: str) -> int:
    """Total formal charge of a SMILES (0 when empty or unparsable): bond perception needs it."""
    if not smiles:
        return 0
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles, sanitize=False)
    return 0 if mol is None else sum(atom.GetFormalCharge() for atom in mol.GetAtoms())


@quiet_rdkit()
def mapped_atomic_numbers(smiles: str) -> np.ndarray | None:
    """Atomic numbers in atom-map order of a fully mapped SMILES (maps 1..n), else None."""
    from rdkit import Chem

    params = Chem.SmilesParserParams()
    params.removeHs, params.sanitize = False, False
    mol = Chem.MolFromSmiles(smiles, params)
    if mol is None:
        return None
    maps = [a.GetAtomMapNum() for a in mol.GetAtoms()]
    if sorted(maps) != list(range(1, len(maps) + 1)):
        return None
    numbers = np.zeros(len(maps), dtype=np.int64)
    for atom, k in zip(mol.GetAtoms(), maps, strict=True):
        numbers[k - 1] = atom.GetAtomicNum()
    return numbers


class Qm7xFormat(Hdf5Format):
    """QM7-X: a group per molecule id holding one subgroup per conformer
    (`Geom-m{m}-i{i}-c{c}-opt` / `...-d{k}`) with `atNUM`, `atXYZ` (Angstrom), `ePBE0+MBD`
    (eV, an array of one value) and `totFOR` (eV/Angstrom). Isomers `i` share a group, so
    groups are split into molecules by perception."""

    name = "qm7x"
    title = "QM7-X HDF5 (a subgroup per conformer)"
    default_energy_key = "ePBE0+MBD"
    total_energy = True
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
            self.note_unread_forces(conf.keys())
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
    def joined(name):
        parts = [getattr(b, name) for b in blocks]
        return None if any(p is None for p in parts) else np.concatenate(parts)

    return ConformerBlock(blocks[0].atomic_numbers, *(
        joined(name) for name in ("positions", "energy", "forces", "source", "sampler",
                                  "temperature", "flags")))


class Ani1xFormat(ArrayGroupFormat):
    """ANI-1x release: a group per chemical formula, several molecules per group, with
    `atomic_numbers`, `coordinates` (Angstrom), `wb97x_dz.energy` (Hartree) and
    `wb97x_dz.forces` (Hartree/Angstrom). Values a conformer lacks are NaN (skipped)."""

    name = "ani1x"
    title = "ANI-1x release HDF5 (a group per formula)"
    positions_key = "coordinates"
    default_energy_key = "wb97x_dz.energy"
    total_energy = True
    default_forces_key = "wb97x_dz.forces"
    default_level_of_theory = "wB97X/6-31G(d)"
    energy_unit = "hartree"

    @classmethod
    def recognises(cls, probe):
        return probe.hdf5_keys is not None and {cls.positions_key, "atomic_numbers"} <= \
            probe.hdf5_keys


def _symbols_to_numbers(symbols, where: str, path: Path) -> np.ndarray:
    from ase.data import atomic_numbers

    out = []
    for value in np.asarray(symbols).reshape(-1):
        symbol = value.decode() if isinstance(value, bytes) else str(value)
        if symbol not in atomic_numbers:
            raise MlipdivError(f"{path}: {where}: unknown element symbol '{symbol}'")
        out.append(atomic_numbers[symbol])
    return np.array(out, dtype=np.int64)


class Ani1Format(Hdf5Format):
    """Original ANI-1 release (pyanitools layout): groups `gdb11_sXX` holding one subgroup per
    molecule with `species` (element symbols), `coordinates` (Angstrom), `energies`
    (Hartree, wB97X/6-31G(d)) and `smiles` (one character per entry). Each subgroup is one
    molecule (normal-mode-sampled conformers). The release has no forces; files of the same
    layout that add `forces` (ANI-1 derivatives, bond scans) are read with them, in
    Hartree/Bohr unless --forces-unit says otherwise. The high-energy conformers
    (`coordinatesHE`, `energiesHE`, `forcesHE`) are imported with the others, sampler
    `ani1-high-energy`, source `<group>/HE[i]`."""

    name = "ani1"
    title = "original ANI-1 HDF5 (pyanitools: gdb11_sXX/<molecule>/species, coordinates, energies)"
    default_energy_key = "energies"
    total_energy = True
    default_forces_key = "forces"
    default_level_of_theory = "wB97X/6-31G(d)"
    energy_unit = "hartree"
    force_length_unit = "bohr"
    forces_unit_flag = True
    one_molecule_per_group = True
    HIGH_ENERGY = "HE"  # suffix of the high-energy conformers' datasets
    HIGH_ENERGY_SAMPLER = "ani1-high-energy"

    @classmethod
    def recognises(cls, probe):
        group = probe.first_group
        if group is None:
            return False
        needed = {"species", "coordinates", "energies"}
        if needed <= set(group.keys()):
            return group["species"].ndim == 1
        first = next(iter(group.values()), None)
        return isinstance(first, h5py.Group) and needed <= set(first.keys())

    @property
    def n_groups(self) -> int | None:
        return None

    def entries(self):
        def walk(prefix, group):
            if "coordinates" in group:
                yield prefix, group
                return
            for key, value in group.items():
                if isinstance(value, h5py.Group):
                    yield from walk(f"{prefix}/{key}" if prefix else key, value)

        yield from walk("", self._file)

    def labels(self, group, n_conformers, suffix: str = ""):
        """Energies, and forces where the group has them (the release has none: energies
        only); a key named with --forces-key is required."""
        energy_key, forces_key = self.energy_key + suffix, self.forces_key + suffix
        if energy_key not in group:
            self.skip(f"missing key '{energy_key}'", n_conformers)
            return None
        if forces_key not in group and self.forces_key_given and not suffix:
            self.skip(f"missing key '{forces_key}'", n_conformers)
            return None
        forces = group[forces_key][()] if forces_key in group else None
        return group[energy_key][()], forces

    def read_group(self, name, group):
        where = f"group {name}"
        numbers = _symbols_to_numbers(self.require(group, "species", where), where, self.path)
        positions = self.require(group, "coordinates", where)
        self.dataset_units(group, "coordinates")
        he = self.HIGH_ENERGY
        self.note_unread_forces(group.keys(), read=[self.forces_key + he])
        labels = self.labels(group, len(positions))
        if labels is None:
            return None
        n_main = len(positions)
        source = [f"{name}[{i}]" for i in range(n_main)]
        sampler = [""] * n_main
        extra = self._high_energy(group, where, labels[1] is not None)
        if extra is not None:
            positions = np.concatenate([positions, extra[0]])
            labels = tuple(None if a is None else np.concatenate([a, b])
                           for a, b in zip(labels, extra[1:], strict=True))
            source += [f"{name}/{he}[{i}]" for i in range(len(extra[0]))]
            sampler += [self.HIGH_ENERGY_SAMPLER] * len(extra[0])
        block = self.block(where, numbers, positions, *labels, source=source, sampler=sampler)
        smiles = _text(group["smiles"][()]) if "smiles" in group else ""
        return SourceGroup(name, [block] if block else [], smiles_charge(smiles), smiles)

    def _high_energy(self, group, where, with_forces: bool) -> tuple | None:
        """(positions, energies, forces or None) of the group's high-energy conformers, or
        None when it has none (or they lack a label the others have: skipped, counted)."""
        key = "coordinates" + self.HIGH_ENERGY
        if key not in group or not len(group[key]):
            return None
        positions = group[key][()]
        labels = self.labels(group, len(positions), self.HIGH_ENERGY)
        if labels is None:
            return None
        if with_forces and labels[1] is None:
            self.skip(f"high-energy conformers without '{self.forces_key}{self.HIGH_ENERGY}'",
                      len(positions))
            return None
        return positions, labels[0], labels[1] if with_forces else None


class Ani2xFormat(Hdf5Format):
    """ANI-2x release: groups by atom count (`002`, `003`, ...) with `species` (atomic
    numbers, one row per conformer), `coordinates` (Angstrom), `energies` (Hartree) and
    `forces` (Hartree/Angstrom). Each distinct species row is one source group (a formula in
    one atom order), split into molecules by perception."""

    name = "ani2x"
    title = "ANI-2x release HDF5 (groups by atom count: species, coordinates, energies, forces)"
    default_energy_key = "energies"
    total_energy = True
    default_forces_key = "forces"
    default_level_of_theory = "wB97X/6-31G(d)"
    energy_unit = "hartree"

    @classmethod
    def recognises(cls, probe):
        group = probe.first_group
        return (group is not None and {"species", "coordinates", "energies"} <= set(group.keys())
                and group["species"].ndim == 2)

    def read(self, name, group):
        where = f"group {name}"
        species = np.asarray(self.require(group, "species", where))
        positions = self.require(group, "coordinates", where)
        if species.ndim != 2 or species.shape != positions.shape[:2]:
            raise MlipdivError(f"{self.path}: {where}: species shape {species.shape} does not "
                               f"match coordinates {positions.shape}")
        self.note_unread_forces(group.keys())
        labels = self.labels(group, len(positions))
        if labels is None:
            return
        rows, inverse = np.unique(species, axis=0, return_inverse=True)
        for k, row in enumerate(rows):
            idx = np.flatnonzero(inverse.reshape(-1) == k)
            energy, forces = (None if a is None else np.asarray(a)[idx] for a in labels)
            sub = f"{name}/{'-'.join(str(int(z)) for z in row)}"
            block = self.block(f"group {sub}", row, positions[idx], energy, forces,
                               source=[f"{name}[{i}]" for i in idx])
            yield SourceGroup(sub, [block] if block else [])


# ---------------------------------------------------------------- numpy layouts
class NpzFormat(DatasetFormat):
    """MD17 / rMD17 / sGDML `.npz`: positions `R`, atomic numbers `z`, energies `E` and
    forces `F` (sGDML, MD17); `coords`, `nuclear_charges`, `energies`, `forces` (rMD17); or
    `positions`, `atomic_numbers`, `energy`, `forces`. MD17-family files are kcal/mol and
    Angstrom (sGDML's `e_unit`/`r_unit` keys, where present, say so); the last variant has no
    convention, so its units must be given. Missing labels import as positions only."""

    name = "npz"
    title = "MD17 / rMD17 / sGDML .npz (R, z, E, F and variants)"
    default_energy_key = "E"
    default_forces_key = "F"
    default_level_of_theory = "unknown"
    energy_unit = "kcal/mol"
    units_fixed = False
    VARIANTS: ClassVar = (("R", "z", "E", "F"), ("coords", "nuclear_charges", "energies",
                                                  "forces"),
                          ("positions", "atomic_numbers", "energy", "forces"))

    @classmethod
    def recognises(cls, probe):
        return probe.suffix == ".npz"

    def __init__(self, path, energy_key=None, forces_key=None, **units):
        super().__init__(path, energy_key, forces_key, **units)
        try:
            self._data = np.load(self.path, allow_pickle=False)
            keys = set(self._data.files)
        except Exception as exc:  # zipfile / numpy errors on a damaged file
            raise MlipdivError(f"{self.path}: not a readable .npz file ({first_line(exc)})"
                               ) from None
        variant = next((v for v in self.VARIANTS if v[0] in keys and v[1] in keys), None)
        if variant is None:
            raise MlipdivError(f"{self.path}: no positions/atomic-number keys of a known npz "
                               f"layout (found {', '.join(sorted(keys))}; expected R and z, "
                               "coords and nuclear_charges, or positions and atomic_numbers)")
        self._positions_key, self._numbers_key = variant[:2]
        if energy_key is None:
            self.energy_key = variant[2]
        if forces_key is None:
            self.forces_key = variant[3]
        self.note_unread_forces(keys)
        self.file_unit("energy", self._string("e_unit"), "key 'e_unit'")
        self.file_unit("length", self._string("r_unit"), "key 'r_unit'")
        theory = self._string("theory")
        self._theory = theory or "unknown"
        if variant is self.VARIANTS[2] and "e_unit" not in keys and self.energy_key in keys \
                and "energy_unit" not in self._stated:
            raise MlipdivError(f"{self.path}: keys '{self.energy_key}'/'{self.forces_key}' "
                               "carry no unit and this npz layout has no convention: pass "
                               f"--energy-unit ({', '.join(ENERGY_UNITS)}) and, unless "
                               "Angstrom, --length-unit")

    def _string(self, key: str) -> str | None:
        if key not in self._data.files:
            return None
        return _text(self._data[key])

    @property
    def level_of_theory(self) -> str:
        return f"{self._theory} ({self.name}, energy '{self.energy_key}')"

    def groups(self):
        data, where = self._data, f"{self.path.name}"
        try:
            positions = np.asarray(data[self._positions_key])
            numbers = np.asarray(data[self._numbers_key])
            energy = forces = None
            if self.energy_key in data.files:
                energy = np.asarray(data[self.energy_key])
                if energy.size == len(positions):  # (n,) or sGDML's (n, 1)
                    energy = energy.reshape(-1)
                if self.forces_key in data.files:
                    forces = np.asarray(data[self.forces_key])
                elif self.forces_key_given:
                    raise MlipdivError(f"{self.path}: missing key '{self.forces_key}'")
                else:
                    self.note(f"no '{self.forces_key}': importing energies without forces")
            elif self.energy_key_given:
                raise MlipdivError(f"{self.path}: missing key '{self.energy_key}'")
            else:
                self.note(f"no '{self.energy_key}': importing positions only")
        except (ValueError, OSError) as exc:
            raise MlipdivError(f"{self.path}: unreadable ({first_line(exc)})") from None
        if positions.ndim == 2:
            positions = positions[None]
        if numbers.ndim == 2:  # per-frame atomic numbers: one block per distinct row
            rows, inverse = np.unique(numbers, axis=0, return_inverse=True)
            parts = [(row, np.flatnonzero(inverse.reshape(-1) == k)) for k, row in
                     enumerate(rows)]
        else:
            parts = [(numbers, np.arange(len(positions)))]
        for row, idx in parts:
            for start in range(0, len(idx), MAX_FRAMES_PER_GROUP):
                chunk = idx[start:start + MAX_FRAMES_PER_GROUP]
                name = f"{where}[{chunk[0]}:{chunk[-1] + 1}]"
                block = self.block(name, row, positions[chunk],
                                   None if energy is None else energy[chunk],
                                   None if forces is None else forces[chunk],
                                   source=[f"{where}:{i}" for i in chunk])
                if block is not None:
                    yield SourceGroup(name, [block])


# ---------------------------------------------------------------- ASE layouts
class AseFramesFormat(DatasetFormat):
    """Frames read through ASE (eV, Angstrom unless flags say otherwise). Energy and forces
    come from the calculator results, or from the named `info` / `arrays` keys. Consecutive
    frames with the same atoms (and the same `inchikey`/`smiles`/`name` info value, where
    given) form one source group; `source`, `sampler`, `temperature`, `flags` and `charge`
    info values are kept, and a `smiles` is the group's perception template.

    Which labels a file carries is decided by its first frame: without the energy key the
    file imports as positions only, with energy but no forces as energies only (said in the
    summary); a later frame lacking a label the first one had is skipped and counted. A key
    named with --energy-key / --forces-key is required of every frame."""

    default_energy_key = "energy"
    default_forces_key = "forces"
    default_level_of_theory = "unknown"
    units_fixed = False
    group_info_keys = ("inchikey", "smiles", "name")

    def frames(self) -> Iterator[tuple[str, object]]:
        """(where, ase.Atoms) pairs in file order."""
        raise NotImplementedError

    def groups(self) -> Iterator[SourceGroup]:
        run: list[tuple[str, object]] = []
        run_key = None
        n_frames = 0
        self._with_energy = self._with_forces = None
        for where, atoms in self.frames():
            if n_frames == 0:
                self._decide_labels(atoms)
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

    def _decide_labels(self, atoms) -> None:
        has_energy = bool(self.energy_key) and _lookup(atoms, self.energy_key) is not None
        has_forces = bool(self.forces_key) and _lookup(atoms, self.forces_key) is not None
        self._with_energy = self.energy_key_given or has_energy
        self._with_forces = self._with_energy and (self.forces_key_given or has_forces)
        results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
        self.note_unread_forces([*results, *atoms.info, *atoms.arrays],
                                read=[self.forces_key] if self._with_forces else [])
        if not self._with_energy:
            self.note("no energies in the first frame"
                      + (f" (key '{self.energy_key}')" if self.energy_key else "")
                      + ": importing positions only")
        elif not self._with_forces and self.forces_key:
            self.note(f"no forces in the first frame (key '{self.forces_key}'): importing "
                      "energies without forces")

    def _group_of(self, run: list[tuple[str, object]]) -> Iterator[SourceGroup]:
        kept = []
        for where, atoms in run:
            energy = _lookup(atoms, self.energy_key) if self._with_energy else None
            forces = _lookup(atoms, self.forces_key) if self._with_forces else None
            if (self._with_energy and energy is None) or (self._with_forces and forces is None):
                missing = self.energy_key if self._with_energy and energy is None \
                    else self.forces_key
                self.skip(f"missing key '{missing}'", 1)
                continue
            if forces is not None:
                forces = _numbers(forces, f"{self.path}: {where}: forces '{self.forces_key}'")
                if forces.shape != atoms.positions.shape:
                    raise MlipdivError(f"{self.path}: {where}: forces '{self.forces_key}' "
                                       f"shape {forces.shape} does not match positions "
                                       f"{atoms.positions.shape}")
            if energy is not None:
                energy = _numbers(energy, f"{self.path}: {where}: energy '{self.energy_key}'"
                                  ).reshape(-1)
                if energy.size != 1:
                    raise MlipdivError(f"{self.path}: {where}: energy '{self.energy_key}' holds "
                                       f"{energy.size} values, expected 1")
                energy = float(energy[0])
            kept.append((where, atoms, energy, forces))
        if not kept:
            return
        first = kept[0][1]
        block = self.block(
            kept[0][0], first.numbers, [a.positions for _, a, _, _ in kept],
            [e for _, _, e, _ in kept] if self._with_energy else None,
            [f for _, _, _, f in kept] if self._with_forces else None,
            source=[str(a.info.get("source", w)) for w, a, _, _ in kept],
            sampler=[str(a.info.get("sampler", "")) for _, a, _, _ in kept],
            temperature=[float(a.info.get("temperature", math.nan)) for _, a, _, _ in kept],
            flags=[str(a.info.get("flags", "")) for _, a, _, _ in kept],
            names=[w for w, _, _, _ in kept],
        )
        if block is not None:
            smiles = str(first.info.get("smiles", ""))
            charge = first.info.get("charge")
            yield SourceGroup(kept[0][0], [block],
                              smiles_charge(smiles) if charge is None else int(charge), smiles)


def _numbers(value, where: str) -> np.ndarray:
    """A label as float64, or one line naming where it is not a number (`energy=abc`)."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        text = str(value if np.ndim(value) == 0 else np.asarray(value).ravel()[0])
        raise MlipdivError(f"{where} is not a number ('{text[:40]}')") from None


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


def _lookup(atoms, key: str):
    """A label by name: calculator result first, then `info`, then `arrays`."""
    if not key:
        return None
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    for table in (results, atoms.info, atoms.arrays):
        if key in table:
            return table[key]
    return None


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


class AseDbFormat(AseFramesFormat):
    """ASE database (`ase.db`); key-value pairs and `data` entries are usable as keys.
    Units stated in the database's metadata (schnetpack's `_property_unit_dict` and
    `_distance_unit`) are read."""

    name = "asedb"
    title = "ASE database rows"

    @classmethod
    def recognises(cls, probe):
        return probe.header.startswith(b"SQLite format 3") or probe.suffix == ".db"

    def __init__(self, path, energy_key=None, forces_key=None, **units):
        super().__init__(path, energy_key, forces_key, **units)
        import ase.db

        try:
            metadata = ase.db.connect(self.path, type="db").metadata or {}
        except Exception as exc:  # sqlite3 / ASE errors on a foreign or damaged file
            raise MlipdivError(
                f"{self.path}: not a readable ASE database ({first_line(exc)})") from None
        property_units = metadata.get("_property_unit_dict") or {}
        self.file_unit("energy", property_units.get(self.energy_key),
                       "metadata '_property_unit_dict'")
        self.file_unit("length", metadata.get("_distance_unit"), "metadata '_distance_unit'")
        self.file_unit("forces", property_units.get(self.forces_key),
                       "metadata '_property_unit_dict'")

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


class TrajFormat(AseFramesFormat):
    """ASE trajectory (`.traj`, the binary ulm format `ase.io.Trajectory` writes): frames with
    the calculator's energy and forces, eV and eV/Angstrom as in extxyz."""

    name = "traj"
    title = "ASE trajectory (.traj, ase.io.Trajectory)"
    MAGIC = b"- of UlmASE-Traj"

    @classmethod
    def recognises(cls, probe):
        return not probe.container and (probe.header.startswith(cls.MAGIC)
                                        or probe.suffix == ".traj")

    def frames(self):
        from ase.io.trajectory import Trajectory

        try:
            trajectory = Trajectory(self.path, "r")
        except Exception as exc:  # ulm / ASE errors on a foreign or damaged file
            raise MlipdivError(f"{self.path}: not a readable ASE trajectory "
                               f"({first_line(exc)})") from None
        with trajectory:
            for index in range(len(trajectory)):
                try:
                    atoms = trajectory[index]
                except Exception as exc:  # a truncated or damaged frame
                    raise MlipdivError(f"{self.path}: frame {index}: unreadable "
                                       f"({first_line(exc)})") from None
                yield f"{self.path.name}:{index}", atoms


def format_names() -> tuple[str, ...]:
    """The `--format` choices: "auto" and every registered format."""
    return (AUTO, *REGISTERED)


def format_table() -> list[dict]:
    """One row per registered format: name, title, native units, whether the unit flags
    apply, default keys (what `mlipdiv formats` prints)."""
    rows = []
    for name, cls in REGISTERED.items():
        forces_unit = f"{cls.energy_unit}/{cls.force_length_unit}"
        rows.append({
            "name": name, "energy_unit": cls.energy_unit, "length_unit": cls.length_unit,
            "forces_unit": f"-d({forces_unit})" if cls.forces_are_gradient else forces_unit,
            "unit_flags": not cls.units_fixed,
            "forces_unit_flag": cls.forces_unit_flag or not cls.units_fixed,
            "energy_key": cls.default_energy_key, "forces_key": cls.default_forces_key,
            "title": cls.title,
        })
    return rows


def _container_probe(path: Path, kind: str) -> Probe:
    """Probe of a directory or tarball: the text of its first .xyz file."""
    text = ""
    if kind == "directory":
        first = next(iter(sorted(path.glob("*.xyz"))), None)
        if first is not None:
            with first.open("rb") as handle:
                text = handle.read(TEXT_PROBE_BYTES).decode(errors="replace")
    else:
        try:
            with tarfile.open(path) as tar:
                for member in tar:
                    if member.isfile() and member.name.endswith(".xyz"):
                        text = tar.extractfile(member).read(TEXT_PROBE_BYTES).decode(
                            errors="replace")
                        break
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise MlipdivError(f"{path}: unreadable tarball ({first_line(exc)})") from None
    return Probe(path, path.suffix.lower(), b"", text=text, container=kind)


def detect_format(path: str | Path) -> str:
    """The first registered format (definition order) that recognises the path by its
    suffix, its first bytes or lines, for HDF5 its first group's keys, and for a directory or
    tarball its first .xyz file."""
    path = Path(path)
    if path.is_dir():
        probe = _container_probe(path, "directory")
    elif not path.is_file():
        raise MlipdivError(f"{path}: no such file")
    else:
        suffix = path.suffix.lower()
        with path.open("rb") as handle:
            head = handle.read(TEXT_PROBE_BYTES)
        if suffix in TAR_SUFFIXES and tarfile.is_tarfile(path):
            probe = _container_probe(path, "tarball")
        else:
            probe = Probe(path, suffix, head[:16], text=head.decode(errors="replace"))
    found = next((name for name, cls in REGISTERED.items() if cls.recognises(probe)), None)
    if found:
        return found
    if probe.container or (not h5py.is_hdf5(path) and probe.suffix not in (".h5", ".hdf5")):
        raise MlipdivError(f"{path}: cannot detect the format (not one of "
                           f"{', '.join(REGISTERED)}); pass --format")
    with open_hdf5(path) as file:
        first = next(iter(file.values()), None)
        group = first if isinstance(first, h5py.Group) else None
        probe = Probe(path, probe.suffix, probe.header,
                      frozenset(group.keys()) if group else frozenset(), group)
        found = next((name for name, cls in REGISTERED.items() if cls.recognises(probe)), None)
    if found:
        return found
    raise MlipdivError(f"{path}: HDF5 layout not recognised as any of "
                       f"{', '.join(REGISTERED)}; pass --format")


def open_format(path: str | Path, format: str = "auto", energy_key: str | None = None,
                forces_key: str | None = None, energy_unit: str | None = None,
                length_unit: str | None = None,
                forces_unit: str | None = None, skip_bad_frames: bool = False) -> DatasetFormat:
    """A reader for `path` (`format` one of `format_names()`; 'auto' detects it); the unit
    flags apply to formats whose layout does not fix the units; `skip_bad_frames` skips (and
    counts) the frames no molecule can have instead of refusing the file."""
    if format != AUTO and format not in REGISTERED:
        raise FieldError("format", None, f"unknown format '{format}' (choose from "
                         f"{', '.join(format_names())})")
    name = detect_format(path) if format == AUTO else format
    reader = REGISTERED[name](path, energy_key, forces_key, energy_unit=energy_unit,
                              length_unit=length_unit, forces_unit=forces_unit)
    reader.skip_bad_frames = skip_bad_frames
    return reader
