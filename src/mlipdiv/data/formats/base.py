"""The base of every dataset format: `DatasetFormat` (checks, unit conversion, the
plausibility check, skipping and counting), the registry `REGISTERED` it fills, the block and
group records readers yield (`ConformerBlock`, `SourceGroup`), the auto-detection `Probe`, and
the helpers several layout families share. It holds no layout of its own."""

from __future__ import annotations

import re
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
from mlipdiv.errors import FieldError, MlipdivError

AUTO = "auto"
MAX_ATOMIC_NUMBER = 118
# extxyz / ASE db runs of one molecule are cut into groups of at most this many frames so that
# memory stays bounded however long the run is.
MAX_FRAMES_PER_GROUP = 20_000
# conformers of a block whose geometry the plausibility check looks at (the rest are alike)
PLAUSIBILITY_SAMPLE = 32
TAR_SUFFIXES = (".tar", ".tgz", ".gz", ".bz2", ".xz")
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


def stored_text(value) -> str:
    """A string stored in HDF5 as bytes, an array of one string, or an array of characters."""
    array = np.asarray(value).reshape(-1)
    parts = [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in array]
    return parts[0] if len(parts) == 1 else "".join(parts)


@quiet_rdkit()
def smiles_charge(smiles: str) -> int:
    """Total formal charge of a SMILES (0 when empty or unparsable): bond perception needs it."""
    if not smiles:
        return 0
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles, sanitize=False)
    return 0 if mol is None else sum(atom.GetFormalCharge() for atom in mol.GetAtoms())


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
