"""Molecule identity from geometry: bond perception with RDKit, then InChIKey.

A file's group name never decides identity. Perceiving bonds is slow (milliseconds), so readers
group conformers by a cheap covalent-radius connectivity first and perceive once per distinct
graph (`connectivity_signature`), not once per conformer.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

import numpy as np
from ase.data import covalent_radii
from rdkit import Chem
from rdkit.Chem import rdDetermineBonds
from rdkit.Chem.rdMolDescriptors import CalcMolFormula
from rdkit.rdBase import BlockLogs

from mlipdiv.errors import first_line


class quiet_rdkit(contextlib.ContextDecorator):  # noqa: N801 - used like contextlib's helpers
    """RDKit's messages about the molecules mlipdiv reads (odd valences, SMILES it then skips
    and counts) are silenced inside mlipdiv's own calls only: a block or a decorated function,
    never the importing process (RDKit's BlockLogs restores the logs on exit)."""

    def _recreate_cm(self) -> quiet_rdkit:
        return type(self)()  # a decorated function gets a fresh blocker per call (re-entrant)

    def __enter__(self) -> quiet_rdkit:
        self._block = BlockLogs()
        return self

    def __exit__(self, *exc) -> None:
        del self._block  # BlockLogs restores the log levels when it is freed

# Elements mlipdiv accepts (organic chemistry as in SPICE/ANI/QM7-X).
SUPPORTED_ELEMENTS = frozenset({1, 3, 5, 6, 7, 8, 9, 11, 12, 14, 15, 16, 17, 19, 20, 35, 53})
BOND_TOLERANCE = 1.25  # bonded if distance < tolerance * (r_cov,i + r_cov,j)


@dataclass(frozen=True)
class Identity:
    """What a perceived molecule is: its InChIKey, SMILES, Hill formula, and the atom order
    (`canonical_order[k]` = source index of the k-th atom in canonical order)."""

    inchikey: str
    smiles: str
    formula: str
    canonical_order: np.ndarray

    @property
    def connectivity_key(self) -> str:
        """First InChIKey block: the skeleton, so stereoisomers share it."""
        return self.inchikey[:14]


class PerceptionError(ValueError):
    """Bond perception or InChI generation failed for a geometry."""


def check_elements(atomic_numbers: np.ndarray) -> None:
    """Raise PerceptionError on an atomic number mlipdiv does not support."""
    bad = sorted({int(z) for z in atomic_numbers} - SUPPORTED_ELEMENTS)
    if bad:
        raise PerceptionError(f"unsupported atomic number(s) {bad}")


def adjacency(atomic_numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Boolean bond matrices from covalent radii; positions (n,3) or (c,n,3) in Angstrom."""
    radii = covalent_radii[np.asarray(atomic_numbers)]
    cutoff = BOND_TOLERANCE * (radii[:, None] + radii[None, :])
    diff = positions[..., :, None, :] - positions[..., None, :, :]
    dist = np.sqrt(np.einsum("...ijk,...ijk->...ij", diff, diff))
    bonded = dist < cutoff
    n = len(atomic_numbers)
    bonded[..., np.arange(n), np.arange(n)] = False
    return bonded


def connectivity_signature(atomic_numbers: np.ndarray, positions: np.ndarray) -> list[bytes]:
    """One hashable signature per conformer of a (c,n,3) block: equal for equal bond graphs in
    the same atom order."""
    bonded = adjacency(atomic_numbers, positions)
    packed = np.packbits(bonded.reshape(len(positions), -1), axis=1)
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in packed]


@quiet_rdkit()
def perceive(atomic_numbers: np.ndarray, positions: np.ndarray, charge: int = 0) -> Identity:
    """Perceive bonds of one conformer (Angstrom) and return its identity.

    Raises PerceptionError with the reason when the geometry cannot be turned into a molecule.
    """
    atomic_numbers = np.asarray(atomic_numbers)
    check_elements(atomic_numbers)
    mol = Chem.RWMol()
    for z in atomic_numbers:
        mol.AddAtom(Chem.Atom(int(z)))
    conf = Chem.Conformer(len(atomic_numbers))
    for i, xyz in enumerate(np.asarray(positions, dtype=float)):
        conf.SetAtomPosition(i, xyz.tolist())
    mol.AddConformer(conf, assignId=True)
    try:
        rdDetermineBonds.DetermineBonds(mol, charge=charge)
    except Exception as exc:  # RDKit raises bare ValueError/RuntimeError with long texts
        raise PerceptionError(f"bond perception failed ({first_line(exc)})") from None
    return identity_of(mol.GetMol())


@quiet_rdkit()
def identity_of(mol: Chem.Mol) -> Identity:
    """Identity of an RDKit molecule that has explicit hydrogens (and, ideally, 3D coordinates
    for stereo perception)."""
    try:
        Chem.SanitizeMol(mol)
        if mol.GetNumConformers():
            Chem.AssignStereochemistryFrom3D(mol)
        inchikey = Chem.MolToInchiKey(mol)
    except Exception as exc:
        raise PerceptionError(f"InChI generation failed ({first_line(exc)})") from None
    if not inchikey:
        raise PerceptionError("InChI generation failed (empty InChIKey)")
    ranks = np.array(Chem.CanonicalRankAtoms(mol, breakTies=True))
    smiles = Chem.MolToSmiles(Chem.RemoveHs(mol, sanitize=False))
    return Identity(inchikey, smiles, CalcMolFormula(mol), np.argsort(ranks, kind="stable"))
