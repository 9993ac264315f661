"""Model-free information entropy of atomic environments (QUESTS: Schwalbe-Koda et al., 2025).

QUESTS describes each atom by sorted inverse distances to its k nearest neighbours; the dataset
entropy H (nats) and diversity D (log of the effective number of distinct environments) follow
from a Gaussian kernel density over those descriptors. Both are O(n^2) in the number of
environments, so mlipdiv caps them: per molecule, conformers are sampled so that at most
`max_environments` environments enter; for the whole set, a uniform random sample of
environments is kept while streaming (reservoir sampling). The counts used are reported.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from mlipdiv.data.store import MoleculeRecord

MOLECULE_ENVIRONMENT_CAP = 300
DATASET_ENVIRONMENT_CAP = 10_000
KERNEL_BATCH = 1000  # rows per distance block: bounds the kernel's memory to ~cap x 1000 floats
QUESTS_K = 32  # neighbours per environment (QUESTS's default)
QUESTS_CUTOFF = 5.0  # Angstrom (QUESTS's default)


def quests_descriptors(numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """QUESTS atomic-environment descriptors of conformers (n_conf, n_atoms, 3) -> (n_conf,
    n_atoms, d), with QUESTS_K neighbours and a QUESTS_CUTOFF Angstrom cutoff."""
    from quests.descriptor import get_descriptors  # numba: imported only when needed

    frames = [Atoms(numbers=numbers, positions=xyz) for xyz in positions]
    flat = get_descriptors(frames, k=QUESTS_K, cutoff=QUESTS_CUTOFF)
    return flat.reshape(len(positions), len(numbers), -1)


def environment_descriptors(record: MoleculeRecord,
                            conformers: np.ndarray | None = None) -> np.ndarray:
    """QUESTS descriptors of every atom of the given conformers (all when None), one row per
    environment: (n_conf * n_atoms, d)."""
    positions = record.positions if conformers is None else record.positions[conformers]
    descriptors = quests_descriptors(record.atomic_numbers, positions)
    return descriptors.reshape(-1, descriptors.shape[-1])


def entropy_and_diversity(descriptors: np.ndarray) -> tuple[float, float]:
    """QUESTS (entropy, diversity) in nats of a set of environment descriptors."""
    from quests.entropy import DEFAULT_BANDWIDTH, kernel_sum

    if len(descriptors) == 0:
        return float("nan"), float("nan")
    density = kernel_sum(descriptors, descriptors, h=DEFAULT_BANDWIDTH, batch_size=KERNEL_BATCH)
    return (float(-np.mean(np.log(density / len(descriptors)))),
            float(np.log(np.sum(1.0 / density))))


def molecule_entropy(
    record: MoleculeRecord, rng: np.random.Generator,
    max_environments: int = MOLECULE_ENVIRONMENT_CAP,
) -> tuple[float, float, int]:
    """(entropy, diversity, environments used) of one molecule over a random subset of its
    conformers holding at most `max_environments` environments (at least one conformer)."""
    n_use = max(1, min(record.n_conformers, max_environments // record.n_atoms))
    chosen = np.sort(rng.choice(record.n_conformers, n_use, replace=False))
    descriptors = environment_descriptors(record, chosen)
    return (*entropy_and_diversity(descriptors), len(descriptors))


class EnvironmentReservoir:
    """A uniform random sample (without replacement) of at most `capacity` environments from a
    stream of molecules: each environment gets a random priority and the lowest are kept."""

    def __init__(self, capacity: int = DATASET_ENVIRONMENT_CAP, seed: int = 0):
        self.capacity = capacity
        self.rng = np.random.default_rng(seed)
        self.priorities = np.empty(0)
        self.descriptors: np.ndarray | None = None
        self.seen = 0

    def add(self, record: MoleculeRecord) -> None:
        """Offer all environments of a molecule; descriptors are computed only for the
        conformers that hold an environment entering the sample."""
        priorities = self.rng.random((record.n_conformers, record.n_atoms))
        self.seen += priorities.size
        threshold = (np.inf if len(self.priorities) < self.capacity
                     else float(self.priorities.max()))
        conformers = np.flatnonzero((priorities < threshold).any(axis=1))
        if len(conformers) == 0:
            return
        candidates = environment_descriptors(record, conformers)
        merged_priorities = np.concatenate([self.priorities, priorities[conformers].ravel()])
        merged = (candidates if self.descriptors is None
                  else np.concatenate([self.descriptors, candidates]))
        keep = np.argsort(merged_priorities, kind="stable")[: self.capacity]
        self.priorities, self.descriptors = merged_priorities[keep], merged[keep]

    def entropy_and_diversity(self) -> tuple[float, float]:
        """QUESTS (entropy, diversity) of the sampled environments."""
        if self.descriptors is None:
            return float("nan"), float("nan")
        return entropy_and_diversity(self.descriptors)

