"""HDF5 layouts: SPICE (`spice`), the SPICE pipeline input (`spice-input`), QM7-X (`qm7x`),
ANI-1x (`ani1x`), the original ANI-1 (`ani1`) and ANI-2x (`ani2x`), on the shared `Hdf5Format`
and `ArrayGroupFormat` bases."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import ClassVar

import h5py
import numpy as np

from mlipdiv.data.formats.base import (
    ConformerBlock,
    DatasetFormat,
    SourceGroup,
    smiles_charge,
    stored_text,
)
from mlipdiv.data.identity import quiet_rdkit
from mlipdiv.errors import MlipdivError, first_line


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
        smiles = stored_text(group["smiles"][()]) if "smiles" in group else ""
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
        smiles = stored_text(self.require(group, "smiles", where))
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
        smiles = stored_text(group["smiles"][()]) if "smiles" in group else ""
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
