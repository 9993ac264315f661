"""numpy layouts: MD17 / rMD17 / sGDML `.npz` files (`npz`)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from mlipdiv.data.formats.base import MAX_FRAMES_PER_GROUP, DatasetFormat, SourceGroup, stored_text
from mlipdiv.data.units import ENERGY_UNITS
from mlipdiv.errors import MlipdivError, first_line


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
        return stored_text(self._data[key])

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
