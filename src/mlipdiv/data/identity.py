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
    # (n, n) bool bond matrix in source atom order (None only for hand-made identities)
    bonds: np.ndarray | None = None
    # False: bonds from the connectivity alone, all single (`connectivity_identity`)
    bond_orders_assigned: bool = True

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
    return Identity(inchikey, smiles, CalcMolFormula(mol), np.argsort(ranks, kind="stable"),
                    bond_matrix(mol))


def bond_matrix(mol: Chem.Mol) -> np.ndarray:
    """(n, n) bool: which atoms of `mol` are bonded (its atom order)."""
    n = mol.GetNumAtoms()
    bonds = np.zeros((n, n), dtype=bool)
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        bonds[i, j] = bonds[j, i] = True
    return bonds


# The one valence of each element whose bonds are then all single (saturated): a graph whose
# every atom has this many neighbours needs no bond orders.
SINGLE_BOND_VALENCE = {1: 1, 5: 3, 6: 4, 7: 3, 8: 2, 9: 1, 14: 4, 15: 3, 16: 2, 17: 1, 35: 1,
                       53: 1}


@quiet_rdkit()
def connectivity_identity(atomic_numbers: np.ndarray, positions: np.ndarray) -> Identity:
    """Identity from the covalent-radius connectivity alone, every bond single: for saturated
    molecules (every atom at its `SINGLE_BOND_VALENCE`; strained cages of ISO17) whose bond
    orders RDKit's perception cannot assign, although there is nothing to assign. Raises
    PerceptionError when the graph is not saturated (then bond orders would be a guess)."""
    atomic_numbers = np.asarray(atomic_numbers)
    check_elements(atomic_numbers)
    bonded = adjacency(atomic_numbers, np.asarray(positions, dtype=float))
    degree = bonded.sum(axis=1)
    if any(SINGLE_BOND_VALENCE.get(int(z)) != int(d)
           for z, d in zip(atomic_numbers, degree, strict=True)):
        raise PerceptionError("connectivity is not saturated: bond orders are needed")
    mol = Chem.RWMol()
    for z in atomic_numbers:
        mol.AddAtom(Chem.Atom(int(z)))
    for i, j in zip(*np.nonzero(np.triu(bonded)), strict=True):
        mol.AddBond(int(i), int(j), Chem.BondType.SINGLE)
    conf = Chem.Conformer(len(atomic_numbers))
    for i, xyz in enumerate(np.asarray(positions, dtype=float)):
        conf.SetAtomPosition(i, xyz.tolist())
    mol.AddConformer(conf, assignId=True)
    found = identity_of(mol.GetMol())
    return Identity(found.inchikey, found.smiles, found.formula, found.canonical_order,
                    found.bonds, bond_orders_assigned=False)


@quiet_rdkit()
def skeleton(atomic_numbers: np.ndarray, bonded: np.ndarray) -> str:
    """Canonical SMILES of a bond graph with every hydrogen an atom of its own and bond
    orders and charges left out: equal for resonance forms, different for tautomers and
    protonation states (which standard InChIKeys share)."""
    mol = Chem.RWMol()
    for z in np.asarray(atomic_numbers):
        atom = Chem.Atom(int(z))
        atom.SetNoImplicit(True)
        mol.AddAtom(atom)
    for i, j in zip(*np.nonzero(np.triu(np.asarray(bonded, dtype=bool))), strict=True):
        mol.AddBond(int(i), int(j), Chem.BondType.SINGLE)
    mol = mol.GetMol()
    mol.UpdatePropertyCache(strict=False)
    return Chem.MolToSmiles(mol, isomericSmiles=False, allHsExplicit=True)


@dataclass(frozen=True)
class Template:
    """A file's SMILES matched to a block's atoms: the identity its bonds and charges give
    (stereo from the geometry) and its bond matrix in the block's atom order."""

    identity: Identity
    bonds: np.ndarray  # (n, n) bool, source atom order

    def contradicts(self, bonded: np.ndarray) -> bool:
        """Whether a geometry's covalent-radius bond matrix contradicts the SMILES: a SMILES
        bond missing, or an extra bond between atoms the SMILES bonds to something. Contacts
        of free ions (Na+ in a complex) and of atoms two bonds apart (P...P across P-O-P) are
        geometry, not bonds, and do not count."""
        bonded = np.asarray(bonded, dtype=bool)
        if (self.bonds & ~bonded).any():
            return True
        free = ~self.bonds.any(axis=1)
        two_apart = (self.bonds.astype(np.int64) @ self.bonds.astype(np.int64)) > 0
        extra = bonded & ~self.bonds & ~two_apart
        extra[free, :] = False
        extra[:, free] = False
        return bool(extra.any())


@quiet_rdkit()
def template_identity(smiles: str, atomic_numbers: np.ndarray, positions: np.ndarray
                      ) -> Template:
    """Identity of a geometry whose bonds and charges come from a SMILES: an atom-mapped
    SMILES (SPICE: map k is atom k) is taken atom by atom; otherwise the SMILES (hydrogens
    added) is matched onto the geometry's covalent-radius bond graph. Raises PerceptionError
    when the SMILES does not fit the atoms."""
    atomic_numbers = np.asarray(atomic_numbers)
    check_elements(atomic_numbers)
    n = len(atomic_numbers)
    params = Chem.SmilesParserParams()
    params.removeHs = False
    mol = Chem.MolFromSmiles(smiles, params)
    if mol is None:
        raise PerceptionError(f"smiles '{smiles}' does not parse")
    maps = [a.GetAtomMapNum() for a in mol.GetAtoms()]
    if sorted(maps) == list(range(1, n + 1)):
        order = [maps.index(k) for k in range(1, n + 1)]  # source atom k-1 = template atom
    else:
        mol = Chem.AddHs(mol)
        if mol.GetNumAtoms() != n:
            raise PerceptionError(f"smiles '{smiles}' has {mol.GetNumAtoms()} atoms with "
                                  f"hydrogens, the geometry {n}")
        order = _match_onto_geometry(mol, atomic_numbers, positions)
    mol = Chem.RWMol(Chem.RenumberAtoms(mol, order))
    for atom in mol.GetAtoms():
        atom.SetAtomMapNum(0)
    if [a.GetAtomicNum() for a in mol.GetAtoms()] != [int(z) for z in atomic_numbers]:
        raise PerceptionError(f"smiles '{smiles}' elements do not match the atoms")
    conf = Chem.Conformer(n)
    for i, xyz in enumerate(np.asarray(positions, dtype=float)):
        conf.SetAtomPosition(i, xyz.tolist())
    mol.AddConformer(conf, assignId=True)
    bonds = np.zeros((n, n), dtype=bool)
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        bonds[i, j] = bonds[j, i] = True
    return Template(identity_of(mol.GetMol()), bonds)


def _match_onto_geometry(mol: Chem.Mol, atomic_numbers: np.ndarray,
                         positions: np.ndarray) -> list[int]:
    """Template atom for each source atom: the SMILES graph (bond orders ignored) as a
    subgraph of the geometry's covalent-radius graph."""
    geometry = Chem.RWMol()
    for z in atomic_numbers:
        geometry.AddAtom(Chem.Atom(int(z)))
    bonded = adjacency(atomic_numbers, np.asarray(positions, dtype=float))
    for i, j in zip(*np.nonzero(np.triu(bonded)), strict=True):
        geometry.AddBond(int(i), int(j), Chem.BondType.SINGLE)
    geometry = geometry.GetMol()
    geometry.UpdatePropertyCache(strict=False)
    query_params = Chem.AdjustQueryParameters.NoAdjustments()
    query_params.makeBondsGeneric = True
    query = Chem.AdjustQueryProperties(mol, query_params)
    match = geometry.GetSubstructMatch(query)
    if len(match) != len(atomic_numbers):
        raise PerceptionError("the geometry's bonds do not contain the smiles' bonds")
    order = [0] * len(match)
    for template_atom, source_atom in enumerate(match):
        order[source_atom] = template_atom
    return order
