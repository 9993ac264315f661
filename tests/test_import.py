"""`mlipdiv import`: each reader on small files written in the public layouts (native units),
formula-group splitting, flagged distortions, the extxyz round trip and every bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import labelled_record

from mlipdiv.data import ConformerStore, MoleculeRecord, QMMethod, write_store
from mlipdiv.data.identity import adjacency
from mlipdiv.data.importer import MISMATCH_FLAG, import_dataset
from mlipdiv.data.store import export_extxyz

# Published constants, written out so that the test checks the package's conversions.
HARTREE_EV = 27.211386245988
BOHR_ANGSTROM = 0.529177210903


@pytest.fixture(scope="module")
def ethanol() -> MoleculeRecord:
    return labelled_record("CCO", 3, seed=0)


@pytest.fixture(scope="module")
def ether() -> MoleculeRecord:
    return labelled_record("COC", 3, seed=1)


@pytest.fixture(scope="module")
def stretched(ethanol) -> MoleculeRecord:
    """Ethanol with its C-O bond pulled to ~2.7 Angstrom (O and its H moved), GFN2-labelled."""
    numbers, positions = ethanol.atomic_numbers, ethanol.positions[0].copy()
    bonds = adjacency(numbers, positions)
    oxygen = int(np.flatnonzero(numbers == 8)[0])
    carbon = int(np.flatnonzero(bonds[oxygen] & (numbers == 6))[0])
    moved = [oxygen, *np.flatnonzero(bonds[oxygen] & (numbers == 1))]
    direction = positions[oxygen] - positions[carbon]
    positions[moved] += 1.3 * direction / np.linalg.norm(direction)
    energy, forces = QMMethod("gfn2-xtb").label_many(numbers, positions[None])
    return MoleculeRecord(ethanol.inchikey, ethanol.smiles, ethanol.formula, numbers,
                          positions[None], energy, forces)


def permuted(record: MoleculeRecord, order: np.ndarray) -> MoleculeRecord:
    """The same conformers with atoms in another order (as a source file might have them)."""
    return MoleculeRecord(record.inchikey, record.smiles, record.formula,
                          record.atomic_numbers[order], record.positions[:, order],
                          record.energy, record.forces[:, order])


def shuffled(record: MoleculeRecord, seed: int) -> MoleculeRecord:
    return permuted(record, np.random.default_rng(seed).permutation(record.n_atoms))


def heavy_first(record: MoleculeRecord) -> MoleculeRecord:
    """Atoms sorted by decreasing atomic number: one shared layout for isomers (ANI-1x style)."""
    return permuted(record, np.argsort(-record.atomic_numbers, kind="stable"))


def join(*records: MoleculeRecord) -> MoleculeRecord:
    first = records[0]
    return MoleculeRecord(first.inchikey, first.smiles, first.formula, first.atomic_numbers,
                          np.concatenate([r.positions for r in records]),
                          np.concatenate([r.energy for r in records]),
                          np.concatenate([r.forces for r in records]))


def atom_rows(record: MoleculeRecord) -> np.ndarray:
    """Per conformer, the (Z, x, y, z, fx, fy, fz) rows sorted: compares conformers whatever
    the atom order, and checks that forces stay attached to their atoms."""
    shape = (*record.positions.shape[:2], 1)
    numbers = np.broadcast_to(record.atomic_numbers[None, :, None], shape)
    rows = np.concatenate([numbers, record.positions, record.forces], axis=2)
    return np.array([conf[np.lexsort(conf[:, :4].T[::-1])] for conf in rows])


def assert_same_conformers(got: MoleculeRecord, expected: MoleculeRecord) -> None:
    np.testing.assert_allclose(got.energy, expected.energy, rtol=0, atol=1e-6)
    np.testing.assert_allclose(atom_rows(got), atom_rows(expected), rtol=0, atol=1e-6)


def write_spice(path: Path, groups: dict[str, MoleculeRecord], smiles: str = "CCO") -> None:
    with h5py.File(path, "w") as f:
        for name, rec in groups.items():
            g = f.create_group(name)
            g["atomic_numbers"] = rec.atomic_numbers.astype(np.int16)
            g["conformations"] = (rec.positions / BOHR_ANGSTROM).astype(np.float32)
            g["dft_total_energy"] = rec.energy / HARTREE_EV
            g["dft_total_gradient"] = (-rec.forces / (HARTREE_EV / BOHR_ANGSTROM)).astype(
                np.float32)
            g["smiles"] = np.array([smiles.encode()])
            g["subset"] = np.array([b"SPICE PubChem Set 1 Single Points Dataset v1.2"])


def load(path: Path) -> dict[str, MoleculeRecord]:
    with ConformerStore(path) as store:
        return {rec.inchikey: rec for rec in store.molecules()}


def test_spice_units_atom_order_and_flagged_distortion(tmp_path, ethanol, ether, stretched):
    src = tmp_path / "spice.h5"
    again = shuffled(ethanol, 2).subset([0, 1])  # same molecule, other atom order
    again.energy[0] = np.nan
    write_spice(src, {
        "ethanol": shuffled(join(ethanol, stretched), 1),
        "ethanol again": again,
        "dimethyl ether": shuffled(ether, 3),
    })
    summary = import_dataset(src, tmp_path / "out.h5")
    assert (summary.format, summary.n_molecules, summary.n_conformers) == ("spice", 2, 8)
    assert summary.skipped == {"non-finite coordinates, energy or forces": 1}
    assert summary.n_flagged == 1
    stored = load(tmp_path / "out.h5")
    got = stored[ethanol.inchikey]
    np.testing.assert_array_equal(got.atomic_numbers, ethanol.atomic_numbers)  # canonical
    expected = join(ethanol, stretched, ethanol.subset([1]))
    # The float32 file rounds positions/gradients; energies are float64.
    np.testing.assert_allclose(got.energy, expected.energy, atol=1e-6)
    np.testing.assert_allclose(atom_rows(got), atom_rows(expected), atol=1e-4)
    assert list(got.flags) == ["", "", "", MISMATCH_FLAG, ""]
    assert list(got.source) == [f"ethanol[{i}]" for i in range(4)] + ["ethanol again[1]"]
    np.testing.assert_allclose(atom_rows(stored[ether.inchikey]), atom_rows(ether), atol=1e-4)
    with ConformerStore(tmp_path / "out.h5") as store:
        assert store.level_of_theory.startswith("wB97M-D3(BJ)")
        assert store.attrs["energy_key"] == "dft_total_energy"


def test_qm7x_conformer_subgroups_split_isomers(tmp_path, ethanol, ether):
    src = tmp_path / "qm7x.hdf5"
    with h5py.File(src, "w") as f:
        mol = f.create_group("1")
        for isomer, rec in ((1, shuffled(ethanol, 4)), (2, shuffled(ether, 5))):
            for c in range(rec.n_conformers):
                g = mol.create_group(f"Geom-m1-i{isomer}-c{c + 1}-" + ("opt" if c == 0 else "d1"))
                g["atNUM"] = rec.atomic_numbers
                g["atXYZ"] = rec.positions[c]
                g["ePBE0+MBD"] = np.array([rec.energy[c]])
                g["totFOR"] = rec.forces[c]
        del mol["Geom-m1-i2-c3-d1"]["totFOR"]  # a conformer lacking the forces key
    summary = import_dataset(src, tmp_path / "out.h5")
    assert (summary.format, summary.n_molecules, summary.n_conformers) == ("qm7x", 2, 5)
    assert summary.skipped == {"missing key 'totFOR'": 1}
    stored = load(tmp_path / "out.h5")
    assert_same_conformers(stored[ethanol.inchikey], ethanol)
    assert_same_conformers(stored[ether.inchikey], ether.subset([0, 1]))
    assert stored[ether.inchikey].source[0] == "1/Geom-m1-i2-c1-opt"


def write_ani(path: Path, rec: MoleculeRecord, extra: dict[str, np.ndarray] | None = None):
    with h5py.File(path, "w") as f:
        g = f.create_group("C2H6O")
        g["atomic_numbers"] = rec.atomic_numbers.astype(np.uint8)
        g["coordinates"] = rec.positions
        g["wb97x_dz.energy"] = rec.energy / HARTREE_EV
        g["wb97x_dz.forces"] = rec.forces / HARTREE_EV
        for key, value in (extra or {}).items():
            g[key] = value


def test_ani1x_formula_group_splits_isomers_and_keeps_distortion(
        tmp_path, ethanol, ether, stretched):
    mixed = join(heavy_first(ethanol), heavy_first(ether), heavy_first(stretched))
    # Another level of theory present for the first two conformers only (NaN elsewhere).
    other = np.where(np.arange(7) < 2, mixed.energy / HARTREE_EV + 0.01, np.nan)
    write_ani(tmp_path / "ani.h5", mixed, {"ccsd(t)_cbs.energy": other})
    summary = import_dataset(tmp_path / "ani.h5", tmp_path / "out.h5")
    assert (summary.format, summary.n_molecules, summary.n_conformers) == ("ani1x", 2, 7)
    stored = load(tmp_path / "out.h5")
    alcohol = stored[ethanol.inchikey]
    assert_same_conformers(alcohol, join(ethanol, stretched))
    assert list(alcohol.flags) == ["", "", "", MISMATCH_FLAG]
    assert list(alcohol.source) == ["C2H6O[0]", "C2H6O[1]", "C2H6O[2]", "C2H6O[6]"]
    assert_same_conformers(stored[ether.inchikey], ether)
    assert set(stored[ether.inchikey].flags) == {""}

    summary = import_dataset(tmp_path / "ani.h5", tmp_path / "cc.h5",
                             energy_key="ccsd(t)_cbs.energy")
    assert summary.n_conformers == 2
    assert summary.skipped == {"non-finite coordinates, energy or forces": 5}
    with ConformerStore(tmp_path / "cc.h5") as store:
        assert "ccsd(t)_cbs.energy" in store.level_of_theory
        np.testing.assert_allclose(store.molecule(ethanol.inchikey).energy,
                                   ethanol.energy[:2] + 0.01 * HARTREE_EV, atol=1e-6)


def test_store_extxyz_store_round_trip(tmp_path, ethanol, ether, stretched):
    flagged = join(ethanol, stretched)
    flagged.flags = np.array(["", "", "", MISMATCH_FLAG], dtype=object)
    flagged.sampler = np.array(["etkdg", "etkdg", "md", "md"], dtype=object)
    flagged.temperature = np.array([np.nan, np.nan, 300.0, 300.0])
    write_store(tmp_path / "a.h5", [flagged, ether], "GFN2-xTB (tblite)")
    with ConformerStore(tmp_path / "a.h5") as store:
        export_extxyz(store, tmp_path / "a.xyz")
    summary = import_dataset(tmp_path / "a.xyz", tmp_path / "b.h5")
    assert (summary.format, summary.n_molecules, summary.n_conformers) == ("extxyz", 2, 7)
    before, after = load(tmp_path / "a.h5"), load(tmp_path / "b.h5")
    assert before.keys() == after.keys()
    for key, rec in before.items():
        assert_same_conformers(after[key], rec)
        for name in ("sampler", "flags"):
            assert list(getattr(after[key], name)) == list(getattr(rec, name))
        np.testing.assert_array_equal(after[key].temperature, rec.temperature)


def test_asedb_reader_calculator_and_named_keys(tmp_path, ether):
    import ase.db

    rec = shuffled(ether, 6)
    with ase.db.connect(tmp_path / "frames.db") as db:
        for atoms, energy in zip(rec.to_atoms(), rec.energy, strict=True):
            db.write(atoms, ref_energy=float(energy) + 1.0,
                     data={"ref_forces": atoms.get_forces() * 2})
    summary = import_dataset(tmp_path / "frames.db", tmp_path / "out.h5")
    assert (summary.format, summary.n_molecules, summary.n_conformers) == ("asedb", 1, 3)
    assert_same_conformers(load(tmp_path / "out.h5")[ether.inchikey], ether)
    import_dataset(tmp_path / "frames.db", tmp_path / "ref.h5", energy_key="ref_energy",
                   forces_key="ref_forces")
    got = load(tmp_path / "ref.h5")[ether.inchikey]
    np.testing.assert_allclose(got.energy, ether.energy + 1.0, atol=1e-9)
    np.testing.assert_allclose(np.sort(np.abs(got.forces).ravel()),
                               np.sort(np.abs(2 * ether.forces).ravel()), atol=1e-9)


# ---------------------------------------------------------------- bad input through the CLI
def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from mlipdiv.cli import main

    monkeypatch.setattr(sys, "argv", ["mlipdiv", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


def _truncated(path: Path, ethanol) -> None:
    write_spice(path, {"ethanol": ethanol})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _group_edit(edit):
    def make(path: Path, ethanol) -> None:
        write_spice(path, {"ethanol": ethanol, "second": ethanol})
        with h5py.File(path, "a") as f:
            edit(f["second"])
    return make


def _replace(name, value):
    def edit(group):
        del group[name]
        if value is not None:
            group[name] = value
    return edit


BAD_INPUTS = {
    "truncated.h5": (_truncated, "not a readable HDF5 file"),
    "not_hdf5.h5": (lambda p, r: p.write_text("energy,forces\n1,2\n"), "not a readable HDF5"),
    "missing_key.h5": (_group_edit(_replace("conformations", None)),
                       "group second: missing key 'conformations'"),
    "shape.h5": (_group_edit(_replace("dft_total_gradient", np.zeros((3, 4, 3)))),
                 "group second: forces 'dft_total_gradient' shape (3, 4, 3)"),
    "nan.h5": (_group_edit(_replace("dft_total_energy", np.full(3, np.nan))), None),
    "unknown_z.h5": (_group_edit(_replace("atomic_numbers", np.full(9, 150))),
                     "group second: unknown atomic number(s) [150]"),
    "empty.xyz": (lambda p, r: p.write_text(""), "no frames"),
    "garbage.xyz": (lambda p, r: p.write_text("3\nnot a comment\nC 0 0\nH x y z\n"),
                    "frame 0: not valid extxyz"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_error_and_keeps_output(
        tmp_path, monkeypatch, capsys, name, ethanol):
    make, message = BAD_INPUTS[name]
    src = tmp_path / name
    make(src, ethanol)
    if name == "nan.h5":  # every conformer of the file is garbage: an error, not an empty store
        with h5py.File(src, "a") as f:
            _replace("dft_total_energy", np.full(3, np.inf))(f["ethanol"])
        message = "nothing to import (non-finite coordinates, energy or forces: 6)"
    out = tmp_path / "existing.h5"
    write_store(out, [ethanol], "GFN2-xTB (tblite)")
    before = out.read_bytes()
    code, err = run_cli(monkeypatch, capsys, "import", str(src), "--out", str(out))
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(src) in err and message in err
    assert out.read_bytes() == before
    assert not [p for p in out.parent.iterdir() if ".tmp" in p.name]


def test_unknown_energy_key_is_an_error(tmp_path, monkeypatch, capsys, ethanol):
    write_spice(tmp_path / "s.h5", {"ethanol": ethanol})
    code, err = run_cli(monkeypatch, capsys, "import", str(tmp_path / "s.h5"), "--out",
                        str(tmp_path / "o.h5"), "--energy-key", "wb97x_energy")
    assert code == 2 and "missing key 'wb97x_energy': 3" in err
    assert not (tmp_path / "o.h5").exists()


def test_console_script_imports_and_prints_json(tmp_path, ethanol):
    import json

    write_spice(tmp_path / "s.h5", {"ethanol": ethanol})
    exe = Path(sys.executable).with_name("mlipdiv")
    done = subprocess.run([str(exe), "import", str(tmp_path / "s.h5"), "--format", "spice",
                           "--out", str(tmp_path / "o.h5"), "--json"],
                          capture_output=True, text=True, check=True)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["n_molecules"], summary["n_conformers"], summary["n_skipped"]) == (1, 3, 0)
