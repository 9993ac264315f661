"""Shared test fixtures: small real molecules embedded with RDKit and labelled with GFN2-xTB."""

from __future__ import annotations

import os

# Tiny models and single-point QM calls run fastest on one thread per process; the test suite
# (and the CLI subprocesses it starts) must not oversubscribe CI's two cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from mlipdiv.data import MoleculeRecord, QMMethod, perceive, write_store


def embed(smiles: str, n_conf: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Atomic numbers and (n_conf, n_atoms, 3) ETKDG positions for a SMILES."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed + 1  # RDKit's randomSeed 0 embeds every conformer identically
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


# Shared scaffolds (benzene, pyridine, cyclohexane), acyclic molecules and a stereo pair.
DIVERSE_SMILES = (
    "Cc1ccccc1", "CCc1ccccc1", "Oc1ccccc1", "OCc1ccccc1",
    "Cc1ccncc1", "CCc1ccncc1", "OCc1cccnc1",
    "CC1CCCCC1", "OC1CCCCC1", "CCC1CCCCC1",
    "CCCCO", "CCOCC", "CCCCN", "CC(C)CO", "C[C@H](O)CC", "C[C@@H](O)CC",
)


@pytest.fixture(scope="session")
def diverse_store(tmp_path_factory) -> Path:
    """A store of 16 small molecules x 8 GFN2-xTB-labelled ETKDG conformers."""
    records = [labelled_record(s, 8, seed=i + 1) for i, s in enumerate(DIVERSE_SMILES)]
    path = tmp_path_factory.mktemp("diverse") / "diverse.h5"
    write_store(path, records, "GFN2-xTB (tblite)")
    return path


STUDY_TOML = """
name = "tiny"
[data]
source = "store"
store = "{store}"
[split]
cf_molecules = "all"
cf_conformers = 1
st = 1
sf = 1
[fixed_budget]
budget = 12
molecules = [2, 4, 6]
[fixed_molecules]
molecules = 3
conformers = [1, 2, 4]
[design]
allow_short = true  # a rigid molecule keeps one pool conformer after CF near-duplicates go
[models]
architectures = ["ani"]
size = "dev"
[executor]
workers = 2
[advice]
weights = {{ cf = 1.0, st = 1.0 }}
"""


@pytest.fixture(scope="session")
def finished_study(diverse_store, tmp_path_factory) -> Path:
    """A dev-size study (both experiments, 6 cells, ANI dev) run end to end with the local
    process pool on `diverse_store`, report included."""
    from mlipdiv.report import write_report
    from mlipdiv.study import parse_config, run_study

    text = STUDY_TOML.format(store=diverse_store)
    out = tmp_path_factory.mktemp("study") / "study"
    write_report(run_study(parse_config(text), text, out, progress=False))
    return out


UNEVEN_SMILES = {  # 14 molecules × 10 conformers, 2 × 3
    **dict.fromkeys(("CCCCO", "CCOCC", "CCCCN", "CC(C)CO", "CCCOC", "CCCCCO", "CCCCC",
                     "CCOC(C)C", "CCCN(C)C", "CCC(C)O", "OCCCCN", "CCOCCO", "NCCO",
                     "CCCC(C)C"), 10),
    "OCc1ccccc1": 3, "CCc1ccncc1": 3}


@pytest.fixture(scope="session")
def uneven_store(tmp_path_factory) -> Path:
    """A store whose molecules hold different conformer counts: 14 × 10, 2 × 3 (as a real
    store's few molecules left with few pool conformers), GFN2-xTB labelled."""
    records = [labelled_record(s, n, seed=i + 1) for i, (s, n) in enumerate(UNEVEN_SMILES.items())]
    path = tmp_path_factory.mktemp("uneven") / "uneven.h5"
    write_store(path, records, "GFN2-xTB (tblite)")
    return path
