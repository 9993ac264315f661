"""Runs: train one model (or an ensemble) on conformers or a design cell, and load it back.

A run directory holds `run.json` (status, spec, hyperparameters, schedule, E0s, meta),
`train.log`, and per member `member-K/checkpoint.pt` (written every round) and
`member-K/model.pt` (the best validation weights, written when the member finishes).
Rerunning the same command resumes where it stopped; `run.json` says "complete" only when
every member is saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from mlipdiv.data.importer import import_dataset
from mlipdiv.data.store import ConformerStore, MoleculeRecord
from mlipdiv.design import load_design, load_splits
from mlipdiv.errors import MlipdivError, check_seed
from mlipdiv.locking import locks_output
from mlipdiv.models.base import (
    DTYPES,
    Committee,
    Conformer,
    EnsembleCalculator,
    Potential,
    conformers,
)
from mlipdiv.models.e0 import fit_e0
from mlipdiv.models.record import (
    COMPLETE,
    RUN_FILE,
    TRAINING,
    DataSource,
    MemberRecord,
    RunRecord,
)
from mlipdiv.models.registry import potential_class, run_size
from mlipdiv.models.sizes import RunSize
from mlipdiv.models.training import EpochStats, FitState, Schedule, fit

log = logging.getLogger(__name__)

LOG_FILE = "train.log"


def resolve_device(device: str | None) -> str:
    """CUDA when present, CPU otherwise, unless a device is named ("cpu", "cuda",
    "cuda:N"); MlipdivError for another name or CUDA on a machine without it."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu"
                                                                         and index):
        raise MlipdivError(f"--device {device}: expected cpu, cuda or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise MlipdivError(f"--device {device}: CUDA is not available on this machine")
    if index and int(index) >= torch.cuda.device_count():
        raise MlipdivError(f"--device {device}: this machine has "
                           f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def training_statistics(records: Sequence[MoleculeRecord], cutoff: float) -> dict:
    """RMS force component (the models' output scale, as MACE's rms_forces_scaling) and the
    mean number of neighbours within `cutoff` (MACE's avg_num_neighbors)."""
    with_forces = [r.forces.reshape(-1) for r in records if r.has_forces]
    # energy-only training sets (--mask-missing-forces) have no force scale: 1 eV/A
    forces = np.concatenate(with_forces) if with_forces else np.ones(1)
    neighbours = atoms = 0
    for record in records:
        diff = record.positions[:, :, None, :] - record.positions[:, None, :, :]
        distance = np.linalg.norm(diff, axis=-1)
        neighbours += int(((distance < cutoff) & (distance > 0)).sum())
        atoms += record.n_conformers * record.n_atoms
    return {"force_rms": float(np.sqrt(np.mean(forces ** 2))),
            "avg_num_neighbors": neighbours / atoms}


def data_fingerprint(records: Sequence[MoleculeRecord]) -> str:
    """Content hash of conformers (identity, positions, labels) to recognise a run's data."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(record.inchikey.encode())
        for array in (record.atomic_numbers, record.positions, record.energy, record.forces):
            if array is not None:
                digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


class RunLog:
    """Appends timestamped lines to the run's log file."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, message: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        with self.path.open("a") as handle:
            handle.write(f"{stamp} {message}\n")


def _check_training_data(train: Sequence[MoleculeRecord], valid: Sequence[MoleculeRecord],
                         mask_missing_forces: bool = False) -> None:
    n_train = sum(r.n_conformers for r in train)
    if n_train < 2:
        raise MlipdivError(f"training set has {n_train} conformer(s); at least 2 are needed")
    if not valid or sum(r.n_conformers for r in valid) == 0:
        raise MlipdivError("validation set is empty; give --valid or a cell with valid pairs")
    unlabelled = [r for r in (*train, *valid) if not r.labelled]
    if unlabelled:
        n, m = sum(r.n_conformers for r in unlabelled), len({r.inchikey for r in unlabelled})
        raise MlipdivError(f"molecule {unlabelled[0].inchikey}: no energy/force labels to train "
                           f"on ({n} conformers of {m} molecules are positions only); label "
                           "them first with `mlipdiv label`")
    energy_only = [r for r in (*train, *valid) if not r.has_forces]
    if energy_only and not mask_missing_forces:
        n, m = sum(r.n_conformers for r in energy_only), len({r.inchikey for r in energy_only})
        raise MlipdivError(f"molecule {energy_only[0].inchikey}: energies without forces ({n} "
                           f"conformers of {m} molecules); pass "
                           "--mask-missing-forces to train on them with their force term masked")


def training_conformers(records: Sequence[MoleculeRecord]) -> list[Conformer]:
    """Conformers to train on: energy-only conformers carry NaN reference forces, which the
    loss masks (`training.weighted_loss`)."""
    out = []
    for record in records:
        if record.has_forces:
            out += conformers([record])
            continue
        nan = np.full((record.n_atoms, 3), np.nan)
        out += [Conformer(record.atomic_numbers, record.positions[i], float(record.energy[i]),
                          nan) for i in range(record.n_conformers)]
    return out


def _open_run(out: Path, spec: dict) -> RunRecord | None:
    """Existing run record of `out` (None if new); MlipdivError when it is another run."""
    if not (out / RUN_FILE).exists():
        return None
    existing = RunRecord.read(out, remedy=f"delete {out} to start over")
    if existing.spec != spec:
        other = existing.spec
        raise MlipdivError(
            f"{out}: holds a different run (model {other.get('model')}, size "
            f"{other.get('size')}, schedule {other.get('schedule')}); choose another --out "
            f"or delete it"
        )
    return existing


@locks_output("out")
def train(
    train: list[MoleculeRecord],
    valid: list[MoleculeRecord],
    *,
    model: str,
    size: str,
    out: str | os.PathLike,
    ensemble: int = 1,
    seed: int = 0,
    dtype: str = "float32",
    device: str | None = None,
    source: dict | None = None,
    progress: bool = True,
    max_epochs: int | None = None,
    steps: int | None = None,
    steps_per_round: int | None = None,
    on_epoch: Callable[[int, EpochStats], None] | None = None,
    mask_missing_forces: bool = False,
) -> Path:
    """Train `ensemble` members (seeds seed, seed+1, ...) of `model` at `size`, resuming
    from checkpoints in `out`; returns the run directory. `source` (where the data came from:
    design and cell, or files) is stored in the run record.
    Compute: `steps` optimiser steps validated every `steps_per_round` (both or neither),
    or else `max_epochs` (default: the size's) epochs of this training set, one round each.
    `on_epoch(member, stats)` is called after every round's checkpoint.
    Conformers without forces are refused unless `mask_missing_forces`, which trains them on
    their energy alone (their force term masked); conformers without labels are refused."""
    started = time.perf_counter()
    chosen = run_size(model, size)
    if max_epochs is not None:
        if max_epochs < 1:
            raise MlipdivError(f"--epochs {max_epochs}: must be at least 1")
        chosen = replace(chosen, training=replace(chosen.training, max_epochs=max_epochs))
    if dtype not in DTYPES:
        raise MlipdivError(f"dtype {dtype!r}: choose from {', '.join(DTYPES)}")
    if ensemble < 1:
        raise MlipdivError(f"--ensemble {ensemble}: must be at least 1")
    check_seed(seed)
    check_seed(seed + ensemble - 1, "seed")  # the last member's
    device = resolve_device(device)  # before the run directory is made
    _check_training_data(train, valid, mask_missing_forces)
    n_train = sum(r.n_conformers for r in train)
    schedule, policy = _schedule(chosen, n_train, max_epochs, steps, steps_per_round)
    out = Path(out)
    spec = {"model": model, "size": size, "ensemble": ensemble, "seed": seed, "dtype": dtype,
            "hyperparameters": chosen.as_dict(), "schedule": schedule.as_dict(),
            "data": data_fingerprint(train) + data_fingerprint(valid)}
    if mask_missing_forces and not all(r.has_forces for r in (*train, *valid)):
        spec["masked_force_conformers"] = sum(r.n_conformers for r in (*train, *valid)
                                              if not r.has_forces)
    existing = _open_run(out, spec)
    if existing is not None and existing.complete:
        return out
    out.mkdir(parents=True, exist_ok=True)
    RunRecord(status=TRAINING, spec=spec).write(out)
    log = RunLog(out / LOG_FILE)
    log(f"run {out}: model={model} size={size} ensemble={ensemble} seed={seed} dtype={dtype} "
        f"device={device}")
    log("hyperparameters " + json.dumps(chosen.as_dict()))
    log(f"schedule ({policy}): {schedule.max_steps} steps, validated every "
        f"{schedule.steps_per_round} ({schedule.max_rounds} rounds at most)")
    e0 = fit_e0(train)
    log(f"E0 fit: {e0.note}: " + json.dumps(e0.as_dict()["energies_ev"]))
    if e0.regularised:
        _warn(f"warning: {e0.note}")
    elements = sorted(e0.energies)
    config = {"elements": elements, "e0": [e0.energies[z] for z in elements],
              "model": chosen.model, "dtype": dtype,
              "stats": training_statistics(train, potential_class(model).cutoff(chosen.model))}
    members = _train_members(train, valid, config, chosen, schedule, out, spec, device,
                             progress, log, on_epoch)
    RunRecord(
        status=COMPLETE, spec=spec, model=model, size=size,
        hyperparameters=chosen.as_dict(),
        schedule={**schedule.as_dict(), "policy": policy},
        seed=seed, member_seeds=members["seeds"],
        ensemble=ensemble, dtype=dtype, device=device,
        device_name=_device_name(device), elements=elements,
        e0=e0.as_dict(), n_train=n_train, n_train_molecules=len(train),
        train_molecules=sorted({r.inchikey for r in train}),
        n_valid=sum(r.n_conformers for r in valid), members=members["summaries"],
        wall_time_s=members["seconds"] + (time.perf_counter() - started
                                          - members["session_seconds"]),
        versions=_versions(model), source=DataSource(**(source or {})),
    ).write(out)
    log(f"run complete: {json.dumps([m.model_dump(mode='json') for m in members['summaries']])}")
    return out


def _schedule(chosen: RunSize, n_train: int, max_epochs: int | None, steps: int | None,
              steps_per_round: int | None) -> tuple[Schedule, str]:
    """The run's Schedule and its policy ("steps" when given, else "epochs")."""
    if (steps is None) != (steps_per_round is None):
        raise MlipdivError("--steps and --steps-per-round: give both or neither")
    if steps is None:
        settings = chosen.training
        return Schedule.from_epochs(settings.max_epochs, n_train, settings.batch_size), "epochs"
    if max_epochs is not None:
        raise MlipdivError("--epochs with --steps: give one of them")
    if steps < 1 or steps_per_round < 1:
        raise MlipdivError(f"--steps {steps} --steps-per-round {steps_per_round}: "
                           f"both must be at least 1")
    return Schedule(steps, steps_per_round), "steps"


def _train_members(train, valid, config, chosen: RunSize, schedule: Schedule, out: Path,
                   spec: dict, device: str, progress: bool, log: RunLog, on_epoch) -> dict:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    cls = potential_class(chosen.backend)
    settings = chosen.training
    prepared: tuple[list, list] | None = None
    seeds, summaries, seconds, session_seconds = [], [], 0.0, 0.0
    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        for member in range(spec["ensemble"]):
            member_seed = spec["seed"] + member
            seeds.append(member_seed)
            member_dir = out / f"member-{member}"
            member_dir.mkdir(exist_ok=True)
            torch.manual_seed(member_seed)
            potential = cls(config, device)
            if prepared is None:  # graphs / neighbour lists once per run, shared by members
                prepared = (potential.prepare_all(training_conformers(train)),
                            potential.prepare_all(training_conformers(valid)))
            task = bar.add_task(f"member {member}", total=schedule.max_rounds)

            def report(stats: EpochStats, member=member, task=task) -> None:
                bar.update(task, completed=stats.epoch, description=(
                    f"m{member} loss {stats.train_loss:.3g} val E "
                    f"{stats.valid_energy_mae_mev_per_atom:.3g} meV/at F "
                    f"{stats.valid_forces_mae_mev_per_angstrom:.3g} meV/Å"))
                log(f"member {member} round {stats.epoch} step {stats.step} "
                    f"loss {stats.train_loss:.4g} "
                    f"val E MAE {stats.valid_energy_mae_mev_per_atom:.3g} meV/atom "
                    f"F MAE {stats.valid_forces_mae_mev_per_angstrom:.4g} meV/A "
                    f"lr {stats.learning_rate:.3g} ({stats.seconds:.2f} s)")
                if on_epoch is not None:
                    on_epoch(member, stats)

            tic = time.perf_counter()
            state = fit(potential, prepared[0], prepared[1], settings, schedule,
                        member_dir / "checkpoint.pt", member_seed,
                        hashlib.sha256(json.dumps([spec, member_seed]).encode()).hexdigest(),
                        report)
            session_seconds += time.perf_counter() - tic
            potential.save(member_dir / "model.pt")
            bar.update(task, completed=schedule.max_rounds)
            seconds += state.seconds
            summaries.append(_member_summary(member, member_seed, state))
    return {"seeds": seeds, "summaries": summaries, "seconds": seconds,
            "session_seconds": session_seconds}


def _member_summary(member: int, seed: int, state: FitState) -> MemberRecord:
    """The run record's entry of one member; `epochs`/`best_epoch` count rounds."""
    return MemberRecord(member=member, seed=seed, steps=state.steps_done,
                        best_step=state.best_step, rounds=state.epochs_done,
                        epochs=state.epochs_done, best_epoch=state.best_epoch,
                        stopped_by=state.stopped_by, converged=state.converged,
                        best_valid_loss=state.best_loss, training_seconds=state.seconds,
                        history=state.history)


def _warn(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[yellow]{message}[/yellow]")


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({torch.get_num_threads()} threads)"


def _versions(model: str) -> dict:
    from importlib.metadata import version

    library = potential_class(model).library
    return {"torch": torch.__version__, library: version(library)}


def train_cell(design_path: str | os.PathLike, cell_id: str, *, model: str, size: str,
               out: str | os.PathLike, ensemble: int = 1, seed: int = 0,
               dtype: str = "float32", device: str | None = None,
               progress: bool = True, max_epochs: int | None = None,
               steps: int | None = None, steps_per_round: int | None = None,
               mask_missing_forces: bool = False) -> Path:
    """Train on a design cell's training/validation pairs (compute as in `train`); the
    cell's figures go into the record's source."""

    design = load_design(design_path)
    cell = design.cell(cell_id)
    splits = load_splits(design.splits_path)
    with ConformerStore(splits.store_path) as store:
        train_records = list(store.select(cell.train))
        valid_records = list(store.select(cell.valid))
    # absolute paths: the run is read later from other working directories (domain fit)
    source = {"cell": cell.id, "design": str(Path(design_path).resolve()),
              "splits": str(Path(design.splits_path).resolve()),
              **cell.model_dump(exclude={"id", "train", "valid"})}
    return train(train_records, valid_records, model=model, size=size, out=out,
                 ensemble=ensemble, seed=seed, dtype=dtype, device=device, source=source,
                 progress=progress, max_epochs=max_epochs, steps=steps,
                 steps_per_round=steps_per_round, mask_missing_forces=mask_missing_forces)


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
        """InChIKeys the run trained on: recorded in the run, or read from its design cell;
        None when the run does not say (trained on files by an older version)."""
        if self.record.train_molecules:
            return set(self.record.train_molecules)
        source = self.record.source
        if source.design and source.cell and Path(source.design).exists():

            return {key for key, _ in load_design(source.design).cell(source.cell).train}
        return None

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


def read_records(path: str | os.PathLike, skipped: Counter | None = None
                 ) -> list[MoleculeRecord]:
    """Labelled conformers of a store (.h5), or of any file `mlipdiv import` reads (extxyz,
    ASE db, ...), imported through a temporary store, as one record per molecule.

    Conformers the import skips (a NaN/inf coordinate or label, a missing label, ...) are
    never dropped silently: they are logged with their reasons and added to `skipped`."""
    import tempfile


    path = Path(path)
    if not path.exists():
        raise MlipdivError(f"{path}: no such file")
    if path.suffix in (".h5", ".hdf5"):
        with ConformerStore(path) as store:
            return list(store.molecules())
    with tempfile.TemporaryDirectory() as tmp:
        summary = import_dataset(path, Path(tmp) / "imported.h5")
        if summary.skipped:
            log.warning("%s: %d conformers skipped (%s)", path, summary.n_skipped,
                        ", ".join(f"{reason}: {n}" for reason, n in summary.skipped.items()))
            if skipped is not None:
                skipped.update(summary.skipped)
        with ConformerStore(Path(tmp) / "imported.h5") as store:
            return list(store.molecules())


def read_frames(path: str | os.PathLike) -> list:
    """`ase.Atoms` frames of a store (.h5) or any file ASE reads, in file order."""
    from ase.io import read

    path = Path(path)
    if not path.exists():
        raise MlipdivError(f"{path}: no such file")
    if path.suffix in (".h5", ".hdf5"):
        with ConformerStore(path) as store:
            return store.to_atoms()
    try:
        return read(path, index=":")
    except Exception as exc:  # ase raises many types for a malformed file
        raise MlipdivError(f"{path}: not a readable structure file ({exc})") from None


def predict_frames(run: TrainedRun, frames: Sequence) -> list:
    """Frames with the run's ensemble-mean energy/forces attached as calculator results,
    `energy_std` (committee spread, eV) in info, any reference energy kept as
    `reference_energy`; frames with elements absent from training get `out_of_domain=True`,
    frames with a non-finite coordinate `invalid_positions=True`, and neither a prediction."""
    from ase.calculators.singlepoint import SinglePointCalculator

    out = [atoms.copy() for atoms in frames]
    inside = []
    for atoms, copy in zip(frames, out, strict=True):
        if atoms.calc is not None and "energy" in atoms.calc.results:
            copy.info["reference_energy"] = atoms.calc.results["energy"]
        copy.info["out_of_domain"] = not set(atoms.numbers.tolist()) <= run.elements
        # a NaN/inf coordinate would come out as a finite energy with zero forces
        copy.info["invalid_positions"] = not bool(np.isfinite(atoms.positions).all())
        if not (copy.info["out_of_domain"] or copy.info["invalid_positions"]):
            inside.append(copy)
    if not inside:
        return out
    items = [Conformer(atoms.numbers, atoms.positions) for atoms in inside]
    results = [m.predict_conformers(items) for m in run.members]
    energies = np.stack([e for e, _ in results])
    for k, atoms in enumerate(inside):
        committee = Committee(energies[:, k:k + 1],
                              np.stack([f[k] for _, f in results])[:, None])
        predicted = committee.calculator_results()
        atoms.info["energy_std"] = predicted["energy_std"]
        atoms.calc = SinglePointCalculator(atoms, energy=predicted["energy"],
                                           forces=predicted["forces"])
    return out


