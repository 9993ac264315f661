"""A finished run loaded for prediction (`load_run` → `TrainedRun`): per-record committee
predictions (`Prediction`), invariant features, an ASE calculator, and predictions written
onto ASE frames (`predict_frames`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlipdiv.data.store import MoleculeRecord
from mlipdiv.errors import MlipdivError
from mlipdiv.models.base import Committee, Conformer, EnsembleCalculator, Potential, conformers
from mlipdiv.models.record import RunRecord
from mlipdiv.models.registry import potential_class
from mlipdiv.models.spec import resolve_device


@dataclass(frozen=True)
class Prediction(Committee):
    """All members' predictions for one record's conformers: energy (n_members, n_conf) in
    eV, forces (n_members, n_conf, n_atoms, 3) in eV/A. Out-of-domain records (elements
    absent from training) carry NaN and `out_of_domain=True`."""

    out_of_domain: bool = False


class TrainedRun:
    """A finished run: its record and its members, loaded for prediction."""

    def __init__(self, path: Path, record: RunRecord, members: list[Potential]):
        self.path = path
        self.record = record
        self.members = members

    @property
    def n_members(self) -> int:
        return len(self.members)

    @property
    def elements(self) -> set[int]:
        return set(self.members[0].elements)

    def training_molecules(self) -> set[str] | None:
        """InChIKeys the run trained on, as its record lists them; None when it does not (a
        run of an older version: `metrics.evaluate.training_molecules` then reads its design
        cell)."""
        return set(self.record.train_molecules) if self.record.train_molecules else None

    def out_of_domain(self, record: MoleculeRecord) -> bool:
        """True when the record has an element absent from the training set."""
        return not {int(z) for z in record.atomic_numbers} <= self.elements

    def predict(self, records: Sequence[MoleculeRecord],
                member: int | None = None) -> list[Prediction]:
        """One Prediction per record, from all members (or only `member`)."""
        chosen = self.members if member is None else [self._member(member)]
        inside = [r for r in records if not self.out_of_domain(r)]
        results = iter(_stack_per_record(inside, [m.predict_conformers(conformers(inside))
                                                   for m in chosen]))
        out = []
        for record in records:
            if self.out_of_domain(record):
                shape = (len(chosen), record.n_conformers)
                out.append(Prediction(np.full(shape, np.nan),
                                      np.full((*shape, record.n_atoms, 3), np.nan), True))
            else:
                out.append(Prediction(*next(results)))
        return out

    def atom_features(self, records: Sequence[MoleculeRecord]) -> list[np.ndarray]:
        """Member 0's invariant per-atom features, (n_conf, n_atoms, n_features) per record."""
        return [self.members[0].features_arrays(r.atomic_numbers, r.positions)
                for r in records]

    def calculator(self, **kwargs) -> EnsembleCalculator:
        """ASE calculator: ensemble-mean energy and forces, with the committee spread."""
        return EnsembleCalculator(self.members, **kwargs)

    def _member(self, member: int) -> Potential:
        if not 0 <= member < self.n_members:
            raise MlipdivError(f"{self.path}: member {member} asked, run has {self.n_members}")
        return self.members[member]


def _stack_per_record(records: Sequence[MoleculeRecord],
                      per_member: list[tuple[np.ndarray, list]]) -> list[tuple]:
    """Members' flat per-conformer predictions regrouped as (energy (K, n_conf), forces
    (K, n_conf, n_atoms, 3)) per record."""
    out, start = [], 0
    for record in records:
        stop = start + record.n_conformers
        out.append((np.stack([e[start:stop] for e, _ in per_member]),
                    np.stack([np.stack(f[start:stop]) for _, f in per_member])))
        start = stop
    return out


def load_run(path: str | os.PathLike, device: str | None = None) -> TrainedRun:
    """Load a complete run directory; MlipdivError if it is missing, unfinished or
    incompatible."""
    path = Path(path)
    record = RunRecord.read_complete(path)
    cls = potential_class(record.model)
    device = resolve_device(device)
    members = [cls.load(path / f"member-{k}" / "model.pt", device)
               for k in range(record.ensemble)]
    return TrainedRun(path, record, members)


def predict_frames(run: TrainedRun, frames: Sequence, copy: bool = True) -> list:
    """Frames with the run's ensemble-mean energy/forces attached as calculator results,
    `energy_std` (committee spread, eV) in info, any reference energy kept as
    `reference_energy`; frames with elements absent from training get `out_of_domain=True`,
    frames with a non-finite coordinate `invalid_positions=True`, and neither a prediction.
    The given frames are left as they are, or, with `copy=False` (a caller that owns them),
    written on in place (one copy of every frame fewer)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    out = [atoms.copy() for atoms in frames] if copy else list(frames)
    inside = []
    for atoms, frame in zip(frames, out, strict=True):
        if atoms.calc is not None and "energy" in atoms.calc.results:
            frame.info["reference_energy"] = atoms.calc.results["energy"]
        frame.info["out_of_domain"] = not set(atoms.numbers.tolist()) <= run.elements
        # a NaN/inf coordinate would come out as a finite energy with zero forces
        frame.info["invalid_positions"] = not bool(np.isfinite(atoms.positions).all())
        if not (frame.info["out_of_domain"] or frame.info["invalid_positions"]):
            inside.append(frame)
    if not inside:
        return out
    items = [Conformer(atoms.numbers, atoms.positions) for atoms in inside]
    results = [m.predict_conformers(items) for m in run.members]
    # reduced once for all frames (not a committee per frame): the frames' forces side by
    # side as the atoms of one conformer, split back per frame
    committee = Committee(np.stack([e for e, _ in results]),
                          np.stack([np.concatenate(f) for _, f in results])[:, None])
    energies, spreads = committee.mean_energy, committee.energy_std
    forces = np.split(committee.mean_forces[0], np.cumsum([len(c.numbers) for c in items])[:-1])
    for k, atoms in enumerate(inside):
        atoms.info["energy_std"] = float(spreads[k])
        atoms.calc = SinglePointCalculator(atoms, energy=float(energies[k]), forces=forces[k])
    return out
