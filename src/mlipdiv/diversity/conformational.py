"""Conformational diversity of one molecule: RMSD between conformers, torsion spread, energy and
force spreads.

RMSD is over heavy atoms after optimal superposition, taking molecular symmetry into account
(RDKit `rdMolAlign.GetBestRMS`, which also treats conjugated terminal groups such as carboxylates
as symmetric). Molecules with fewer than four heavy atoms use all atoms, since a heavy-atom
RMSD of up to three atoms is always ~0.

The RDKit molecule is rebuilt in the store's atom order: connectivity from the first unflagged
conformer's geometry (`rdDetermineBonds.DetermineConnectivity`), bond orders and charges from
the stored SMILES (`AssignBondOrdersFromTemplate`). If the template does not fit (e.g. a
synthetic geometry), the connectivity alone is used and `bond_orders_from_smiles` is False.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem, Lipinski, rdDetermineBonds, rdMolAlign

from mlipdiv.data.identity import quiet_rdkit
from mlipdiv.data.store import MoleculeRecord

RMSD_PAIR_CAP = 100  # conformer pairs per molecule; above this a uniform random sample is used
MAX_SYMMETRY_MATCHES = 1000
DUPLICATE_RMSD_ANGSTROM = 0.05
DISTINCT_RMSD_ANGSTROM = 0.5  # the ETKDG sampler's pruning RMSD: distinct force-field minima
EFFECTIVE_CONFORMER_CAP = 64  # conformers per molecule clustered; above, a random subset
MIN_HEAVY_ATOMS_FOR_RMSD = 4  # up to three atoms are nearly rigid: use all atoms instead
_ROTATABLE = Lipinski.RotatableBondSmarts
_REMOVE_EVERY_HYDROGEN = Chem.RemoveHsParameters()
for _flag in ("removeDefiningBondStereo", "removeWithWedgedBond", "removeDegreeZero",
              "removeHigherDegrees", "removeIsotopes", "removeHydrides", "removeNontetraHydrogens",
              "removeWithQuery", "removeMapped", "removeInSGroups"):
    setattr(_REMOVE_EVERY_HYDROGEN, _flag, True)


def rmsd_atoms(atomic_numbers: np.ndarray) -> np.ndarray:
    """The atoms RMSD is computed over: the heavy atoms, or all atoms when there are fewer
    than MIN_HEAVY_ATOMS_FOR_RMSD heavy atoms."""
    heavy = np.flatnonzero(np.asarray(atomic_numbers) > 1)
    return heavy if len(heavy) >= MIN_HEAVY_ATOMS_FOR_RMSD else np.arange(len(atomic_numbers))


def rmsd_lower_bounds(atomic_numbers: np.ndarray, reference: np.ndarray,
                      candidates: np.ndarray) -> np.ndarray:
    """A lower bound (Angstrom) on the symmetry-aware, optimally superposed RMSD of every
    (candidate, reference) conformer pair, shape (n_candidates, n_reference), without RDKit.

    Optimal superposition puts both centroids at the origin and rotates; a rotation keeps each
    atom's distance to the centroid, so |R x_i - y_j| >= | |x_i| - |y_j| | for the matched atom
    j, and no atom matching (symmetry-aware RMSD allows only some) brings two lists of
    distances closer than matching them in sorted order does. Pairs whose bound reaches a
    threshold cannot be within it: the exact RMSD is needed only for the others."""

    def profile(positions: np.ndarray) -> np.ndarray:
        atoms = positions[:, rmsd_atoms(atomic_numbers)]
        centred = atoms - atoms.mean(axis=1, keepdims=True)
        return np.sort(np.linalg.norm(centred, axis=-1), axis=1)

    left, right = profile(candidates), profile(reference)
    return np.sqrt(((left[:, None, :] - right[None, :, :]) ** 2).mean(axis=-1))


class ConformerGeometry:
    """A molecule's conformers as an RDKit molecule (the atoms RMSD is computed over, in store
    order, one RDKit conformer per stored conformer)."""

    def __init__(self, record: MoleculeRecord):
        self.record = record
        full, self.bond_orders_from_smiles = _bonded_molecule(record)
        self.atom_indices = rmsd_atoms(record.atomic_numbers)
        if len(self.atom_indices) < record.n_atoms:
            self.mol = _heavy_atoms_only(full, sanitized=self.bond_orders_from_smiles)
        else:
            self.mol = Chem.Mol(full)
        self.mol.RemoveAllConformers()
        for xyz in record.positions[:, self.atom_indices]:
            conformer = Chem.Conformer(len(self.atom_indices))
            conformer.SetPositions(np.ascontiguousarray(xyz))
            self.mol.AddConformer(conformer, assignId=True)

    @property
    def n_conformers(self) -> int:
        return self.record.n_conformers

    def rmsd(self, first: int, second: int) -> float:
        """Symmetry-aware RMSD (Angstrom) between two conformers after optimal alignment."""
        if first == second:
            return 0.0
        return rdMolAlign.GetBestRMS(self.mol, self.mol, int(first), int(second),
                                     maxMatches=MAX_SYMMETRY_MATCHES)

    def pair_rmsds(self, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
        """RMSD for each (i, j) conformer pair."""
        return np.array([self.rmsd(i, j) for i, j in pairs], dtype=float)

    def mean_pairwise_rmsd(
        self, rng: np.random.Generator, max_pairs: int = RMSD_PAIR_CAP
    ) -> tuple[float, int, bool]:
        """(mean RMSD over conformer pairs, pairs used, exact); a uniform sample of
        `max_pairs` distinct pairs when there are more. NaN for a single conformer."""
        pairs = conformer_pairs(self.n_conformers, rng, max_pairs)
        if not pairs:
            return float("nan"), 0, True
        exact = len(pairs) == self.n_conformers * (self.n_conformers - 1) // 2
        return float(self.pair_rmsds(pairs).mean()), len(pairs), exact

    def near_duplicates(
        self, reference: Sequence[int], candidates: Sequence[int],
        threshold: float = DUPLICATE_RMSD_ANGSTROM, possible: np.ndarray | None = None,
    ) -> list[tuple[int, int, float]]:
        """(candidate, reference, rmsd) for every candidate conformer within `threshold`
        Angstrom of a reference conformer (the first such reference). `possible[c, r]` False
        skips a pair known to be farther apart (`rmsd_lower_bounds`)."""
        found = []
        for c, candidate in enumerate(candidates):
            for r, ref in enumerate(reference):
                if possible is not None and not possible[c, r]:
                    continue
                value = self.rmsd(candidate, ref)
                if value < threshold:
                    found.append((int(candidate), int(ref), value))
                    break
        return found

    def effective_conformers(self, thresholds: Sequence[float], rng: np.random.Generator,
                             cap: int = EFFECTIVE_CONFORMER_CAP) -> list[float]:
        """For each RMSD threshold (Angstrom), the number of distinct conformers: leader
        clustering in stored order, a conformer joining the first representative within the
        threshold (so near-copies of one geometry count once). Above `cap` conformers a random
        subset of `cap` is clustered and its count scaled by n_conformers / cap."""
        chosen = np.arange(self.n_conformers)
        if len(chosen) > cap:
            chosen = np.sort(rng.choice(chosen, cap, replace=False))
        counts = []
        for threshold in thresholds:
            leaders: list[int] = []
            for conformer in chosen:
                if not any(self.rmsd(conformer, leader) < threshold for leader in leaders):
                    leaders.append(int(conformer))
            counts.append(len(leaders) * self.n_conformers / len(chosen))
        return counts

    def torsion_spread(self) -> tuple[float, int]:
        """(mean circular standard deviation in degrees of the rotatable-bond dihedrals over
        conformers, number of rotatable bonds). Raw dihedrals: a symmetric ring flip counts as a
        change. NaN when there is no rotatable bond or a single conformer."""
        from scipy.stats import circstd  # slow to import; only needed here

        quads = self.rotatable_dihedrals()
        if not quads or self.n_conformers < 2:
            return float("nan"), len(quads)
        positions = self.record.positions[:, self.atom_indices]
        angles = dihedrals(positions, np.array(quads))
        spread = circstd(angles, high=np.pi, low=-np.pi, axis=0)
        return float(np.degrees(np.mean(spread))), len(quads)

    def rotatable_dihedrals(self) -> list[tuple[int, int, int, int]]:
        """One (i, j, k, l) atom quadruple per rotatable bond j-k (RDKit's Lipinski definition)
        in this molecule's atom indices, with i and l the lowest-index other neighbours."""
        self.mol.UpdatePropertyCache(strict=False)
        Chem.FastFindRings(self.mol)
        quads = []
        for j, k in self.mol.GetSubstructMatches(_ROTATABLE):
            i = _other_neighbour(self.mol, j, k)
            neighbour_l = _other_neighbour(self.mol, k, j)
            if i is not None and neighbour_l is not None:
                quads.append((i, j, k, neighbour_l))
        return quads


def conformer_pairs(
    n_conformers: int, rng: np.random.Generator, max_pairs: int = RMSD_PAIR_CAP
) -> list[tuple[int, int]]:
    """All distinct conformer pairs, or a uniform sample of `max_pairs` of them."""
    total = n_conformers * (n_conformers - 1) // 2
    if total <= max_pairs:
        return [(i, j) for i in range(n_conformers) for j in range(i)]
    flat = rng.choice(total, size=max_pairs, replace=False)
    # invert the triangular numbering k = i(i-1)/2 + j, 0 <= j < i
    first = ((1 + np.sqrt(1 + 8 * flat)) // 2).astype(int)
    first -= (first * (first - 1) // 2 > flat).astype(int)
    second = flat - first * (first - 1) // 2
    return list(zip(first.tolist(), second.tolist(), strict=True))


def dihedrals(positions: np.ndarray, quads: np.ndarray) -> np.ndarray:
    """Dihedral angles (radians) of (n_conf, n_atoms, 3) positions for (n_quads, 4) atoms;
    returns (n_conf, n_quads)."""
    p0, p1, p2, p3 = (positions[:, quads[:, m]] for m in range(4))
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1 = b1 / np.linalg.norm(b1, axis=-1, keepdims=True)
    v = b0 - np.sum(b0 * b1, axis=-1, keepdims=True) * b1
    w = b2 - np.sum(b2 * b1, axis=-1, keepdims=True) * b1
    x = np.sum(v * w, axis=-1)
    y = np.sum(np.cross(b1, v) * w, axis=-1)
    return np.arctan2(y, x)


def energy_spread(record: MoleculeRecord) -> tuple[float, float]:
    """(std, max - min) of the conformer energies per atom, eV/atom; NaN when unlabelled."""
    if not record.labelled:
        return float("nan"), float("nan")
    per_atom = record.energy / record.n_atoms
    return float(np.std(per_atom)), float(np.ptp(per_atom))


def force_norm_spread(record: MoleculeRecord) -> tuple[float, float]:
    """(mean, std) of the atomic force norms over all conformers, eV/Angstrom; NaN without
    forces."""
    if not record.has_forces:
        return float("nan"), float("nan")
    norms = np.linalg.norm(record.forces, axis=-1)
    return float(norms.mean()), float(norms.std())


@quiet_rdkit()
def _bonded_molecule(record: MoleculeRecord) -> tuple[Chem.Mol, bool]:
    mol = Chem.RWMol()
    for z in record.atomic_numbers:
        mol.AddAtom(Chem.Atom(int(z)))
    # a flagged conformer (e.g. graph_mismatch: a stretched bond) would give the wrong graph
    reference = next((i for i, flag in enumerate(record.flags) if not flag), 0)
    conformer = Chem.Conformer(record.n_atoms)
    conformer.SetPositions(np.ascontiguousarray(record.positions[reference]))
    mol.AddConformer(conformer, assignId=True)
    rdDetermineBonds.DetermineConnectivity(mol)
    connectivity = mol.GetMol()
    template = Chem.MolFromSmiles(record.smiles) if record.smiles else None
    if template is not None:
        try:
            bonded = AllChem.AssignBondOrdersFromTemplate(Chem.AddHs(template), connectivity)
            Chem.SanitizeMol(bonded)
            return bonded, True
        except Exception:  # noqa: BLE001  RDKit raises many types when the template does not fit
            pass
    connectivity.UpdatePropertyCache(strict=False)
    return connectivity, False


def _heavy_atoms_only(mol: Chem.Mol, sanitized: bool) -> Chem.Mol:
    n_heavy = sum(1 for atom in mol.GetAtoms() if atom.GetAtomicNum() > 1)
    if sanitized:
        heavy = Chem.RemoveHs(mol, _REMOVE_EVERY_HYDROGEN)
        if heavy.GetNumAtoms() == n_heavy:
            return heavy
    # RemoveHs keeps unusual hydrogens (e.g. of an unsanitised molecule); drop each explicitly
    editable = Chem.RWMol(mol)
    for atom in sorted((a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() == 1),
                       reverse=True):
        editable.RemoveAtom(atom)
    return editable.GetMol()


def _other_neighbour(mol: Chem.Mol, atom: int, exclude: int) -> int | None:
    others = [n.GetIdx() for n in mol.GetAtomWithIdx(atom).GetNeighbors() if n.GetIdx() != exclude]
    return min(others) if others else None
