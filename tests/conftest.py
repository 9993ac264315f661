"""Shared test fixtures: small real molecules embedded with RDKit and labelled with GFN2-xTB."""

from __future__ import annotations

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from mlipdiv.data import MoleculeRecord, QMMethod, perceive


def embed(smiles: str, n_conf: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Atomic numbers and (n_conf, n_atoms, 3) ETKDG positions for a SMILES."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    ids = AllChem.EmbedMultipleConfs(mol, n_conf, params)
    assert len(ids) == n_conf, smiles
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    return numbers, np.array([c.GetPositions() for c in mol.GetConformers()])


def labelled_record(smiles: str, n_conf: int, seed: int = 0) -> MoleculeRecord:
    """A store record of real GFN2-xTB-labelled ETKDG conformers, in canonical atom order."""
    numbers, positions = embed(smiles, n_conf, seed)
    ident = perceive(numbers, positions[0])
    numbers, positions = numbers[ident.canonical_order], positions[:, ident.canonical_order]
    energy, forces = QMMethod("gfn2-xtb").label_many(numbers, positions)
    return MoleculeRecord(
        ident.inchikey, ident.smiles, ident.formula, numbers, positions, energy, forces,
        sampler=np.full(n_conf, "etkdg", dtype=object),
    )


@pytest.fixture(scope="session")
def small_records() -> list[MoleculeRecord]:
    """Three small molecules x three labelled conformers."""
    return [labelled_record(s, 3, seed=i) for i, s in enumerate(["CCO", "CC(=O)N", "c1ccccc1O"])]
