"""Trust scores on arrays: committee spread, latent-space distance, latent density, and the
model-free scores (nearest training molecule, QUESTS differential entropy, unseen elements).

Every score is "higher = less trusted". Per-atom values are returned beside the per-conformer
aggregates so a user can see which atoms leave the domain. Nearest neighbours come from FAISS:
exact search (`IndexFlatL2`) for small references; above `EXACT_SEARCH_LIMIT` atoms an inverted
file (`IndexIVFFlat`, 4*sqrt(n) lists, 16 probed), because exact search then costs milliseconds
per atom. bench/domain_scale.py --compare, 10^6 reference atoms of 32 dimensions on 2 busy
CPU cores: IVF built in 30 s and answered 5 neighbours in 0.6 ms per atom; exact search took
72 ms; an HNSW graph (32 links) 0.19 ms but 396 s to build; scikit-learn's k-d tree 138 ms;
pynndescent took 204 s to build.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
from scipy.special import logsumexp

from mlipdiv.atomic import atomic_path
from mlipdiv.diversity.structural import morgan_fingerprint
from mlipdiv.errors import MlipdivError
from mlipdiv.files import reading
from mlipdiv.models.base import Committee

DOMAIN_REMEDY = "rerun `mlipdiv domain fit RUN` (in a study, rerun the study)"

EXACT_SEARCH_LIMIT = 100_000  # reference rows per index above which IVF replaces exact search
IVF_PROBES = 16
IVF_TRAINING_PER_LIST = 40
QUESTS_BANDWIDTH = 0.015  # QUESTS's default kernel bandwidth (its descriptors are ~unitless)
QUESTS_NEIGHBOURS = 3  # as QUESTS's approximate dH


def committee_scores(
    energy: np.ndarray, forces: np.ndarray, n_atoms: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Committee spread of one molecule's predictions.

    energy: (n_members, n_conf) eV; forces: (n_members, n_conf, n_atoms, 3) eV/Angstrom.
    Returns per-conformer scores {energy_std (eV/atom), force_std_mean, force_std_max
    (eV/Angstrom)} and per-atom {force_std}: the norm of the per-component standard deviations
    across members."""
    if energy.shape[0] < 2:
        raise MlipdivError("committee scores need an ensemble of at least 2 members")
    sigma = committee_sigma(energy, forces, n_atoms)
    atom_force_std = np.sqrt((sigma["forces"] ** 2).sum(axis=-1))
    conformer = {
        "energy_std": sigma["energy"],
        "force_std_mean": atom_force_std.mean(axis=1),
        "force_std_max": atom_force_std.max(axis=1),
    }
    return conformer, {"force_std": atom_force_std}


def committee_sigma(energy: np.ndarray, forces: np.ndarray,
                    n_atoms: int) -> dict[str, np.ndarray]:
    """Committee standard deviations across members: of the energy per atom (n_conf,) eV/atom
    and of each force component (n_conf, n_atoms, 3) eV/A."""
    committee = Committee(energy / n_atoms, forces)
    return {"energy": committee.energy_std, "forces": committee.forces_std}


class NeighbourIndex:
    """k-nearest-neighbour Euclidean distances to a fixed reference set (FAISS)."""

    def __init__(self, index: faiss.Index):
        self.index = index

    @classmethod
    def build(cls, reference: np.ndarray, seed: int = 0) -> NeighbourIndex:
        """Exact search up to EXACT_SEARCH_LIMIT reference rows, an inverted file above."""
        reference = np.ascontiguousarray(reference, dtype=np.float32)
        n, dim = reference.shape
        if n <= EXACT_SEARCH_LIMIT:
            index = faiss.IndexFlatL2(dim)
        else:
            lists = int(4 * np.sqrt(n))
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, lists)
            rng = np.random.default_rng(seed)
            sample = rng.choice(n, min(n, IVF_TRAINING_PER_LIST * lists), replace=False)
            index.train(reference[np.sort(sample)])
        index.add(reference)
        return cls(index)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @property
    def method(self) -> str:
        return "faiss-ivf" if isinstance(self.index, faiss.IndexIVF) else "faiss-flat"

    def distances(self, queries: np.ndarray, k: int) -> np.ndarray:
        """(n_queries, k) distances to the k nearest reference rows, nearest first."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, self.size)
        if isinstance(self.index, faiss.IndexIVF):
            self.index.nprobe = IVF_PROBES
        squared, _ = self.index.search(queries, k)
        return np.sqrt(np.maximum(squared, 0.0))

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            faiss.write_index(self.index, str(tmp))

    @classmethod
    def load(cls, path: Path) -> NeighbourIndex:
        with reading(path, "neighbour index", DOMAIN_REMEDY):
            return cls(faiss.read_index(str(path)))


class ElementNeighbours:
    """Per-element nearest-neighbour search: an atom is compared only with reference atoms of
    its own element; atoms of elements absent from the reference with all reference atoms."""

    def __init__(self, indexes: dict[int, NeighbourIndex]):
        if not indexes:
            raise MlipdivError("empty reference: no training atoms")
        self.indexes = indexes

    @classmethod
    def build(cls, features: np.ndarray, numbers: np.ndarray) -> ElementNeighbours:
        return cls({int(z): NeighbourIndex.build(features[numbers == z])
                    for z in np.unique(numbers)})

    def distances(self, features: np.ndarray, numbers: np.ndarray, k: int) -> np.ndarray:
        """Mean distance of each atom to its k nearest same-element reference atoms."""
        result = np.empty(len(features))
        for z in np.unique(numbers):
            rows = numbers == z
            if int(z) in self.indexes:
                result[rows] = self.indexes[int(z)].distances(features[rows], k).mean(axis=1)
            else:
                nearest = [index.distances(features[rows], k).mean(axis=1)
                           for index in self.indexes.values()]
                result[rows] = np.min(nearest, axis=0)
        return result


class LatentScaler:
    """Standardises latent features with the training set's mean and spread, so that no single
    feature dimension dominates distances or the mixture's covariances. Dimensions that hardly
    vary in training (e.g. ANI angular terms of absent element pairs) are divided by a floor
    of 1 % of the typical spread instead, so that they cannot blow distances up."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray):
        self.mean, self.scale = mean, scale

    @classmethod
    def fit(cls, features: np.ndarray) -> LatentScaler:
        scale = features.std(axis=0)
        floor = 0.01 * float(np.sqrt(np.mean(scale ** 2))) or 1.0
        return cls(features.mean(axis=0), np.maximum(scale, floor))

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.scale).astype(np.float32)


def fit_density(features: np.ndarray, components: int = 8, max_atoms: int = 20_000, seed: int = 0):
    """A Gaussian mixture on (standardised) latent features; full covariances up to 64
    dimensions, diagonal above. Fitted on at most `max_atoms` randomly chosen atoms."""
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(seed)
    if len(features) > max_atoms:
        features = features[rng.choice(len(features), max_atoms, replace=False)]
    components = max(1, min(components, len(features) // 20))
    covariance = "full" if features.shape[1] <= 64 else "diag"
    mixture = GaussianMixture(components, covariance_type=covariance, reg_covar=1e-3,
                              random_state=seed)
    return mixture.fit(features)


def density_nll(mixture, features: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of each atom's features under the mixture."""
    return -mixture.score_samples(features)


def fingerprint_or_none(smiles: str | None):
    """The Morgan fingerprint of a SMILES (diversity's), or None when the SMILES is missing or
    does not parse: a molecule without a usable SMILES then gets no Tanimoto score instead of
    failing the whole scoring."""
    if not smiles:  # RDKit would parse "" as an empty molecule
        return None
    try:
        return morgan_fingerprint(smiles)
    except MlipdivError:  # RDKit cannot parse it
        return None


def tanimoto_distance(smiles: str, reference: list) -> float:
    """1 - Tanimoto similarity of a molecule to its most similar reference fingerprint
    (NaN when the SMILES is missing or does not parse)."""
    from rdkit import DataStructs

    fingerprint = fingerprint_or_none(smiles)
    if fingerprint is None or not reference:
        return float("nan")
    return 1.0 - max(DataStructs.BulkTanimotoSimilarity(fingerprint, reference))


def quests_entropy(index: NeighbourIndex, descriptors: np.ndarray,
                   bandwidth: float = QUESTS_BANDWIDTH) -> np.ndarray:
    """QUESTS differential entropy dH of each environment against the reference: minus the log
    of the summed Gaussian kernel over its nearest reference environments (QUESTS's
    approximate dH). Computed as a log-sum-exp, so environments far from every reference
    environment get large finite values instead of infinity."""
    distances = index.distances(descriptors, QUESTS_NEIGHBOURS)
    return -logsumexp(-0.5 * (distances / bandwidth) ** 2, axis=1)


def unseen_element_atoms(numbers: np.ndarray, elements: set[int]) -> np.ndarray:
    """Boolean per atom: its element never occurs in the training set."""
    return ~np.isin(numbers, sorted(elements))
