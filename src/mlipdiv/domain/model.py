"""A run's applicability domain: the training reference, the per-score thresholds chosen on
validation data, and the recalibration of committee standard deviations.

Saved in `RUN/domain/`: `domain.json` (thresholds, calibration, validation error levels) beside
the reference's FAISS indexes and `reference.npz`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mlipdiv.atomic import atomic_directory, write_extxyz_atomic, write_text_atomic
from mlipdiv.data.store import ConformerStore, MoleculeRecord
from mlipdiv.design import load_design, load_splits
from mlipdiv.diversity.entropy import environment_descriptors, quests_descriptors
from mlipdiv.domain.reference import (
    COMMITTEE_SCORES,
    MODEL_FREE_SCORES,
    MODEL_SCORES,
    DomainReference,
    RecordScores,
    summary,
)
from mlipdiv.domain.scores import DOMAIN_REMEDY, committee_sigma
from mlipdiv.domain.stats import miscalibration_area, sigma_scale, threshold_at_coverage
from mlipdiv.errors import FieldError, MlipdivError
from mlipdiv.files import read_json, reading
from mlipdiv.models import load_run, read_records
from mlipdiv.models.base import Committee

DOMAIN_DIR = "domain"
DOMAIN_FILE = "domain.json"
HIGH_ERROR_PERCENTILE = 90.0
# The in/out flag's default score: it needs no ensemble, and it ranked OOD above test data in
# every check we ran (AUROC >= 0.96; committee spreads missed larger molecules).
DEFAULT_PRIMARY = "latent_distance_max"


@dataclass
class Calibration:
    """Scalar recalibration of one committee sigma (energy per atom, or force components)."""

    scale: float
    miscalibration_area_before: float
    miscalibration_area_after: float
    n: int


@dataclass
class Domain:
    """The reference, thresholds (in domain: score <= threshold), calibration and the score
    that decides the in/out flag (`primary`, always together with `unseen_elements == 0`)."""

    reference: DomainReference
    thresholds: dict[str, float]
    primary: str
    coverage: float
    calibration: dict[str, Calibration]
    validation_error_p90: dict[str, float]  # meV/atom (energy), meV/A (forces)
    n_validation: int

    @property
    def score_names(self) -> list[str]:
        return list(self.thresholds)

    def in_domain(self, scores: RecordScores, score: str | None = None) -> np.ndarray:
        """(n_conf,) True where the chosen (default: primary) score is within its threshold
        and every element was seen in training."""
        name = score or self.primary
        if name not in self.thresholds:
            raise FieldError("score", repr(name), f"choose from {', '.join(self.thresholds)}")
        return (scores.scores[name] <= self.thresholds[name]) & (
            scores.scores["unseen_elements"] == 0)

    def score(self, run, records: Sequence[MoleculeRecord],
              predictions: Sequence | None = None) -> list[RecordScores]:
        """Scores of every record's conformers (predicting with the run when not given)."""
        return score_records(self.reference, run, records, predictions)

    def calibrated_sigma(self, scores: RecordScores) -> dict[str, np.ndarray]:
        """Recalibrated committee sigmas: energy (n_conf,) eV/atom and forces (n_conf,
        n_atoms, 3) eV/A; empty for a single model."""
        if not self.calibration or scores.member_energy is None:
            return {}
        sigma = committee_sigma(scores.member_energy, scores.member_forces,
                                scores.member_forces.shape[2])
        return {k: v * self.calibration[k].scale for k, v in sigma.items()}

    def save(self, directory: Path) -> None:
        """Write the reference and domain.json into `directory`."""
        self.reference.save(directory)
        payload = {
            "primary": self.primary, "coverage": self.coverage, "thresholds": self.thresholds,
            "calibration": {k: asdict(v) for k, v in self.calibration.items()},
            "validation_error_p90": self.validation_error_p90,
            "n_validation": self.n_validation, "reference": summary(self.reference),
        }
        write_text_atomic(directory / DOMAIN_FILE, json.dumps(payload, indent=2))

    @classmethod
    def load(cls, directory: Path) -> Domain:
        path = directory / DOMAIN_FILE
        if not path.exists():
            raise MlipdivError(f"{directory.parent}: no applicability domain fitted; run "
                               f"`mlipdiv domain fit {directory.parent}` first")
        payload = read_json(path, "domain file", DOMAIN_REMEDY)
        reference = DomainReference.load(directory)
        with reading(path, "domain file", DOMAIN_REMEDY):
            return cls(reference, payload["thresholds"], payload["primary"],
                       payload["coverage"],
                       {k: Calibration(**v) for k, v in payload["calibration"].items()},
                       payload["validation_error_p90"], payload["n_validation"])


def conformer_errors(record: MoleculeRecord, member_energy: np.ndarray,
                     member_forces: np.ndarray) -> dict[str, np.ndarray]:
    """Per-conformer errors of the committee mean: |energy error| per atom (meV/atom) and the
    force component RMSE (meV/A); NaN where the model could not predict."""
    if not record.labelled:
        unknown = np.full(record.n_conformers, np.nan)
        return {"energy": unknown, "forces": unknown}
    signed = signed_errors(record, member_energy, member_forces)
    energy = np.abs(signed["energy"])
    forces = np.sqrt((signed["forces"] ** 2).mean(axis=(1, 2)))
    return {"energy": 1000.0 * energy, "forces": 1000.0 * forces}


def signed_errors(record: MoleculeRecord, member_energy: np.ndarray,
                  member_forces: np.ndarray) -> dict[str, np.ndarray]:
    """Signed errors matching `committee_sigma`: energy per atom (eV/atom), force components."""
    committee = Committee(member_energy, member_forces)
    return {"energy": (committee.mean_energy - record.energy) / record.n_atoms,
            "forces": committee.mean_forces - record.forces}


def sigma_and_errors(records: Sequence[MoleculeRecord],
                     scores: Sequence[RecordScores]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Flat (sigma, signed error) pairs over all predictable conformers, per quantity."""
    pairs: dict[str, tuple[list, list]] = {"energy": ([], []), "forces": ([], [])}
    for record, scored in zip(records, scores, strict=True):
        if (not record.labelled or scored.member_energy is None
                or not np.isfinite(scored.member_energy).all()):
            continue
        sigma = committee_sigma(scored.member_energy, scored.member_forces, record.n_atoms)
        errors = signed_errors(record, scored.member_energy, scored.member_forces)
        for key, (sigmas, errs) in pairs.items():
            sigmas.append(sigma[key].ravel())
            errs.append(errors[key].ravel())
    return {k: (np.concatenate(s), np.concatenate(e)) for k, (s, e) in pairs.items() if s}


def fit_calibration(records: Sequence[MoleculeRecord],
                    scores: Sequence[RecordScores]) -> dict[str, Calibration]:
    """Scale factors making committee sigma match observed errors on these records."""
    result = {}
    for key, (sigma, errors) in sigma_and_errors(records, scores).items():
        scale = sigma_scale(sigma, errors)
        result[key] = Calibration(scale, miscalibration_area(sigma, errors),
                                  miscalibration_area(scale * sigma, errors), len(errors))
    return result


def score_records(reference: DomainReference, run, records: Sequence[MoleculeRecord],
                  predictions: Sequence | None = None) -> list[RecordScores]:
    """Score records against a reference with a trained run's predictions and features."""
    records = list(records)
    if predictions is None:
        predictions = run.predict(records)
    out = []
    for record, prediction in zip(records, predictions, strict=True):
        representable = not run.out_of_domain(record)
        features = run.atom_features([record])[0] if representable else None
        out.append(reference.score_molecule(
            record.atomic_numbers, record.smiles,
            quests_descriptors(record.atomic_numbers, record.positions), features,
            prediction.energy, prediction.forces, record.inchikey))
    return out


def fit_domain(run, train: Sequence[MoleculeRecord], valid: Sequence[MoleculeRecord],
               coverage: float = 0.95, primary: str | None = None,
               neighbours: int = 5) -> Domain:
    """Build the reference from the training conformers and choose thresholds (and the
    committee calibration) on the validation conformers."""
    train, valid = list(train), list(valid)
    if not train or not valid:
        raise MlipdivError("domain fit needs training and validation conformers")
    if neighbours < 1:
        raise MlipdivError(f"neighbours = {neighbours}: the latent kNN needs at least 1")
    if not 0.0 < coverage <= 1.0:
        raise MlipdivError(f"coverage = {coverage}: must be a fraction in (0, 1]")
    names = [*(COMMITTEE_SCORES if run.n_members > 1 else ()), *MODEL_SCORES, *MODEL_FREE_SCORES]
    primary = primary or DEFAULT_PRIMARY
    if primary not in names:
        raise FieldError("score", repr(primary), f"choose from {', '.join(names)}")
    features = run.atom_features(train)
    reference = DomainReference.build(
        numbers=np.concatenate([np.tile(r.atomic_numbers, r.n_conformers) for r in train]),
        descriptors=np.concatenate([environment_descriptors(r) for r in train]),
        smiles=[r.smiles for r in train],
        features=np.concatenate([f.reshape(-1, f.shape[-1]) for f in features]),
        neighbours=neighbours,
    )
    scores = score_records(reference, run, valid)
    thresholds = {name: threshold_at_coverage(
        np.concatenate([s.scores[name] for s in scores]), coverage) for name in names}
    thresholds["unseen_elements"] = 0.0
    errors = [conformer_errors(r, s.member_energy, s.member_forces)
              for r, s in zip(valid, scores, strict=True)]
    p90 = {k: float(np.nanpercentile(np.concatenate([e[k] for e in errors]),
                                     HIGH_ERROR_PERCENTILE)) for k in ("energy", "forces")}
    calibration = fit_calibration(valid, scores) if run.n_members > 1 else {}
    return Domain(reference, thresholds, primary, coverage, calibration, p90,
                  sum(r.n_conformers for r in valid))


def training_data(run, train_path: str | os.PathLike | None = None,
                  valid_path: str | os.PathLike | None = None,
                  ) -> tuple[list[MoleculeRecord], list[MoleculeRecord]]:
    """The run's training and validation conformers: from the given files, else from the
    design cell (or files) recorded in the run's record."""

    if train_path is not None or valid_path is not None:
        if train_path is None or valid_path is None:
            missing, given = ("train", "valid") if train_path is None else ("valid", "train")
            raise FieldError(missing, None, f"needed with {given} (give both or neither)")
        return read_records(train_path), read_records(valid_path)
    source = run.record.source
    if source.design and source.cell:

        design = load_design(source.design)
        cell = design.cell(source.cell)
        labels = run_labels(run)
        with ConformerStore(load_splits(design.splits_path).store_path) as store:
            return (list(store.select(cell.train, labels)),
                    list(store.select(cell.valid, labels)))
    if source.train and source.valid:
        return read_records(source.train), read_records(source.valid)
    raise MlipdivError(f"{run.path}: the run does not record its training data; give its "
                       "training and validation files")


def run_labels(run) -> str | None:
    """The store's label set a study cell's run trained on (None: the default labels)."""
    return getattr(run.record.source, "labels", None)


def domain_directory(run_path: str | os.PathLike) -> Path:
    return Path(run_path) / DOMAIN_DIR


def fit_run(run_path: str | os.PathLike, train: str | os.PathLike | None = None,
            valid: str | os.PathLike | None = None, coverage: float = 0.95,
            primary: str | None = None, neighbours: int = 5) -> Domain:
    """Fit and save the applicability domain of a trained run (into RUN/domain/)."""

    run = load_run(run_path)
    train_records, valid_records = training_data(run, train, valid)
    domain = fit_domain(run, train_records, valid_records, coverage, primary, neighbours)
    with atomic_directory(domain_directory(run_path)) as staging:
        domain.save(staging)
    return domain


def load_domain(run_path: str | os.PathLike) -> Domain:
    """The fitted applicability domain of a run."""
    return Domain.load(domain_directory(run_path))


def score_file(run_path: str | os.PathLike, input_path: str | os.PathLike,
               out: str | os.PathLike, score: str | None = None) -> tuple[int, int, int]:
    """Score every conformer of a store or extxyz file and write extxyz with, per frame,
    `domain_<score>` values, `in_domain`, the committee-mean `predicted_energy` and each
    member's `member_energies` (eV), and per atom `domain_<score>` arrays. Returns
    (conformers, conformers in domain, conformers of the file skipped as unreadable: NaN/inf
    coordinates or labels)."""


    domain = load_domain(run_path)
    run = load_run(run_path)
    skipped = Counter()
    records = read_records(input_path, skipped)
    frames, inside = [], 0
    for record, scored in zip(records, domain.score(run, records), strict=True):
        flags = domain.in_domain(scored, score)
        inside += int(flags.sum())
        energy = Committee(scored.member_energy, scored.member_forces).mean_energy
        for i, atoms in enumerate(record.to_atoms()):
            atoms.info.update({f"domain_{k}": float(v[i]) for k, v in scored.scores.items()})
            atoms.info.update(in_domain=bool(flags[i]), predicted_energy=float(energy[i]),
                              member_energies=scored.member_energy[:, i].copy())
            for name, values in scored.atom_scores.items():
                atoms.new_array(f"domain_{name}", values[i])
            frames.append(atoms)
    write_extxyz_atomic(out, frames)
    return len(frames), inside, sum(skipped.values())
