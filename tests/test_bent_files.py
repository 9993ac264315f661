"""Real files that bend the rules (issue 20): a bond scan in the ANI-1 layout with forces and
high-energy conformers, the same dissociation as an extxyz MEP and an ASE trajectory, mobile-H
tautomers that share one standard InChIKey, a strained cage whose bond orders RDKit cannot
assign, and force keys a file holds but the import does not read."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from rdkit import Chem
from rdkit.Chem import AllChem

from mlipdiv.data import ConformerStore, QMMethod
from mlipdiv.data.formats import detect_format
from mlipdiv.data.identity import PerceptionError, perceive
from mlipdiv.data.importer import MISMATCH_FLAG, UNASSIGNED_FLAG, import_dataset
from mlipdiv.errors import FieldError

# Published constants, written out so that the tests check the package's conversions.
HARTREE_EV = 27.211386245988
BOHR_ANGSTROM = 0.529177210903
HARTREE_PER_BOHR = HARTREE_EV / BOHR_ANGSTROM
DISTANCES = np.round(np.arange(1.0, 4.91, 0.1), 2)  # C-C, Angstrom
BROKEN = DISTANCES > 1.85  # past 1.25 x the covalent radius sum (1.9 A) and 1.2 x 1.53 A
REAL = Path(__file__).resolve().parents[2] / "shared" / "realdata"
if not REAL.is_dir():
    REAL = Path("/work/shared/realdata")


def mmff_geometry(smiles: str, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=seed) == 0
    AllChem.MMFFOptimizeMolecule(mol)
    return (np.array([a.GetAtomicNum() for a in mol.GetAtoms()]),
            mol.GetConformer().GetPositions())


@pytest.fixture(scope="module")
def scan() -> dict:
    """Ethane's C-C bond scanned from 1.0 to 4.9 A (one methyl moved along the bond),
    labelled with GFN2-xTB (eV, eV/A)."""
    numbers, start = mmff_geometry("CC", seed=1)
    axis = start[1] - start[0]
    length = np.linalg.norm(axis)
    moved = [1] + [k for k in range(len(numbers)) if numbers[k] == 1
                   and np.linalg.norm(start[k] - start[1]) < 1.2]
    positions = []
    for d in DISTANCES:
        p = start.copy()
        p[moved] += (d - length) * axis / length
        positions.append(p)
    positions = np.array(positions)
    energy, forces = QMMethod("gfn2-xtb").label_many(numbers, positions)
    return {"numbers": numbers, "positions": positions, "energy": energy, "forces": forces}


def write_ani1_scan(path: Path, scan: dict, idx=slice(None), high_energy: int = 0) -> None:
    """The ANI-1 layout (pyanitools) with forces in Hartree/Bohr, and `high_energy`
    conformers (the first scan points, shaken) in coordinatesHE/energiesHE/forcesHE."""
    symbols = np.array([{1: b"H", 6: b"C"}[int(z)] for z in scan["numbers"]])
    with h5py.File(path, "w") as f:
        g = f.create_group("gdb11_s02").create_group("gdb11_s02-0")
        g["species"] = symbols
        g["coordinates"] = scan["positions"][idx]
        g["energies"] = scan["energy"][idx] / HARTREE_EV
        g["forces"] = scan["forces"][idx] / HARTREE_PER_BOHR
        g["smiles"] = np.array([c.encode() for c in "CC"])
        he = scan["positions"][5:5 + high_energy] + 0.03
        if high_energy:
            e_he, f_he = QMMethod("gfn2-xtb").label_many(scan["numbers"], he)
        else:
            e_he, f_he = np.zeros(0), np.zeros((0, len(symbols), 3))
        g["coordinatesHE"] = he.reshape(-1, len(symbols), 3)
        g["energiesHE"] = e_he / HARTREE_EV
        g["forcesHE"] = f_he / HARTREE_PER_BOHR


def frames(scan: dict, idx=None) -> list[Atoms]:
    out = []
    for k in range(len(scan["positions"])) if idx is None else idx:
        atoms = Atoms(numbers=scan["numbers"], positions=scan["positions"][k])
        atoms.calc = SinglePointCalculator(atoms, energy=scan["energy"][k],
                                           forces=scan["forces"][k])
        out.append(atoms)
    return out


def only_molecule(path: Path):
    with ConformerStore(path) as store:
        records = list(store.molecules())
    assert len(records) == 1, [r.smiles for r in records]
    return records[0]


def source_index(source: str) -> int:
    return int(source.rsplit("[", 1)[-1].rstrip("]") if "[" in source else source.rsplit(":")[-1])


def by_source(record) -> dict[int, tuple]:
    """Scan index -> (flagged, energy, forces as sorted (Z, f) rows) of a store molecule."""
    out = {}
    for k, source in enumerate(record.source):
        if "/HE[" in source:
            continue
        rows = np.column_stack([record.atomic_numbers, record.forces[k]])
        out[source_index(source)] = (MISMATCH_FLAG in record.flags[k].split(","),
                                     record.energy[k], rows[np.lexsort(rows.T[::-1])])
    return out


def sorted_force_rows(numbers, forces) -> np.ndarray:
    rows = np.column_stack([numbers, forces])
    return rows[np.lexsort(rows.T[::-1])]


def test_ani1_bond_scan_is_one_molecule_flagged_with_forces_and_high_energy(tmp_path, scan):
    path = tmp_path / "scan.h5"
    write_ani1_scan(path, scan, high_energy=3)
    assert detect_format(path) == "ani1"
    summary = import_dataset(path, tmp_path / "s.h5")
    assert (summary.n_molecules, summary.n_conformers) == (1, len(DISTANCES) + 3)
    assert summary.units["forces"] == "hartree/bohr" and summary.n_energy_only == 0
    record = only_molecule(tmp_path / "s.h5")
    assert record.smiles == "CC"  # never [CH3+].[CH3-]
    got = by_source(record)
    assert sorted(got) == list(range(len(DISTANCES)))
    np.testing.assert_array_equal([got[k][0] for k in sorted(got)], BROKEN)
    for k, (_, energy, rows) in got.items():
        assert energy == pytest.approx(scan["energy"][k], abs=1e-6)
        np.testing.assert_allclose(rows, sorted_force_rows(scan["numbers"], scan["forces"][k]),
                                   atol=1e-6)
    he = [k for k, s in enumerate(record.source) if "/HE[" in s]
    assert len(he) == 3 and set(record.sampler[he]) == {"ani1-high-energy"}

    # --forces-unit is accepted by the ani1 layout (its derivatives differ); other unit flags
    # stay refused
    summary = import_dataset(path, tmp_path / "t.h5", forces_unit="hartree/angstrom")
    assert summary.units["forces"] == "hartree/angstrom"
    ratio = only_molecule(tmp_path / "t.h5").forces[0] / record.forces[0]
    np.testing.assert_allclose(ratio[np.isfinite(ratio) & (np.abs(record.forces[0]) > 1e-3)],
                               BOHR_ANGSTROM, rtol=1e-6)
    with pytest.raises(FieldError, match="fixes its units"):
        import_dataset(path, tmp_path / "u.h5", energy_unit="eV")


def test_compressed_bonds_are_not_refused_by_the_force_limit(tmp_path, scan):
    # C-C 1.0-1.2 A: RMS force components of 6-19 eV/A, real, not a unit error
    rms = np.sqrt((scan["forces"][:3] ** 2).mean(axis=(1, 2)))
    assert np.median(rms) > 10
    write_ani1_scan(tmp_path / "short.h5", scan, idx=slice(0, 3))
    summary = import_dataset(tmp_path / "short.h5", tmp_path / "s.h5")
    assert (summary.n_conformers, summary.n_flagged) == (3, 0)


def test_extxyz_mep_and_traj_flag_like_the_ani1_scan(tmp_path, scan):
    from ase.io import write
    from ase.io.trajectory import Trajectory

    write(tmp_path / "mep.extxyz", frames(scan))
    with Trajectory(tmp_path / "mep.traj", "w") as trajectory:
        for atoms in frames(scan):
            trajectory.write(atoms)
    reversed_frames = frames(scan, idx=range(len(DISTANCES) - 1, -1, -1))  # broken first
    write(tmp_path / "reversed.extxyz", reversed_frames)
    assert detect_format(tmp_path / "mep.traj") == "traj"
    for name in ("mep.extxyz", "mep.traj", "reversed.extxyz"):
        summary = import_dataset(tmp_path / name, tmp_path / f"{name}.h5")
        assert (summary.n_molecules, summary.n_flagged) == (1, int(BROKEN.sum())), name
        record = only_molecule(tmp_path / f"{name}.h5")
        assert record.smiles == "CC"
        got = by_source(record)
        if name == "reversed.extxyz":
            got = {len(DISTANCES) - 1 - k: v for k, v in got.items()}
        np.testing.assert_array_equal([got[k][0] for k in sorted(got)], BROKEN)
        for k, (_, energy, rows) in got.items():
            assert energy == pytest.approx(scan["energy"][k], abs=1e-6)
            np.testing.assert_allclose(
                rows, sorted_force_rows(scan["numbers"], scan["forces"][k]), atol=1e-6)


def test_traj_damaged_is_one_line_error(tmp_path):
    from mlipdiv.errors import MlipdivError

    (tmp_path / "bad.traj").write_bytes(b"- of UlmASE-Trajectory  garbage")
    with pytest.raises(MlipdivError, match="not a readable ASE trajectory"):
        import_dataset(tmp_path / "bad.traj", tmp_path / "o.h5")
    assert not (tmp_path / "o.h5").exists()


def test_tautomers_sharing_an_inchikey_are_kept_apart(tmp_path):
    from ase.io import write

    # the N-H tautomers of 4-methylimidazole: one standard InChIKey, two bond graphs, written
    # in the same element order so that they share one run of frames
    written = []
    for smiles in ("Cc1c[nH]cn1", "Cc1cnc[nH]1"):
        numbers, positions = mmff_geometry(smiles)
        written.append((numbers, positions))
    assert (written[0][0] == written[1][0]).all()
    keys = {perceive(n, p).inchikey for n, p in written}
    assert len(keys) == 1
    (key,) = keys
    images = [Atoms(numbers=n, positions=p + 0.01 * k) for n, p in written for k in range(2)]
    write(tmp_path / "tautomers.xyz", images, format="extxyz")
    summary = import_dataset(tmp_path / "tautomers.xyz", tmp_path / "t.h5")
    assert (summary.n_molecules, summary.n_conformers, summary.n_flagged) == (2, 4, 0)
    with ConformerStore(tmp_path / "t.h5") as store:
        stored = sorted(store.inchikeys)
        assert stored[0] == key and stored[1].startswith(f"{key}-") and len(stored[1]) == 36
        for record in store.molecules():
            assert record.n_conformers == 2
            graphs = {perceive(record.atomic_numbers, p).smiles for p in record.positions}
            assert len(graphs) == 1  # one bond graph per store molecule


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/realdata is absent")
def test_real_spice_tautomer_groups_kept_apart(tmp_path):
    # 4-methylimidazole's two N-H tautomers are two groups of SPICE's DES monomers
    summary = import_dataset(REAL / "spice-dataset_des-monomers.hdf5", tmp_path / "d.h5")
    # every conformer as before (18,900); 3 molecules more: 3 tautomer or protonation pairs
    assert (summary.n_molecules, summary.n_conformers) == (378, 18900)
    with ConformerStore(tmp_path / "d.h5") as store:
        variants = [k for k in store.inchikeys if k.startswith("XLSZMDLNRCVEIJ-UHFFFAOYSA-N")]
        assert len(variants) == 2
        assert {store.n_conformers(k) for k in variants} == {50}


def test_cage_whose_bond_orders_rdkit_cannot_assign_is_kept(tmp_path):
    import ase.db

    cage = mmff_geometry("CCC12OC3CC1C3O2")  # C7H10O2, as in ISO17
    with pytest.raises(PerceptionError):
        perceive(*cage)
    other = mmff_geometry("CC1C(=O)CCCC1=O")  # another C7H10O2 isomer
    with ase.db.connect(tmp_path / "iso.db") as db:
        for numbers, positions in (cage, other):
            db.write(Atoms(numbers=numbers, positions=positions))
    summary = import_dataset(tmp_path / "iso.db", tmp_path / "i.h5")
    assert (summary.n_molecules, summary.n_conformers, summary.skipped) == (2, 2, {})
    with ConformerStore(tmp_path / "i.h5") as store:
        flags = {r.smiles: r.flags[0] for r in store.molecules()}
    assert flags == {"CC[C@@]12O[C@@H]3[C@@H](C[C@@H]31)O2": UNASSIGNED_FLAG,
                     "CC1C(=O)CCCC1=O": ""}


def test_force_keys_that_are_not_read_are_named(tmp_path, scan):
    from ase.io import write

    images = []
    for atoms in frames(scan, idx=range(3)):
        plain = Atoms(numbers=atoms.numbers, positions=atoms.positions)
        plain.info["energy"] = float(atoms.calc.results["energy"])
        plain.arrays["dft_forces"] = atoms.calc.results["forces"]
        images.append(plain)
    write(tmp_path / "f.extxyz", images)
    summary = import_dataset(tmp_path / "f.extxyz", tmp_path / "a.h5")
    assert summary.n_energy_only == 3
    assert any("'dft_forces'" in m and "--forces-key dft_forces" in m
               for m in summary.messages), summary.messages
    summary = import_dataset(tmp_path / "f.extxyz", tmp_path / "b.h5", forces_key="dft_forces")
    assert summary.n_energy_only == 0
    assert not any("dft_forces" in m for m in summary.messages)
