"""The shared base of the layouts read as ASE frames (`AseFramesFormat`): grouping of
consecutive frames, label lookup by name, and label checks. It holds no layout of its own; the
xyz family (`xyz.py`) and ASE's own files (`asedb.py`) build on it."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from mlipdiv.data.formats.base import (
    MAX_FRAMES_PER_GROUP,
    DatasetFormat,
    SourceGroup,
    smiles_charge,
)
from mlipdiv.errors import MlipdivError


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


def _lookup(atoms, key: str):
    """A label by name: calculator result first, then `info`, then `arrays`."""
    if not key:
        return None
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    for table in (results, atoms.info, atoms.arrays):
        if key in table:
            return table[key]
    return None
