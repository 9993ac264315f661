"""Training a run: one model (or an ensemble) of a `TrainingSpec` on given conformers.

A run directory holds `run.json` (status, spec, hyperparameters, schedule, E0s, meta),
`train.log`, and per member `member-K/checkpoint.pt` (written every round) and
`member-K/model.pt` (the best validation weights, written when the member finishes).
Rerunning the same training resumes where it stopped; `run.json` says "complete" only when
every member is saved. (A design cell's training is the study's: `study.cells.train_cell`.)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from ase.data import chemical_symbols

from mlipdiv.data.store import MoleculeRecord
from mlipdiv.errors import FieldError, MlipdivError
from mlipdiv.locking import locks_output
from mlipdiv.models.base import Conformer, conformers
from mlipdiv.models.e0 import fit_e0
from mlipdiv.models.pretrained import Start, freeze_parameters, load_start
from mlipdiv.models.record import (
    COMPLETE,
    RUN_FILE,
    TRAINING,
    DataSource,
    MemberRecord,
    RunRecord,
)
from mlipdiv.models.registry import potential_class
from mlipdiv.models.sizes import RunSize
from mlipdiv.models.spec import TrainingSpec, resolve_device
from mlipdiv.models.streaming import MoleculeSummary, StoreTrainingSet
from mlipdiv.models.training import EpochStats, FitState, Schedule, fit

LOG_FILE = "train.log"


def training_statistics(records: Sequence[MoleculeRecord], cutoff: float) -> dict:
    """RMS force component (the models' output scale, as MACE's rms_forces_scaling) and the
    mean number of neighbours within `cutoff` (MACE's avg_num_neighbors)."""
    with_forces = [r.forces.reshape(-1) for r in records if r.has_forces]
    # energy-only training sets (`mask_missing_forces`) have no force scale: 1 eV/A
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


def _check_training_data(train: Sequence[MoleculeRecord | MoleculeSummary],
                         valid: Sequence[MoleculeRecord],
                         mask_missing_forces: bool = False) -> None:
    n_train = sum(r.n_conformers for r in train)
    if n_train < 2:
        raise MlipdivError(f"training set has {n_train} conformer(s); at least 2 are needed")
    if not valid or sum(r.n_conformers for r in valid) == 0:
        raise MlipdivError("validation set is empty; give validation conformers (a file, or a "
                           "cell with validation pairs)")
    unlabelled = [r for r in (*train, *valid) if not r.labelled]
    if unlabelled:
        n, m = sum(r.n_conformers for r in unlabelled), len({r.inchikey for r in unlabelled})
        raise MlipdivError(f"molecule {unlabelled[0].inchikey}: no energy/force labels to train "
                           f"on ({n} conformers of {m} molecules are positions only); label "
                           "them first with `mlipdiv label`")
    energy_only = [r for r in (*train, *valid) if not r.has_forces]
    if energy_only and not mask_missing_forces:
        n, m = sum(r.n_conformers for r in energy_only), len({r.inchikey for r in energy_only})
        raise FieldError("mask_missing_forces", None, f"molecule {energy_only[0].inchikey}: "
                         f"energies without forces ({n} conformers of {m} molecules); set it "
                         "to train on them with their force term masked")


def _check_validation_elements(train: Sequence[MoleculeRecord | MoleculeSummary],
                               valid: Sequence[MoleculeRecord]) -> None:
    """MlipdivError naming the first validation molecule with an element the training set
    lacks: the model has no E0 and no embedding for it, so its error would be meaningless."""
    known = {int(z) for r in train for z in r.atomic_numbers}
    for record in valid:
        unknown = sorted({int(z) for z in record.atomic_numbers} - known)
        if unknown:
            raise MlipdivError(
                f"validation molecule {record.inchikey}: element(s) "
                f"{', '.join(chemical_symbols[z] for z in unknown)} absent from the training "
                f"set ({', '.join(chemical_symbols[z] for z in sorted(known))}); move it to "
                "training or leave it out")


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


def _open_run(out: Path, recorded: dict) -> RunRecord | None:
    """Existing run record of `out` (None if new); FieldError("out") when it records another
    spec than `recorded`."""
    if not (out / RUN_FILE).exists():
        return None
    existing = RunRecord.read(out, remedy=f"delete {out} to start over")
    if existing.spec != recorded:
        other = existing.spec
        raise FieldError("out", out, f"holds a different run (model {other.get('model')}, "
                         f"size {other.get('size')}, schedule {other.get('schedule')}); "
                         "choose another or delete it")
    return existing


@locks_output("out")
def train(
    train: list[MoleculeRecord] | StoreTrainingSet,
    valid: list[MoleculeRecord],
    spec: TrainingSpec,
    out: str | os.PathLike,
    *,
    source: dict | None = None,
    progress: bool = True,
    on_epoch: Callable[[int, EpochStats], None] | None = None,
) -> Path:
    """Train the `spec.ensemble` members (seeds seed, seed+1, ...) of `spec`, resuming from
    checkpoints in `out`; returns the run directory. `source` (where the data came from:
    design and cell, or files) is stored in the run record.
    Compute: `spec.steps` optimiser steps validated every `spec.steps_per_round`, or else
    `spec.epochs` (default: the size's) epochs of this training set, one round each.
    `on_epoch(member, stats)` is called after every round's checkpoint.
    Conformers without forces are refused unless `spec.mask_missing_forces`, which trains them
    on their energy alone (their force term masked); conformers without labels are refused.
    With `spec.init_from` every member starts from the pretrained model, its E0s reconciled
    by `spec.e0` (`models.pretrained`).
    `train` is records (held in memory, every graph prepared once) or a `StoreTrainingSet`
    (read from its store in batches, graphs prepared by loader workers; its statistics,
    E0s and fingerprint from one pass over the store: `models.streaming`); both give the
    same run. The validation set is held in memory."""
    started = time.perf_counter()
    chosen = spec.run_size()
    device = resolve_device(spec.device)  # before the run directory is made
    streamed = isinstance(train, StoreTrainingSet)
    molecules = train.summaries if isinstance(train, StoreTrainingSet) else train
    _check_training_data(molecules, valid, spec.mask_missing_forces)
    if spec.init_from is None:  # a pretrained start checks against its own elements
        _check_validation_elements(molecules, valid)
    n_train = sum(r.n_conformers for r in molecules)
    schedule, policy = spec.schedule(chosen, n_train)
    out = Path(out)
    start = None
    if spec.init_from is not None:
        if streamed:
            raise FieldError("init_from", spec.init_from, "not with a training set streamed "
                             "from its store (a pretrained start reads it in memory)")
        start = load_start(spec.init_from, spec.model, spec.dtype, spec.freeze)
        start.check_elements([*train, *valid])
        chosen = replace(chosen, model=start.config["model"])  # the start's architecture
    cutoff = potential_class(spec.model).cutoff(chosen.model)
    scan = train.scan(cutoff) if isinstance(train, StoreTrainingSet) else None
    recorded = _recorded_spec(spec, chosen, schedule, molecules, valid,
                              scan.fingerprint if scan is not None else None)
    if start is not None:
        recorded["init_from"] = start.record(spec.e0, spec.finetune_lr, spec.freeze)
    existing = _open_run(out, recorded)
    if existing is not None and existing.complete:
        return out
    out.mkdir(parents=True, exist_ok=True)
    RunRecord(status=TRAINING, spec=recorded).write(out)
    log = RunLog(out / LOG_FILE)
    log(f"run {out}: model={spec.model} size={spec.size} ensemble={spec.ensemble} "
        f"seed={spec.seed} dtype={spec.dtype} device={device}")
    log("hyperparameters " + json.dumps(chosen.as_dict()))
    log(f"schedule ({policy}): {schedule.max_steps} steps, validated every "
        f"{schedule.steps_per_round} ({schedule.max_rounds} rounds at most)")
    if start is not None:
        log(f"pretrained start {spec.init_from} (sha256 {start.checksum[:12]}), E0s: {spec.e0}"
            f", frozen: {', '.join(spec.freeze or ()) or 'none'}")
    if isinstance(train, StoreTrainingSet) and scan is not None:
        log(f"training set streamed from {train.path}: {n_train} conformers, "
            f"{train.workers} loader worker(s), {train.prefetch} batches ahead each")
        e0 = train.fit_e0(scan)
    else:
        e0 = fit_e0(train) if start is None else start.e0(spec.e0, train, spec.dtype, device)
    log(f"E0 fit: {e0.note}: " + json.dumps(e0.as_dict()["energies_ev"]))
    if e0.regularised:
        _warn(f"warning: {e0.note}")
    elements = sorted(e0.energies)
    config = {"elements": elements, "e0": [e0.energies[z] for z in elements],
              "model": chosen.model, "dtype": spec.dtype,
              "stats": start.config["stats"] if start is not None else scan.stats
              if scan is not None else training_statistics(train, cutoff)}
    members = _train_members(train, valid, config, chosen, schedule, out, recorded, device,
                             progress, log, on_epoch, start, spec.freeze)
    RunRecord(
        status=COMPLETE, spec=recorded, model=spec.model, size=spec.size,
        hyperparameters=chosen.as_dict(),
        schedule={**schedule.as_dict(), "policy": policy},
        seed=spec.seed, member_seeds=members["seeds"],
        ensemble=spec.ensemble, dtype=spec.dtype, device=device,
        device_name=_device_name(device), elements=elements,
        e0=e0.as_dict(), n_train=n_train, n_train_molecules=len(molecules),
        train_molecules=sorted({r.inchikey for r in molecules}),
        n_valid=sum(r.n_conformers for r in valid), members=members["summaries"],
        wall_time_s=members["seconds"] + (time.perf_counter() - started
                                          - members["session_seconds"]),
        versions=_versions(spec.model), source=DataSource(**_source(source, start)),
    ).write(out)
    log(f"run complete: {json.dumps([m.model_dump(mode='json') for m in members['summaries']])}")
    return out


def _source(source: dict | None, start: Start | None) -> dict:
    """The run record's source: the caller's, and the pretrained start's path when there is
    one (its checksum is in the spec)."""
    extra = {} if start is None else {"init_from": str(start.path.resolve())}
    return {**(source or {}), **extra}


def _recorded_spec(spec: TrainingSpec, chosen: RunSize, schedule: Schedule,
                   train: Sequence[MoleculeRecord | MoleculeSummary],
                   valid: Sequence[MoleculeRecord], train_fingerprint: str | None = None
                   ) -> dict:
    """The spec as `run.json` records it (a rerun into the same directory must come to the
    same, or it is refused; its checkpoints are keyed on it): model, size, ensemble, seed,
    dtype, the hyperparameters and schedule they came to, a data checksum, and the number of
    force-masked conformers when there are any. The device is not part of it, nor whether
    the training set was streamed (`train_fingerprint`: a streamed set's, from its scan)."""
    recorded = {"model": spec.model, "size": spec.size, "ensemble": spec.ensemble,
                "seed": spec.seed, "dtype": spec.dtype, "hyperparameters": chosen.as_dict(),
                "schedule": schedule.as_dict(),
                "data": (train_fingerprint or data_fingerprint(train))  # type: ignore[arg-type]
                + data_fingerprint(valid)}
    if spec.mask_missing_forces and not all(r.has_forces for r in (*train, *valid)):
        recorded["masked_force_conformers"] = sum(r.n_conformers for r in (*train, *valid)
                                                  if not r.has_forces)
    return recorded


def _train_members(train, valid, config, chosen: RunSize, schedule: Schedule, out: Path,
                   spec: dict, device: str, progress: bool, log: RunLog, on_epoch,
                   start: Start | None = None, freeze: Sequence[str] | None = None) -> dict:
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
            if start is None:
                potential = cls(config, device)
            else:  # the start's weights with the run's E0s, some of them fixed
                e0 = dict(zip(config["elements"], config["e0"], strict=True))
                potential = start.potential(spec["dtype"], device, e0, member)
                freeze_parameters(potential.module, freeze)
            if prepared is None:  # graphs / neighbour lists once per run, shared by members
                # (a streamed training set prepares each batch's when it is drawn)
                prepared = (train if isinstance(train, StoreTrainingSet)
                            else potential.prepare_all(training_conformers(train)),
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
