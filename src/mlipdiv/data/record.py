"""The molecule record: all (or a subset of the) conformers of one molecule in eV / Angstrom,
with their provenance, checked when made. What a store yields when read (`data.store`) and
what its writer takes; `concatenate` joins records of one molecule."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from mlipdiv.errors import MlipdivError

PROVENANCE_STR = ("sampler", "source", "flags")


@dataclass
class MoleculeRecord:
    """All (or a subset of the) conformers of one molecule, in eV / Angstrom."""

    inchikey: str
    smiles: str
    formula: str
    atomic_numbers: np.ndarray
    positions: np.ndarray
    energy: np.ndarray | None = None
    forces: np.ndarray | None = None
    sampler: np.ndarray = field(default=None)  # type: ignore[assignment]
    temperature: np.ndarray = field(default=None)  # type: ignore[assignment]
    source: np.ndarray = field(default=None)  # type: ignore[assignment]
    flags: np.ndarray = field(default=None)  # type: ignore[assignment]
    # which conformers carry labels, for a record read at a named label set of which only a
    # subset is labelled (the others have NaN energy and forces); None: all (or none) are
    label_mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.atomic_numbers = np.asarray(self.atomic_numbers, dtype=np.int64)
        self.positions = np.asarray(self.positions, dtype=np.float64)
        n_conf = len(self.positions)
        for name in PROVENANCE_STR:
            if getattr(self, name) is None:
                setattr(self, name, np.full(n_conf, "", dtype=object))
        if self.temperature is None:
            self.temperature = np.full(n_conf, np.nan)
        self.validate()

    @property
    def n_conformers(self) -> int:
        return len(self.positions)

    @property
    def n_atoms(self) -> int:
        return len(self.atomic_numbers)

    @property
    def labelled(self) -> bool:
        """Whether the conformers have energies (forces may still be absent: `has_forces`)."""
        return self.energy is not None

    @property
    def n_labelled(self) -> int:
        """Conformers with labels (all when labelled and no `label_mask`, else the mask's)."""
        if not self.labelled:
            return 0
        return self.n_conformers if self.label_mask is None else int(self.label_mask.sum())

    def is_labelled(self, index: int) -> bool:
        return self.labelled and (self.label_mask is None or bool(self.label_mask[index]))

    @property
    def has_forces(self) -> bool:
        return self.forces is not None

    @property
    def label_kind(self) -> str:
        """"energy+forces", "energy" (energies only) or "none" (positions only)."""
        return "energy+forces" if self.has_forces else "energy" if self.labelled else "none"

    def validate(self) -> None:
        """Raise MlipdivError on inconsistent shapes or non-finite values."""
        n_conf, n_atoms = self.n_conformers, self.n_atoms
        where = f"molecule {self.inchikey}"
        if self.positions.shape != (n_conf, n_atoms, 3):
            raise MlipdivError(
                f"{where}: positions shape {self.positions.shape} does not match "
                f"{n_atoms} atoms"
            )
        if not np.isfinite(self.positions).all():
            raise MlipdivError(f"{where}: non-finite positions")
        if self.energy is None and self.forces is not None:
            raise MlipdivError(f"{where}: forces without energies")
        mask = slice(None)
        if self.label_mask is not None:
            self.label_mask = np.asarray(self.label_mask, dtype=bool).reshape(-1)
            if self.label_mask.shape != (n_conf,) or self.energy is None:
                raise MlipdivError(f"{where}: label mask of {len(self.label_mask)} for "
                                   f"{n_conf} conformers" + (" without energies"
                                                             if self.energy is None else ""))
            mask = self.label_mask
        if self.energy is not None:
            self.energy = np.asarray(self.energy, dtype=np.float64).reshape(-1)
            if self.energy.shape != (n_conf,):
                raise MlipdivError(f"{where}: {len(self.energy)} energies for {n_conf} conformers")
            if not np.isfinite(self.energy[mask]).all():
                raise MlipdivError(f"{where}: non-finite energy or forces")
        if self.forces is not None:
            self.forces = np.asarray(self.forces, dtype=np.float64)
            if self.forces.shape != self.positions.shape:
                raise MlipdivError(
                    f"{where}: forces shape {self.forces.shape} does not match positions "
                    f"{self.positions.shape}"
                )
            if not np.isfinite(self.forces[mask]).all():
                raise MlipdivError(f"{where}: non-finite energy or forces")
        for name in (*PROVENANCE_STR, "temperature"):
            if len(getattr(self, name)) != n_conf:
                raise MlipdivError(f"{where}: provenance '{name}' length != {n_conf} conformers")

    def subset(self, indices: Iterable[int]) -> MoleculeRecord:
        """The same molecule restricted to the given conformer indices (in that order)."""
        idx = np.asarray(list(indices), dtype=np.int64)
        return MoleculeRecord(
            self.inchikey,
            self.smiles,
            self.formula,
            self.atomic_numbers,
            self.positions[idx],
            None if self.energy is None else self.energy[idx],
            None if self.forces is None else self.forces[idx],
            self.sampler[idx],
            self.temperature[idx],
            self.source[idx],
            self.flags[idx],
            None if self.label_mask is None else self.label_mask[idx],
        )

    def to_atoms(self) -> list:
        """One `ase.Atoms` per conformer, with energy/forces attached as a calculator result."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        frames = []
        for i in range(self.n_conformers):
            atoms = Atoms(numbers=self.atomic_numbers, positions=self.positions[i])
            atoms.info.update(inchikey=self.inchikey, smiles=self.smiles, conformer=i)
            # extxyz cannot read back empty values, so only non-empty provenance is kept.
            for name in PROVENANCE_STR:
                if value := str(getattr(self, name)[i]):
                    atoms.info[name] = value
            if np.isfinite(self.temperature[i]):
                atoms.info["temperature"] = float(self.temperature[i])
            if self.is_labelled(i):
                atoms.calc = SinglePointCalculator(  # it copies the arrays it is given
                    atoms, energy=float(self.energy[i]),
                    **({"forces": self.forces[i]} if self.has_forces else {}))
            frames.append(atoms)
        return frames


def concatenate(records: list[MoleculeRecord]) -> MoleculeRecord:
    """Join conformer blocks of one molecule (same atom order) into one record."""
    first = records[0]
    labelled = all(r.labelled for r in records)
    with_forces = all(r.has_forces for r in records)
    return MoleculeRecord(
        first.inchikey,
        first.smiles,
        first.formula,
        first.atomic_numbers,
        np.concatenate([r.positions for r in records]),
        np.concatenate([r.energy for r in records]) if labelled else None,
        np.concatenate([r.forces for r in records]) if labelled and with_forces else None,
        *(np.concatenate([getattr(r, k) for r in records]) for k in
          ("sampler", "temperature", "source", "flags")),
        label_mask=np.concatenate([np.ones(r.n_conformers, bool) if r.label_mask is None
                                   else r.label_mask for r in records])
        if labelled and any(r.label_mask is not None for r in records) else None,
    )
