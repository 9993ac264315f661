"""The training-set reference every trust score is measured against, and the scoring of one
molecule's conformers against it.

Built from arrays (per-atom latent features, QUESTS descriptors, atomic numbers, SMILES), so
it works for any model that gives per-atom features, and is saved as FAISS indexes plus one
`.npz` file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from mlipdiv.atomic import atomic_path
from mlipdiv.domain.scores import (
    DOMAIN_REMEDY,
    ElementNeighbours,
    LatentScaler,
    NeighbourIndex,
    committee_scores,
    density_nll,
    fingerprint_or_none,
    fit_density,
    quests_entropy,
    tanimoto_distance,
    unseen_element_atoms,
)
from mlipdiv.errors import MlipdivError
from mlipdiv.files import reading

COMMITTEE_SCORES = ("energy_std", "force_std_mean", "force_std_max")
MODEL_SCORES = ("latent_distance_max", "latent_distance_mean", "density_nll_max",
                "density_nll_mean")
MODEL_FREE_SCORES = ("tanimoto_distance", "quests_dh_max", "quests_dh_mean", "unseen_elements")
SCORE_DESCRIPTIONS = {
    "energy_std": "committee std of energy per atom (eV/atom)",
    "force_std_mean": "committee force std, mean over atoms (eV/A)",
    "force_std_max": "committee force std, max over atoms (eV/A)",
    "latent_distance_max": "latent kNN distance to same-element training atoms, max over atoms",
    "latent_distance_mean": "latent kNN distance to same-element training atoms, mean",
    "density_nll_max": "Gaussian-mixture NLL of latent features, max over atoms",
    "density_nll_mean": "Gaussian-mixture NLL of latent features, mean over atoms",
    "tanimoto_distance": "1 - Tanimoto similarity to the nearest training molecule (Morgan)",
    "quests_dh_max": "QUESTS differential entropy vs training environments, max over atoms",
    "quests_dh_mean": "QUESTS differential entropy vs training environments, mean",
    "unseen_elements": "atoms whose element is absent from training",
}
REFERENCE_FILE = "reference.npz"


@dataclass
class RecordScores:
    """Scores of one molecule's conformers: `scores[name]` (n_conf,) and the per-atom values
    behind them `atom_scores[name]` (n_conf, n_atoms); `member_energy` (n_members, n_conf) eV
    and `member_forces` (n_members, n_conf, n_atoms, 3) eV/A when a model predicted them."""

    inchikey: str
    scores: dict[str, np.ndarray]
    atom_scores: dict[str, np.ndarray]
    member_energy: np.ndarray | None = None
    member_forces: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n_conformers(self) -> int:
        return len(next(iter(self.scores.values())))


@dataclass
class DomainReference:
    """Everything about the training set the scores need."""

    elements: set[int]
    smiles: list[str]
    scaler: LatentScaler | None
    latent: ElementNeighbours | None
    density: object | None  # sklearn GaussianMixture
    quests: NeighbourIndex
    neighbours: int = 5

    @classmethod
    def build(
        cls,
        numbers: np.ndarray,
        descriptors: np.ndarray,
        smiles: list[str],
        features: np.ndarray | None = None,
        neighbours: int = 5,
        density_components: int = 8,
        seed: int = 0,
    ) -> DomainReference:
        """Reference from flat per-atom arrays of the training set: atomic numbers (n,),
        QUESTS descriptors (n, d), optional latent features (n, d); and its SMILES."""
        numbers = np.asarray(numbers)
        if len(numbers) == 0:
            raise MlipdivError("empty reference: no training atoms")
        scaler = latent = density = None
        if features is not None:
            scaler = LatentScaler.fit(features)
            scaled = scaler(features)
            latent = ElementNeighbours.build(scaled, numbers)
            density = fit_density(scaled, density_components, seed=seed)
        return cls({int(z) for z in np.unique(numbers)}, sorted(set(smiles)), scaler, latent,
                   density, NeighbourIndex.build(descriptors), neighbours)

    @property
    def nn_library(self) -> str:
        """The FAISS index kinds in use, e.g. 'faiss-flat+faiss-ivf'."""
        indexes = [self.quests, *(self.latent.indexes.values() if self.latent else ())]
        return "+".join(sorted({index.method for index in indexes}))

    def score_molecule(
        self,
        numbers: np.ndarray,
        smiles: str,
        descriptors: np.ndarray,
        features: np.ndarray | None = None,
        member_energy: np.ndarray | None = None,
        member_forces: np.ndarray | None = None,
        inchikey: str = "",
    ) -> RecordScores:
        """Score the conformers of one molecule. descriptors (n_conf, n_atoms, d); features
        (n_conf, n_atoms, d) or None when the model cannot represent the molecule (elements
        absent from training: its latent scores are then +inf); committee arrays optional."""
        n_conf, n_atoms = descriptors.shape[:2]
        conformer: dict[str, np.ndarray] = {}
        atoms: dict[str, np.ndarray] = {}
        if member_energy is not None and len(member_energy) > 1:
            committee, atom_committee = committee_scores(member_energy, member_forces, n_atoms)
            conformer.update(_nan_to_inf(committee))
            atoms.update(atom_committee)
        if self.latent is not None:
            self._score_latent(numbers, features, n_conf, conformer, atoms)
        atoms["quests_dh"] = quests_entropy(
            self.quests, descriptors.reshape(n_conf * n_atoms, -1)).reshape(n_conf, n_atoms)
        _aggregate(conformer, "quests_dh", atoms["quests_dh"])
        unseen = np.broadcast_to(unseen_element_atoms(numbers, self.elements), (n_conf, n_atoms))
        atoms["unseen_element"] = unseen.astype(float)
        conformer["unseen_elements"] = unseen.sum(axis=1).astype(float)
        conformer["tanimoto_distance"] = np.full(n_conf, self.tanimoto(smiles))
        return RecordScores(inchikey, conformer, atoms, member_energy, member_forces)

    @cached_property
    def fingerprints(self) -> list:
        """Morgan fingerprints of the training molecules."""
        return [fp for fp in map(fingerprint_or_none, self.smiles) if fp is not None]

    def tanimoto(self, smiles: str) -> float:
        """1 - similarity to the nearest training molecule."""
        return tanimoto_distance(smiles, self.fingerprints)

    def _score_latent(self, numbers, features, n_conf, conformer, atoms) -> None:
        n_atoms = len(numbers)
        if features is None:
            for name in ("latent_distance", "density_nll"):
                atoms[name] = np.full((n_conf, n_atoms), np.nan)
                conformer[f"{name}_max"] = conformer[f"{name}_mean"] = np.full(n_conf, np.inf)
            return
        flat = self.scaler(features.reshape(n_conf * n_atoms, -1))
        flat_numbers = np.tile(numbers, n_conf)
        distance = self.latent.distances(flat, flat_numbers, self.neighbours)
        atoms["latent_distance"] = distance.reshape(n_conf, n_atoms)
        atoms["density_nll"] = density_nll(self.density, flat).reshape(n_conf, n_atoms)
        for name in ("latent_distance", "density_nll"):
            _aggregate(conformer, name, atoms[name])

    # ---- persistence
    def save(self, directory: Path) -> None:
        """Write the reference into `directory` (FAISS indexes + reference.npz)."""
        directory.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "elements": np.array(sorted(self.elements)),
            "smiles": np.array(self.smiles, dtype=str),
            "neighbours": np.array(self.neighbours),
        }
        self.quests.save(directory / "quests.faiss")
        if self.latent is not None:
            arrays.update(scaler_mean=self.scaler.mean, scaler_scale=self.scaler.scale,
                          latent_elements=np.array(sorted(self.latent.indexes)))
            for z, index in self.latent.indexes.items():
                index.save(directory / f"latent-{z}.faiss")
            arrays.update(_mixture_arrays(self.density))
        with atomic_path(directory / REFERENCE_FILE) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    @classmethod
    def load(cls, directory: Path) -> DomainReference:
        path = directory / REFERENCE_FILE
        if not path.exists():
            raise MlipdivError(f"{directory}: no domain reference ({REFERENCE_FILE}); "
                               "run `mlipdiv domain fit` first")
        with reading(path, "domain reference", DOMAIN_REMEDY):
            with np.load(path, allow_pickle=False) as archive:
                data = {name: archive[name] for name in archive.files}
            scaler = latent = density = None
            if "scaler_mean" in data:
                scaler = LatentScaler(data["scaler_mean"], data["scaler_scale"])
                latent_elements = [int(z) for z in data["latent_elements"]]
                density = _mixture_from_arrays(data)
            elements, smiles = {int(z) for z in data["elements"]}, [str(s) for s in data["smiles"]]
            neighbours = int(data["neighbours"])
        if scaler is not None:
            latent = ElementNeighbours({z: NeighbourIndex.load(directory / f"latent-{z}.faiss")
                                        for z in latent_elements})
        return cls(elements, smiles, scaler, latent, density,
                   NeighbourIndex.load(directory / "quests.faiss"), neighbours)


def _aggregate(conformer: dict, name: str, per_atom: np.ndarray) -> None:
    conformer[f"{name}_max"] = per_atom.max(axis=1)
    conformer[f"{name}_mean"] = per_atom.mean(axis=1)


def _nan_to_inf(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A model that cannot predict a conformer (NaN) cannot be trusted on it."""
    return {k: np.where(np.isnan(v), np.inf, v) for k, v in scores.items()}


def _mixture_arrays(mixture) -> dict[str, np.ndarray]:
    return {"gmm_weights": mixture.weights_, "gmm_means": mixture.means_,
            "gmm_covariances": mixture.covariances_,
            "gmm_precisions_cholesky": mixture.precisions_cholesky_,
            "gmm_covariance_type": np.array(mixture.covariance_type)}


def _mixture_from_arrays(data) -> object:
    """Rebuild a fitted GaussianMixture from its parameters (no pickle)."""
    from sklearn.mixture import GaussianMixture

    mixture = GaussianMixture(len(data["gmm_weights"]),
                              covariance_type=str(data["gmm_covariance_type"]))
    mixture.weights_ = data["gmm_weights"]
    mixture.means_ = data["gmm_means"]
    mixture.covariances_ = data["gmm_covariances"]
    mixture.precisions_cholesky_ = data["gmm_precisions_cholesky"]
    return mixture



def summary(reference: DomainReference) -> dict:
    """A JSON-able description of the reference (sizes, nearest-neighbour library)."""
    return {"elements": sorted(reference.elements), "molecules": len(reference.smiles),
            "atoms": reference.quests.size, "nn_library": reference.nn_library,
            "neighbours": reference.neighbours, "latent": reference.latent is not None}
