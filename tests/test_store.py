import h5py
import numpy as np
import pytest

from mlipdiv.data import ConformerStore, MoleculeRecord, QMMethod, write_store, write_subset
from mlipdiv.data.store import export_extxyz
from mlipdiv.data.store_writer import StoreWriter
from mlipdiv.errors import MlipdivError


def test_write_read_select_roundtrip(tmp_path, small_records):
    path = tmp_path / "s.h5"
    assert write_store(path, small_records, "GFN2-xTB (tblite)") == 9
    with ConformerStore(path) as store:
        assert len(store) == 3 and store.total_conformers() == 9
        assert store.attrs["energy_unit"] == "eV"
        key = small_records[0].inchikey
        sel = store.molecule(key, [2, 0])
        np.testing.assert_allclose(sel.energy, small_records[0].energy[[2, 0]])
        np.testing.assert_allclose(sel.forces, small_records[0].forces[[2, 0]])
        assert write_subset(store, [(key, 1), (small_records[1].inchikey, 0)],
                            tmp_path / "sub.h5") == 2
    with ConformerStore(tmp_path / "sub.h5") as sub:
        assert sub.conformer_counts() == {key: 1, small_records[1].inchikey: 1}


def test_labels_match_direct_tblite(small_records):
    rec = small_records[1]
    energy, forces = QMMethod("gfn2-xtb").label(rec.atomic_numbers, rec.positions[0])
    assert energy == pytest.approx(rec.energy[0], abs=1e-8)
    # forces are minus the gradient: a finite difference of the energy checks the sign and units
    delta = 1e-4
    shifted = rec.positions[0].copy()
    shifted[0, 0] += delta
    e_plus, _ = QMMethod("gfn2-xtb").label(rec.atomic_numbers, shifted)
    assert -(e_plus - energy) / delta == pytest.approx(forces[0, 0], rel=0.05, abs=5e-3)


def test_extxyz_export_keeps_labels(tmp_path, small_records):
    from ase.io import read

    write_store(tmp_path / "s.h5", small_records, "GFN2-xTB")
    with ConformerStore(tmp_path / "s.h5") as store:
        assert export_extxyz(store, tmp_path / "s.xyz") == 9
    frames = read(tmp_path / "s.xyz", ":")
    energies = sorted(f.get_potential_energy() for f in frames)
    expected = sorted(np.concatenate([r.energy for r in small_records]))
    np.testing.assert_allclose(energies, expected)


def test_writer_is_atomic(tmp_path, small_records):
    path = tmp_path / "s.h5"
    write_store(path, small_records[:1], "x")
    with pytest.raises(RuntimeError), StoreWriter(path, "x") as writer:
        writer.add(small_records[1])
        raise RuntimeError("crash mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]  # no temporary file left
    with ConformerStore(path) as store:
        assert store.inchikeys == [small_records[0].inchikey]


def test_bad_records_rejected(small_records):
    rec = small_records[0]
    with pytest.raises(MlipdivError, match="forces shape"):
        MoleculeRecord(rec.inchikey, "", "", rec.atomic_numbers, rec.positions, rec.energy,
                       rec.forces[:, :-1])
    with pytest.raises(MlipdivError, match="non-finite"):
        MoleculeRecord(rec.inchikey, "", "", rec.atomic_numbers, rec.positions,
                       rec.energy * np.nan, rec.forces)


def test_not_a_store(tmp_path):
    (tmp_path / "junk.h5").write_text("junk")
    with pytest.raises(MlipdivError, match="not a readable HDF5"):
        ConformerStore(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "plain.h5", "w"):
        pass
    with pytest.raises(MlipdivError, match="not an mlipdiv store"):
        ConformerStore(tmp_path / "plain.h5")
