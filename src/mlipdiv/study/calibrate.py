"""The calibration behind a study's plan: a short run on this machine of what a study spends
its time on, measured on a handful of small RDKit-embedded conformers labelled with GFN2-xTB:
the labelling, each configured model trained at the configured size for a few optimiser steps
(seconds per step at the size's batch size, the set-up around them, the evaluation per
conformer), the start of a worker process, the data profile and the applicability-domain
fit. `plan.py` turns it into the plan's times."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from mlipdiv.errors import FieldError
from mlipdiv.study.config import StudyConfig

# calibration molecules: small, flexible, C/H/N/O (every backend knows them)
CALIBRATION_SMILES = ("CCCCO", "CCCCN", "CCCC(C)C", "OCCCO")
CALIBRATION_ROUNDS = 2  # the first round warms up; the second is timed
CALIBRATION_STEPS = 3  # optimiser steps per round

class ModelThroughput(BaseModel):
    """One model's measured (or stated) cost on this machine."""

    model: str
    size: str
    batch_size: int
    threads: int
    seconds_per_step: float  # one optimiser step of one ensemble member at batch_size
    setup_seconds: float  # per training: model, E0 fit, neighbour lists, saving
    warm_up_seconds: float = 0.0  # once per worker: the first training's lazy imports
    score_seconds: float  # scoring a cell on small test splits (loading run and splits)
    evaluate_seconds_per_conformer: float
    source: str


class Calibration(BaseModel):
    """What the calibration measured on this machine (None: not measured)."""

    models: list[ModelThroughput]
    label_seconds_per_conformer: float | None = None  # the study's QM method
    generate_seconds_per_molecule: float | None = None  # sampling and labelling a molecule
    worker_start_seconds: float | None = None  # a fresh worker process importing the models
    study_start_seconds: float | None = None  # the study's process importing its steps
    profile_seconds_per_conformer: float | None = None
    profile_plot_seconds: float | None = None  # the profile's start-up and its plot, once
    domain_seconds: float | None = None  # per evaluated run: domain fit and evaluation
    domain_start_seconds: float | None = None  # once per study: the domain code's start-up
    seconds: float = 0.0  # what the calibration took
    cores: int = 1
    load_average: float | None = None  # the machine's 1-minute load when calibrated


def _labelled_molecules(n_conformers: int) -> tuple[list, float]:
    """Calibration records (RDKit ETKDG conformers labelled with GFN2-xTB, in canonical atom
    order) and the seconds per single point."""
    from mlipdiv.data import MoleculeRecord, QMMethod, perceive
    from mlipdiv.data.sampling import etkdg_conformers, prepare_molecule

    records, labelling, points = [], 0.0, 0
    for seed, smiles in enumerate(CALIBRATION_SMILES):
        mol = prepare_molecule(smiles)
        positions = etkdg_conformers(mol, n_conformers, seed + 1)
        numbers = np.array([atom.GetAtomicNum() for atom in mol.GetAtoms()])
        order = perceive(numbers, positions[0]).canonical_order
        numbers, positions = numbers[order], positions[:, order]
        started = time.perf_counter()
        energy, forces = QMMethod("gfn2-xtb").label_many(numbers, positions)
        labelling += time.perf_counter() - started
        points += len(positions)
        ident = perceive(numbers, positions[0])
        records.append(MoleculeRecord(ident.inchikey, ident.smiles, ident.formula, numbers,
                                      positions, energy, forces,
                                      sampler=np.full(len(positions), "etkdg", dtype=object)))
    return records, labelling / points


def _label_seconds(method: str, records: list, gfn2_seconds: float) -> float:
    """Seconds per single point of the study's QM method (GFN2-xTB: already measured)."""
    from mlipdiv.data import QMMethod

    if method == "gfn2-xtb":
        return gfn2_seconds
    record = records[0]
    started = time.perf_counter()
    QMMethod(method).label_many(record.atomic_numbers, record.positions[:2])
    return (time.perf_counter() - started) / 2


def _generate_seconds(config: StudyConfig) -> float:
    """Seconds the data generation takes for one molecule (a calibration molecule sampled
    and labelled as the config says)."""
    from mlipdiv.data.generate import generate_molecule
    from mlipdiv.data.sources import MoleculeEntry

    started = time.perf_counter()
    generate_molecule(MoleculeEntry("calibration", CALIBRATION_SMILES[0]),
                      config.data.generate_options(config.seed), config.seed)
    return time.perf_counter() - started


def _split(records: list, n_valid: int) -> tuple[list, list]:
    """Training and validation records: the last `n_valid` conformers of each are validation."""
    train, valid = [], []
    for record in records:
        k = record.n_conformers - n_valid
        train.append(record.subset(np.arange(k)))
        valid.append(record.subset(np.arange(k, record.n_conformers)))
    return train, valid


@lru_cache(maxsize=16)
def _calibrate_model(model: str, size: str, dtype: str,
                     threads: int) -> tuple[ModelThroughput, tuple[float, float]]:
    """Train `model` at `size` for a few steps on the calibration molecules with `threads`
    torch threads; (its throughput, (the domain fit and evaluation's seconds on the run, the
    seconds its first call costs once more: imports, index set-up)))."""
    from mlipdiv.domain.evaluate import evaluate_run
    from mlipdiv.domain.model import fit_run
    from mlipdiv.metrics.evaluate import score_run
    from mlipdiv.models.registry import run_size
    from mlipdiv.models.spec import TrainingSpec
    from mlipdiv.models.train_run import train
    from mlipdiv.models.trained import load_run
    from mlipdiv.threads import thread_limit

    batch = run_size(model, size).training.batch_size
    per_molecule = math.ceil(batch / len(CALIBRATION_SMILES)) + 1
    records, _ = _calibration_records(per_molecule)
    train_set, valid_set = _split(records, 1)
    n_train = sum(r.n_conformers for r in train_set)
    spec = TrainingSpec(model=model, size=size, seed=0, dtype=dtype, device="cpu",
                        steps=CALIBRATION_ROUNDS * CALIBRATION_STEPS,
                        steps_per_round=CALIBRATION_STEPS)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="mlipdiv-plan-") as tmp, \
            thread_limit(threads, torch=True):
        times = []
        for attempt in range(2):  # the first pays what a worker pays once (lazy imports)
            rounds.clear()
            started = time.perf_counter()
            run_dir = train(train_set, valid_set, spec, Path(tmp) / f"run-{attempt}",
                            progress=False,
                            on_epoch=lambda member, stats: rounds.append(stats.seconds))
            times.append(time.perf_counter() - started)
        started = time.perf_counter()
        load_run(run_dir, "cpu").predict(records)
        evaluate = (time.perf_counter() - started) / sum(r.n_conformers for r in records)
        stores = _calibration_splits(records, train_set, valid_set, Path(tmp))
        started = time.perf_counter()
        score_run(run_dir, Path(tmp) / "splits", "cpu")
        score = time.perf_counter() - started
        domain_times = []
        for attempt in range(2):  # the first pays the domain code's start-up
            started = time.perf_counter()
            fit_run(run_dir, *stores)
            evaluate_run(run_dir, Path(tmp) / "splits", out=Path(tmp) / f"domain{attempt}")
            domain_times.append(time.perf_counter() - started)
        domain = (domain_times[1], max(0.0, domain_times[0] - domain_times[1]))
    # a smaller calibration set than the batch: steps scaled to the full batch
    step = rounds[-1] / CALIBRATION_STEPS * batch / min(batch, n_train)
    return ModelThroughput(
        model=model, size=size, batch_size=batch, threads=threads, seconds_per_step=step,
        setup_seconds=max(0.0, times[1] - CALIBRATION_ROUNDS * CALIBRATION_STEPS * step),
        warm_up_seconds=max(0.0, times[0] - times[1]),
        score_seconds=score, evaluate_seconds_per_conformer=evaluate,
        source=f"calibrated: {len(rounds)} rounds of {CALIBRATION_STEPS} steps on "
               f"{n_train} conformers, {threads} thread(s)"), domain


def _calibration_splits(records: list, train_set: list, valid_set: list,
                        tmp: Path) -> list[Path]:
    """Test splits carved from the calibration molecules (tmp/splits) and the training and
    validation stores a domain is fitted on."""
    from mlipdiv.data import write_store
    from mlipdiv.design import make_splits
    from mlipdiv.design.options import SplitOptions

    stores = [tmp / f"{name}.h5" for name in ("all", "train", "valid")]
    for path, part in zip(stores, (records, train_set, valid_set), strict=True):
        write_store(path, part, "GFN2-xTB (tblite)")
    make_splits(stores[0], tmp / "splits", SplitOptions(cf_conformers=1, st=1, sf=0))
    return stores[1:]


@lru_cache(maxsize=4)
def _calibration_records(per_molecule: int) -> tuple[list, float]:
    return _labelled_molecules(per_molecule)


# what the study's own process imports beyond a worker's (its steps, figures, the domain)
STUDY_MODULES = ("mlipdiv.study.runner", "mlipdiv.study.domain_step", "mlipdiv.report",
                 "mlipdiv.diversity")


@lru_cache(maxsize=8)
def _start_seconds(models: tuple[str, ...]) -> tuple[float, float]:
    """(seconds a fresh worker process takes to start and import what a cell runs: the
    cells and what each model needs from its library, imported as the backend imports it;
    seconds the study's process takes for that and its steps' modules), timed in a fresh
    Python process."""
    script = "\n".join(["import importlib, time", "t = time.perf_counter()",
                         "import torch, mlipdiv.study.cells",
                         "from mlipdiv.models.registry import potential_class",
                         f"for model in {list(models)!r}:",
                         "    try: potential_class(model).import_library()",
                         "    except Exception: pass",
                         "print(time.perf_counter() - t)",
                         f"for name in {list(STUDY_MODULES)!r}:",
                         "    importlib.import_module(name)",
                         "print(time.perf_counter() - t)"])
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True,
                          text=True, timeout=600)
    total = time.perf_counter() - started
    try:
        imports = [float(line) for line in done.stdout.split()]
        return total - imports[1] + imports[0], total
    except (ValueError, IndexError):  # the imports failed: the study will say so itself
        return total, total


def _profile_seconds(records: list) -> tuple[float, float]:
    """(seconds per conformer of the data profile, seconds it costs once: its first call's
    start-up (imports, compilation) and the plot), measured on the calibration records. The
    profile is timed twice: on a handful of conformers the first call is nearly all start-up,
    which scaled per conformer would overestimate a real store's profile many times."""
    from mlipdiv.data import write_store
    from mlipdiv.diversity import plot_profile, profile_store

    with tempfile.TemporaryDirectory(prefix="mlipdiv-plan-") as tmp:
        store = Path(tmp) / "calibration.h5"
        write_store(store, records, "GFN2-xTB (tblite)")
        started = time.perf_counter()
        profile_store(store)
        first = time.perf_counter() - started
        started = time.perf_counter()
        profile = profile_store(store)
        profiling = time.perf_counter() - started
        started = time.perf_counter()
        plot_profile(profile, Path(tmp) / "profile.png")
        plotting = time.perf_counter() - started
    once = max(first - profiling, 0.0) + plotting
    return profiling / sum(r.n_conformers for r in records), once


def calibrate(config: StudyConfig, threads: int, steps_per_second: float | None,
              models: list[str] | None = None) -> Calibration:
    """Measure on this machine what the estimate needs (see the module docstring); with a
    stated `steps_per_second`, only the labelling of generated data is timed."""
    started = time.perf_counter()
    generated = config.data.source == "generate"
    models = config.models.architectures if models is None else models
    if steps_per_second is not None:
        if not steps_per_second > 0:
            raise FieldError("steps_per_second", steps_per_second, "must be positive")
        from mlipdiv.models.registry import run_size

        label = generating = None
        if generated:
            records, gfn2 = _calibration_records(2)
            label = _label_seconds(config.data.method, records, gfn2)
            generating = _generate_seconds(config)
        throughputs = [ModelThroughput(
            model=m, size=config.models.size,
            batch_size=run_size(m, config.models.size).training.batch_size, threads=threads,
            seconds_per_step=1 / steps_per_second, setup_seconds=0.0, score_seconds=0.0,
            evaluate_seconds_per_conformer=0.0, source="stated --steps-per-second")
            for m in models]
        return Calibration(models=throughputs, label_seconds_per_conformer=label,
                           generate_seconds_per_molecule=generating,
                           seconds=time.perf_counter() - started)
    if not models:  # nothing left to train
        return Calibration(models=[], seconds=0.0, cores=os.cpu_count() or 1)
    worker_start, study_start = _start_seconds(tuple(models))
    measured = [_calibrate_model(m, config.models.size, config.models.dtype, threads)
                for m in models]
    records, gfn2 = _calibration_records(2)
    profile, plot = _profile_seconds(records)
    return Calibration(
        models=[m for m, _ in measured],
        label_seconds_per_conformer=(_label_seconds(config.data.method, records, gfn2)
                                     if generated else None),
        generate_seconds_per_molecule=_generate_seconds(config) if generated else None,
        worker_start_seconds=worker_start,
        study_start_seconds=study_start, profile_seconds_per_conformer=profile,
        profile_plot_seconds=plot, domain_seconds=max(d for _, (d, _) in measured),
        domain_start_seconds=max(start for _, (_, start) in measured),
        seconds=time.perf_counter() - started, cores=os.cpu_count() or 1,
        load_average=os.getloadavg()[0])


