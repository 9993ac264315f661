"""Readers for the layouts users bring (issue 10): each on the real public files in
../shared/realdata (skipped when absent, as in a user's clone) and on small files written here
in the same layouts; unit flags, file units and the plausibility check; one-conformer
molecules; SMILES templates; positions-only import -> label -> a trainable store; valid JSON."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import embed, labelled_record

from mlipdiv.data import ConformerStore, MoleculeRecord
from mlipdiv.data.formats import detect_format
from mlipdiv.data.importer import MISMATCH_FLAG, import_dataset
from mlipdiv.errors import MlipdivError

# Published constants, written out so that the tests check the package's conversions.
HARTREE_EV = 27.211386245988
BOHR_ANGSTROM = 0.529177210903
KCAL_EV = 0.0433641043


def _realdata() -> Path | None:
    for candidate in (Path(__file__).resolve().parents[2] / "shared" / "realdata",
                      Path("/work/shared/realdata")):
        if candidate.is_dir():
            return candidate
    return None


REAL = _realdata()
needs_real = pytest.mark.skipif(REAL is None, reason="../shared/realdata is absent")


@pytest.fixture(scope="module")
def ethanol() -> MoleculeRecord:
    return labelled_record("CCO", 2, seed=0)


@pytest.fixture(scope="module")
def ether() -> MoleculeRecord:
    return labelled_record("COC", 2, seed=1)


def heavy_first(record: MoleculeRecord) -> MoleculeRecord:
    """Atoms sorted by decreasing atomic number: isomers share one layout (ANI-1x style)."""
    order = np.argsort(-record.atomic_numbers, kind="stable")
    return MoleculeRecord(record.inchikey, record.smiles, record.formula,
                          record.atomic_numbers[order], record.positions[:, order],
                          record.energy, record.forces[:, order])


def load(path: Path) -> dict[str, MoleculeRecord]:
    with ConformerStore(path) as store:
        return {rec.inchikey: rec for rec in store.molecules()}


def sorted_rows(numbers, positions, forces=None) -> np.ndarray:
    """Per conformer, (Z, xyz[, f]) rows sorted: compares whatever the atom order."""
    shape = (*positions.shape[:2], 1)
    parts = [np.broadcast_to(np.asarray(numbers)[None, :, None], shape), positions]
    if forces is not None:
        parts.append(forces)
    rows = np.concatenate(parts, axis=2)
    return np.array([conf[np.lexsort(conf[:, :4].T[::-1])] for conf in rows])


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from mlipdiv.cli import main

    monkeypatch.setattr(sys, "argv", ["mlipdiv", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(monkeypatch, capsys, *args: str) -> str:
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------- real public files
@needs_real
def test_real_spice_na_complex_imported_through_its_smiles(tmp_path):
    src = REAL / "modelforge_SPICE-1.1.4_n2.hdf5"
    summary = import_dataset(src, tmp_path / "o.h5")
    assert (summary.format, summary.n_molecules, summary.n_conformers, summary.n_skipped) == (
        "spice", 2, 55, 0)
    stored = load(tmp_path / "o.h5")
    sodium = stored["TVPOLNQDWCWUKJ-UHFFFAOYSA-N"]  # C#C.[Na+], from the mapped SMILES
    assert sodium.smiles == "C#C.[Na+]" and set(sodium.flags) == {""}
    with h5py.File(src) as f:
        group = f["C#C.[Na+]"]
        np.testing.assert_allclose(sodium.energy, group["dft_total_energy"][()] * HARTREE_EV,
                                   rtol=0, atol=1e-6)
        expected = sorted_rows(group["atomic_numbers"][()],
                               group["conformations"][()] * BOHR_ANGSTROM,
                               -group["dft_total_gradient"][()] * HARTREE_EV / BOHR_ANGSTROM)
    np.testing.assert_allclose(sorted_rows(sodium.atomic_numbers, sodium.positions,
                                           sodium.forces), expected, atol=1e-5)
    assert any("read from the file" in m for m in summary.messages)


@needs_real
def test_real_ani1_ani2x_and_ani1x(tmp_path):
    summary = import_dataset(REAL / "alkane_ani1core_gdb_HC_s01.h5", tmp_path / "a1.h5")
    assert (summary.format, summary.n_molecules, summary.n_conformers,
            summary.n_energy_only) == ("ani1", 1, 5400, 5400)
    methane = load(tmp_path / "a1.h5")["VNWKTOKETHGBQD-UHFFFAOYSA-N"]
    assert methane.forces is None
    with h5py.File(REAL / "alkane_ani1core_gdb_HC_s01.h5") as f:
        energies = f["gdb11_s01/gdb11_s01-0/energies"][()]
    np.testing.assert_allclose(methane.energy, energies * HARTREE_EV, rtol=0, atol=1e-6)

    summary = import_dataset(REAL / "modelforge_ani2x_minimal.hdf5", tmp_path / "a2.h5")
    assert (summary.format, summary.n_molecules, summary.n_conformers) == ("ani2x", 10, 5706)
    with h5py.File(REAL / "modelforge_ani2x_minimal.hdf5") as f:
        total = f["002/energies"][()].sum() * HARTREE_EV
    assert sum(r.energy.sum() for r in load(tmp_path / "a2.h5").values()) == pytest.approx(
        total, rel=1e-12)

    summary = import_dataset(REAL / "modelforge_ani1_n5.hdf5", tmp_path / "a1x.h5")
    assert (summary.format, summary.n_conformers) == ("ani1x", 8)


@needs_real
def test_real_md17_layouts_in_kcal_per_mol(tmp_path, monkeypatch, capsys):
    npz = REAL / "mlff_examples_ethanol.npz"
    summary = import_dataset(npz, tmp_path / "npz.h5")
    assert (summary.format, summary.n_molecules, summary.n_conformers) == ("npz", 1, 2000)
    assert summary.units["energy"] == "kcal/mol"
    data = np.load(npz)
    (got,) = load(tmp_path / "npz.h5").values()
    np.testing.assert_allclose(got.energy, data["E"].ravel() * KCAL_EV, rtol=0, atol=1e-9)
    np.testing.assert_allclose(
        sorted_rows(got.atomic_numbers, got.positions[:5], got.forces[:5]),
        sorted_rows(data["z"], data["R"][:5], data["F"][:5] * KCAL_EV), atol=1e-9)
    err = one_line_error(monkeypatch, capsys, "import", str(npz), "--out",
                         str(tmp_path / "x.h5"), "--energy-unit", "eV")
    assert "likely kcal/mol: pass --energy-unit kcal/mol" in err

    summary = import_dataset(REAL / "schnetpack_ethanol_snip.xyz", tmp_path / "xyz.h5")
    assert (summary.format, summary.n_conformers) == ("md17xyz", 3)
    (got,) = load(tmp_path / "xyz.h5").values()
    assert got.energy[0] == pytest.approx(-97208.40600498248 * KCAL_EV, abs=1e-9)

    db = REAL / "schnetpack_test_ethanol.db"
    err = one_line_error(monkeypatch, capsys, "import", str(db), "--out", str(tmp_path / "d.h5"))
    assert "row 1" in err and "pass --energy-unit kcal/mol" in err
    summary = import_dataset(db, tmp_path / "db.h5", energy_unit="kcal/mol")
    assert summary.n_conformers == 20 and summary.units["forces"] == "kcal/mol/angstrom"
    import ase.db

    with ase.db.connect(db) as con:
        row = con.get(id=1)
        energy, forces = float(row.data["energy"][0]), row.data["forces"]
    (got,) = load(tmp_path / "db.h5").values()
    assert got.energy[0] == pytest.approx(energy * KCAL_EV, abs=1e-9)
    np.testing.assert_allclose(np.sort(got.forces[0].ravel()),
                               np.sort(forces.ravel() * KCAL_EV), atol=1e-9)


@needs_real
def test_real_qm9_tmqm_extxyz(tmp_path, monkeypatch, capsys):
    summary = import_dataset(REAL / "modelforge_dsgdb9nsd_000001.xyz", tmp_path / "q.h5")
    assert (summary.format, summary.n_molecules, summary.n_energy_only) == ("qm9", 1, 1)
    (got,) = load(tmp_path / "q.h5").values()
    assert got.inchikey == "VNWKTOKETHGBQD-UHFFFAOYSA-N"
    assert got.energy[0] == pytest.approx(-40.47893 * HARTREE_EV, abs=1e-9)
    tmqm = REAL / "modelforge_tmqm_two_configs.xyz"
    err = one_line_error(monkeypatch, capsys, "import", str(tmqm), "--out", str(tmp_path / "t.h5"))
    assert "nothing to import" in err and "unsupported element" in err
    summary = import_dataset(REAL / "mace_test_one_mol.xyz", tmp_path / "m.h5")
    assert (summary.format, summary.n_molecules, summary.n_conformers) == ("extxyz", 1, 1)


@needs_real
def test_real_spice_pipeline_positions_only(tmp_path, monkeypatch, capsys):
    src = REAL / "spice-dataset_ions.hdf5"
    summary = import_dataset(src, tmp_path / "ions.h5")
    assert (summary.format, summary.n_molecules, summary.n_conformers,
            summary.n_unlabelled) == ("spice-input", 28, 1428, 1428)
    assert summary.units == {"length": "nm"}
    stored = load(tmp_path / "ions.h5")
    kbr = next(r for r in stored.values() if r.smiles == "[Br-].[K+]")
    with h5py.File(src) as f:
        nm = f["[K+:1].[Br-:2]/conformations"][()]
    assert kbr.energy is None
    np.testing.assert_allclose(np.sort(np.linalg.norm(kbr.positions[:, 0] - kbr.positions[:, 1],
                                                      axis=1)),
                               np.sort(10 * np.linalg.norm(nm[:, 0] - nm[:, 1], axis=1)),
                               atol=1e-5)
    code, out, _ = run_cli(monkeypatch, capsys, "info", str(tmp_path / "ions.h5"), "--json")
    info = json.loads(out, parse_constant=_no_nan)
    assert info["labels"] == {"energy+forces": 0, "energy": 0, "none": 1428}


def _no_nan(value):
    raise AssertionError(f"invalid JSON constant {value}")


# ---------------------------------------------------------------- small files, same layouts
def test_npz_variants_and_units(tmp_path, monkeypatch, capsys, ethanol):
    rec = ethanol
    e_kcal, f_kcal = rec.energy / KCAL_EV, rec.forces / KCAL_EV
    np.savez(tmp_path / "sgdml.npz", R=rec.positions, z=rec.atomic_numbers, E=e_kcal[:, None],
             F=f_kcal, e_unit=np.array("kcal/mol"), r_unit=np.array("Ang"),
             theory=np.array("GFN2-xTB"))
    np.savez(tmp_path / "rmd17.npz", coords=rec.positions, nuclear_charges=rec.atomic_numbers,
             energies=e_kcal, forces=f_kcal)
    np.savez(tmp_path / "plain.npz", positions=rec.positions, atomic_numbers=rec.atomic_numbers,
             energy=rec.energy, forces=rec.forces)
    for name in ("sgdml", "rmd17"):
        summary = import_dataset(tmp_path / f"{name}.npz", tmp_path / f"{name}.h5")
        assert summary.format == "npz" and summary.n_conformers == 2
        got = load(tmp_path / f"{name}.h5")[rec.inchikey]
        np.testing.assert_allclose(got.energy, rec.energy, atol=1e-9)
        np.testing.assert_allclose(got.forces, rec.forces, atol=1e-9)
    err = one_line_error(monkeypatch, capsys, "import", str(tmp_path / "plain.npz"), "--out",
                         str(tmp_path / "p.h5"))
    assert "carry no unit" in err and "--energy-unit" in err
    import_dataset(tmp_path / "plain.npz", tmp_path / "p.h5", energy_unit="eV")
    np.testing.assert_allclose(load(tmp_path / "p.h5")[rec.inchikey].energy, rec.energy,
                               atol=1e-12)


def test_extxyz_in_kcal_refused_without_flag_exact_with_it(tmp_path, monkeypatch, capsys,
                                                           ethanol):
    from ase.io import write

    frames = ethanol.to_atoms()
    for atoms, e, f in zip(frames, ethanol.energy, ethanol.forces, strict=True):
        atoms.calc.results.update(energy=e / KCAL_EV, forces=f / KCAL_EV)
    write(tmp_path / "kcal.extxyz", frames, format="extxyz")
    err = one_line_error(monkeypatch, capsys, "import", str(tmp_path / "kcal.extxyz"),
                         "--out", str(tmp_path / "o.h5"))
    assert "kcal.extxyz:0" in err and "likely kcal/mol: pass --energy-unit kcal/mol" in err
    assert not (tmp_path / "o.h5").exists()
    code, out, _ = run_cli(monkeypatch, capsys, "import", str(tmp_path / "kcal.extxyz"), "--out",
                           str(tmp_path / "o.h5"), "--energy-unit", "kcal/mol", "--json")
    assert code == 0 and json.loads(out)["units"]["forces"] == "kcal/mol/angstrom"
    got = load(tmp_path / "o.h5")[ethanol.inchikey]
    np.testing.assert_allclose(got.energy, ethanol.energy, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got.forces, ethanol.forces, rtol=0, atol=1e-9)
    # forces in another unit than energy / length
    for atoms, f in zip(frames, ethanol.forces, strict=True):
        atoms.calc.results["forces"] = f / (HARTREE_EV / BOHR_ANGSTROM)
    write(tmp_path / "mixed.extxyz", frames, format="extxyz")
    err = one_line_error(monkeypatch, capsys, "import", str(tmp_path / "mixed.extxyz"), "--out",
                         str(tmp_path / "m.h5"), "--energy-unit", "kcal/mol", "--forces-unit",
                         "furlong")
    assert "--forces-unit furlong" in err
    import_dataset(tmp_path / "mixed.extxyz", tmp_path / "m.h5", energy_unit="kcal/mol",
                   forces_unit="hartree/bohr")
    np.testing.assert_allclose(load(tmp_path / "m.h5")[ethanol.inchikey].forces,
                               ethanol.forces, atol=1e-6)  # extxyz's 8 decimals of Ha/Bohr


def test_unit_flags_refused_where_layout_fixes_units_and_file_units_win(
        tmp_path, monkeypatch, capsys, ethanol):
    with h5py.File(tmp_path / "spice.h5", "w") as f:
        g = f.create_group("ethanol")
        g["atomic_numbers"] = ethanol.atomic_numbers
        g["conformations"] = ethanol.positions  # Angstrom, as its attribute says
        g["conformations"].attrs["units"] = "angstrom"
        g["dft_total_energy"] = ethanol.energy / HARTREE_EV
        g["dft_total_gradient"] = -ethanol.forces / HARTREE_EV  # Hartree/Angstrom
        g["dft_total_gradient"].attrs["units"] = "hartree/angstrom"
        g["smiles"] = np.array([b"CCO"])
    err = one_line_error(monkeypatch, capsys, "import", str(tmp_path / "spice.h5"), "--out",
                         str(tmp_path / "o.h5"), "--length-unit", "nm")
    assert "--length-unit nm: format spice fixes its units" in err
    summary = import_dataset(tmp_path / "spice.h5", tmp_path / "o.h5")
    assert any("'conformations': units 'angstrom' read from the file (they win over the "
               "spice default bohr)" in m for m in summary.messages)
    got = load(tmp_path / "o.h5")[ethanol.inchikey]
    np.testing.assert_allclose(got.positions, ethanol.positions, atol=1e-9)
    np.testing.assert_allclose(got.forces, ethanol.forces, atol=1e-9)


def write_ani1(path: Path, records: list[MoleculeRecord]) -> None:
    from ase.data import chemical_symbols

    with h5py.File(path, "w") as f:
        top = f.create_group("gdb11_s03")
        for k, rec in enumerate(records):
            g = top.create_group(f"gdb11_s03-{k}")
            g["species"] = np.array([chemical_symbols[z].encode() for z in rec.atomic_numbers])
            g["coordinates"] = rec.positions.astype(np.float32)
            g["energies"] = rec.energy / HARTREE_EV
            g["smiles"] = np.array([c.encode() for c in rec.smiles])


def test_ani1_and_ani2x_layouts(tmp_path, ethanol, ether):
    write_ani1(tmp_path / "ani1.h5", [ethanol, ether])
    assert detect_format(tmp_path / "ani1.h5") == "ani1"
    summary = import_dataset(tmp_path / "ani1.h5", tmp_path / "a1.h5")
    assert (summary.n_molecules, summary.n_energy_only) == (2, 4)
    np.testing.assert_allclose(load(tmp_path / "a1.h5")[ether.inchikey].energy, ether.energy,
                               atol=1e-6)

    a, b = heavy_first(ethanol), heavy_first(ether)  # one species row for both isomers
    with h5py.File(tmp_path / "ani2x.h5", "w") as f:
        g = f.create_group("009")
        g["species"] = np.repeat(a.atomic_numbers[None], 4, axis=0)
        g["coordinates"] = np.concatenate([a.positions, b.positions])
        g["energies"] = np.concatenate([a.energy, b.energy]) / HARTREE_EV
        g["forces"] = np.concatenate([a.forces, b.forces]) / HARTREE_EV
    summary = import_dataset(tmp_path / "ani2x.h5", tmp_path / "a2.h5")
    assert (summary.format, summary.n_molecules, summary.n_conformers) == ("ani2x", 2, 4)
    got = load(tmp_path / "a2.h5")
    np.testing.assert_allclose(got[ethanol.inchikey].forces, ethanol.forces, atol=1e-9)


def qm9_text(rec: MoleculeRecord, index: int) -> str:
    from ase.data import chemical_symbols

    props = ["1.0"] * 10 + [f"{rec.energy[0] / HARTREE_EV:.10f}"] + ["-1.0"] * 4
    atoms = "\n".join(f"{chemical_symbols[z]}\t{x:.10f}\t{y:.10f}\t{w:.10f}\t0.0"
                      for z, (x, y, w) in zip(rec.atomic_numbers, rec.positions[0], strict=True))
    return (f"{rec.n_atoms}\ngdb {index}\t" + "\t".join(props) + f"\n{atoms}\n1.0\t2.0\n"
            f"{rec.smiles}\t{rec.smiles}\nInChI=1S/x\tInChI=1S/x\n")


def test_qm9_file_directory_and_tarball(tmp_path, ethanol, ether):
    folder = tmp_path / "qm9"
    folder.mkdir()
    for k, rec in enumerate((ethanol, ether)):
        (folder / f"dsgdb9nsd_{k + 1:06d}.xyz").write_text(qm9_text(rec, k + 1))
    with tarfile.open(tmp_path / "qm9.tar.bz2", "w:bz2") as tar:
        for file in sorted(folder.iterdir()):
            data = file.read_bytes()
            info = tarfile.TarInfo(file.name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    for src in (folder, tmp_path / "qm9.tar.bz2"):
        assert detect_format(src) == "qm9"
        summary = import_dataset(src, tmp_path / "q.h5")
        assert (summary.n_molecules, summary.n_conformers, summary.n_flagged) == (2, 2, 0)
        got = load(tmp_path / "q.h5")
        assert got[ether.inchikey].energy[0] == pytest.approx(ether.energy[0], abs=1e-6)


def test_one_conformer_molecules_are_kept_apart(tmp_path, ethanol, ether):
    """ISO17-like: one structure per molecule in one run of identical atom layouts."""
    from ase.io import write

    frames = [heavy_first(ethanol).subset([0]).to_atoms()[0],
              heavy_first(ether).subset([0]).to_atoms()[0]]
    for atoms in frames:
        atoms.info.pop("inchikey"), atoms.info.pop("smiles")
    write(tmp_path / "iso.extxyz", frames, format="extxyz")
    summary = import_dataset(tmp_path / "iso.extxyz", tmp_path / "o.h5")
    assert (summary.n_molecules, summary.n_conformers, summary.n_flagged) == (2, 2, 0)
    assert set(load(tmp_path / "o.h5")) == {ethanol.inchikey, ether.inchikey}


def write_xyz(path: Path, numbers, positions, unit_factor: float = 1.0) -> None:
    from ase.data import chemical_symbols

    blocks = []
    for conf in positions:
        rows = "\n".join(f"{chemical_symbols[z]} {x:.8f} {y:.8f} {w:.8f}"
                         for z, (x, y, w) in zip(numbers, conf * unit_factor, strict=True))
        blocks.append(f"{len(numbers)}\nconformer of a molecule\n{rows}\n")
    path.write_text("\n".join(blocks))  # a blank line between frames, as tmQM has


def test_positions_only_import_label_train(tmp_path, monkeypatch, capsys):
    numbers, positions = embed("CO", 2, seed=3)
    write_xyz(tmp_path / "methanol.xyz", numbers, positions, unit_factor=0.1)  # in nm
    err = one_line_error(monkeypatch, capsys, "import", str(tmp_path / "methanol.xyz"),
                         "--out", str(tmp_path / "p.h5"))
    assert "likely nm: pass --length-unit nm" in err
    summary = import_dataset(tmp_path / "methanol.xyz", tmp_path / "p.h5", length_unit="nm")
    assert (summary.format, summary.n_conformers, summary.n_unlabelled) == ("xyz", 2, 2)
    err = one_line_error(monkeypatch, capsys, "train", "--train", str(tmp_path / "p.h5"),
                         "--valid", str(tmp_path / "p.h5"), "--model", "ani", "--size", "dev",
                         "--out", str(tmp_path / "run"))
    assert "no energy/force labels" in err and "mlipdiv label" in err
    code, _, _ = run_cli(monkeypatch, capsys, "label", str(tmp_path / "p.h5"), "--out",
                         str(tmp_path / "l.h5"))
    assert code == 0
    (got,) = load(tmp_path / "l.h5").values()
    assert got.has_forces and got.n_conformers == 2
    code, _, err = run_cli(monkeypatch, capsys, "train", "--train", str(tmp_path / "l.h5"),
                           "--valid", str(tmp_path / "l.h5"), "--model", "ani", "--size",
                           "dev", "--epochs", "2", "--out", str(tmp_path / "run"))
    assert code == 0, err
    assert (tmp_path / "run" / "member-0" / "model.pt").exists()


def test_energy_only_training_needs_the_mask_flag(tmp_path, monkeypatch, capsys, ethanol,
                                                  ether):
    write_ani1(tmp_path / "ani1.h5", [ethanol, ether])
    import_dataset(tmp_path / "ani1.h5", tmp_path / "e.h5")
    args = ["train", "--train", str(tmp_path / "e.h5"), "--valid", str(tmp_path / "e.h5"),
            "--model", "ani", "--size", "dev", "--epochs", "2", "--out", str(tmp_path / "run")]
    err = one_line_error(monkeypatch, capsys, *args)
    assert "energies without forces" in err and "--mask-missing-forces" in err
    code, _, err = run_cli(monkeypatch, capsys, *args, "--mask-missing-forces")
    assert code == 0, err
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["spec"]["masked_force_conformers"] == 8
    assert np.isfinite(record["members"][0]["history"][-1]["valid_energy_mae_mev_per_atom"])


def test_spice_input_layout_and_smiles_template_flags_contradictions(tmp_path, ethanol):
    """SPICE pipeline input: mapped SMILES gives the atoms; a stretched conformer that
    contradicts the SMILES is flagged; the second group's ion pair has no perceivable bonds."""
    from rdkit import Chem

    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    numbers, positions = embed("CCO", 2, seed=5)
    for atom in mol.GetAtoms():
        atom.SetAtomMapNum(atom.GetIdx() + 1)
    mapped = Chem.MolToSmiles(mol)
    stretched = positions[0].copy()
    oxygen = int(np.flatnonzero(numbers == 8)[0])
    stretched[oxygen] += 1.5 * (stretched[oxygen] - stretched[1]) / np.linalg.norm(
        stretched[oxygen] - stretched[1])
    with h5py.File(tmp_path / "input.h5", "w") as f:
        g = f.create_group("CCO")
        g["conformations"] = np.concatenate([positions, stretched[None]]) / 10
        g["conformations"].attrs["units"] = "nanometers"
        g["smiles"] = np.array([mapped], dtype=object)
        g = f.create_group("[Na+:1].[Cl-:2]")
        g["conformations"] = np.array([[[0, 0, 0], [0, 0, 0.28]], [[0, 0, 0], [0, 0, 0.35]]])
        g["conformations"].attrs["units"] = "nanometers"
        g["smiles"] = np.array(["[Na+:1].[Cl-:2]"], dtype=object)
    summary = import_dataset(tmp_path / "input.h5", tmp_path / "o.h5")
    assert (summary.format, summary.n_molecules, summary.n_conformers,
            summary.n_flagged) == ("spice-input", 2, 5, 1)
    got = load(tmp_path / "o.h5")
    assert list(got[ethanol.inchikey].flags) == ["", "", MISMATCH_FLAG]
    assert any(r.smiles == "[Cl-].[Na+]" and r.n_conformers == 2 for r in got.values())


def test_profile_and_info_json_are_valid_json(tmp_path, monkeypatch, capsys, ethanol, ether):
    from ase.io import write

    frames = [ethanol.subset([0]).to_atoms()[0], ether.subset([0]).to_atoms()[0]]
    write(tmp_path / "one.extxyz", frames, format="extxyz")
    import_dataset(tmp_path / "one.extxyz", tmp_path / "o.h5")
    for command in (["info"], ["profile", "--no-entropy"]):
        code, out, err = run_cli(monkeypatch, capsys, *command, str(tmp_path / "o.h5"), "--json")
        assert code == 0, err
        json.loads(out, parse_constant=_no_nan)


def test_bad_layouts_are_one_line_errors(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(MlipdivError, match="no positions/atomic-number keys"):
        import_dataset(tmp_path / "other.npz", tmp_path / "o.h5")
    (tmp_path / "bad.xyz").write_text("2\nplain\nC 0 0 0\nXx 0 0 1\n")
    with pytest.raises(MlipdivError, match="frame 0: atom 1: unknown element 'Xx'"):
        import_dataset(tmp_path / "bad.xyz", tmp_path / "o.h5")
    with h5py.File(tmp_path / "in.h5", "w") as f:
        g = f.create_group("x")
        g["conformations"] = np.zeros((1, 2, 3))
        g["smiles"] = np.array(["CO"], dtype=object)
    with pytest.raises(MlipdivError, match="group x: smiles 'CO' is not atom-mapped"):
        import_dataset(tmp_path / "in.h5", tmp_path / "o.h5")
