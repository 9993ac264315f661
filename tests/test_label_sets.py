"""Named label sets beside a store's default labels (`mlipdiv label STORE --as NAME`): two
levels of theory in one store round-trip with real tblite (and a tiny real PySCF DFT label), a
labelled subset is marked and counted, a store without sets still reads, a killed run resumes
with its finished molecules, and damage in the new datasets is found by `info --check`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import labelled_record
from test_store_damage import run_cli

import mlipdiv.data.labelsets as labelsets
from mlipdiv.data import ConformerStore, write_store
from mlipdiv.data.labelsets import add_label_set
from mlipdiv.data.qm import QMMethod
from mlipdiv.errors import MlipdivError

SMILES = ("O", "CCO", "CC(=O)N", "CCCN")
# CODATA 2018, written out here so that a wrong constant in data/units.py fails
EV_PER_HARTREE, ANGSTROM_PER_BOHR = 27.211386245988, 0.529177210903
GFN1 = QMMethod("gfn1-xtb")


@pytest.fixture(scope="module")
def plain_store(tmp_path_factory) -> Path:
    """4 molecules x 4 GFN2-xTB-labelled conformers, written as every store is today."""
    path = tmp_path_factory.mktemp("sets") / "plain.h5"
    write_store(path, [labelled_record(s, 4, seed=i) for i, s in enumerate(SMILES)],
                "GFN2-xTB (tblite)")
    return path


@pytest.fixture
def store(plain_store, tmp_path) -> Path:
    path = tmp_path / "store.h5"
    shutil.copy(plain_store, path)
    return path


def gfn1_in_hartree_bohr(numbers, positions):
    from tblite.interface import Calculator

    calc = Calculator("GFN1-xTB", numbers, positions / ANGSTROM_PER_BOHR)
    calc.set("verbosity", 0)
    result = calc.singlepoint()
    return result.get("energy"), result.get("gradient")


def test_two_label_sets_round_trip_in_ev_and_angstrom(store):
    with ConformerStore(store) as opened:
        default_before = {k: opened.molecule(k) for k in opened.inchikeys}
        checksum = opened.checksum()
    summary = add_label_set(store, "gfn1", GFN1, progress=False)
    assert (summary.n_molecules, summary.n_conformers, summary.n_skipped) == (4, 16, 0)
    with ConformerStore(store) as opened:
        assert list(opened.label_sets()) == ["default", "gfn1"]
        assert opened.label_sets()["gfn1"]["level_of_theory"] == "GFN1-xTB (tblite)"
        assert opened.checksum() == checksum  # the default labels, so splits stay valid
        for key, before in default_before.items():
            default = opened.molecule(key)
            assert default.label_mask is None
            np.testing.assert_array_equal(default.energy, before.energy)
            gfn1 = opened.molecule(key, [3, 1], labels="gfn1")
            assert gfn1.label_mask.all() and gfn1.n_labelled == 2
            energy, gradient = gfn1_in_hartree_bohr(gfn1.atomic_numbers, gfn1.positions[0])
            assert gfn1.energy[0] == pytest.approx(energy * EV_PER_HARTREE, rel=1e-9)
            np.testing.assert_allclose(gfn1.forces[0],
                                       -gradient * EV_PER_HARTREE / ANGSTROM_PER_BOHR,
                                       rtol=1e-6, atol=1e-8)
            # another level of theory: the same conformer, a different energy
            assert abs(gfn1.energy[1] - before.energy[1]) > 1.0
        atoms = opened.to_atoms([(opened.inchikeys[0], 0)])
        assert atoms[0].get_potential_energy() == default_before[opened.inchikeys[0]].energy[0]


def test_a_labelled_subset_is_marked_counted_and_extended(store, monkeypatch, capsys):
    summary = add_label_set(store, "gfn1", GFN1, n_molecules=2, conformers_per_molecule=2,
                            progress=False)
    assert (summary.n_molecules, summary.n_conformers) == (2, 4)
    with ConformerStore(store) as opened:
        counts = opened.label_counts("gfn1")
        assert {k: counts[k] for k in ("labelled_conformers", "n_conformers",
                                       "labelled_molecules", "n_molecules")} == \
            {"labelled_conformers": 4, "n_conformers": 16, "labelled_molecules": 2,
             "n_molecules": 4}
        # spread evenly: the first and last molecule, their first and last conformer
        keys = opened.inchikeys
        assert counts["unlabelled_molecules"] == keys[1:3]
        record = opened.molecule(keys[0], labels="gfn1")
        assert record.label_mask.tolist() == [True, False, False, True]
        assert np.isnan(record.energy[1:3]).all() and np.isfinite(record.energy[[0, 3]]).all()
        assert np.isnan(opened.molecule(keys[1], labels="gfn1").energy).all()
        frames = opened.to_atoms([(keys[0], 0), (keys[0], 1)], labels="gfn1")
        assert frames[0].calc is not None and frames[1].calc is None
    code, out, err = run_cli(monkeypatch, capsys, "info", store, "--json")
    assert code in (0, None), err
    sets = json.loads(out)["label_sets"]
    assert sets["gfn1"]["labelled_conformers"] == 4 and sets["default"]["labelled_conformers"] == 16
    _, out, _ = run_cli(monkeypatch, capsys, "info", store)
    assert "4/16 conformers, 2/4" in " ".join(out.split()), out
    # a larger subset labels only the conformers not labelled yet
    summary = add_label_set(store, "gfn1", GFN1, conformers_per_molecule=2, progress=False)
    assert (summary.n_molecules, summary.n_conformers) == (2, 4)
    with ConformerStore(store) as opened:
        assert opened.label_counts("gfn1")["labelled_conformers"] == 8


def test_a_store_without_label_sets_still_reads(plain_store):
    with h5py.File(plain_store) as raw:
        assert "label_sets" not in raw.attrs
        assert all("labels" not in raw[k] for k in raw)
    with ConformerStore(plain_store) as opened:
        assert list(opened.label_sets()) == ["default"]
        assert opened.check() == {}
        key = opened.inchikeys[0]
        assert opened.label_mask(key).all() and opened.molecule(key, labels="default").labelled
        with pytest.raises(MlipdivError, match=r"plain\.h5: no label set 'dft' \(the store "
                                               r"has default\)"):
            opened.molecule(key, labels="dft")


def test_a_killed_labelling_resumes_with_its_finished_molecules(store, monkeypatch):
    # kill -9 of the command itself when it starts its third molecule (workers=1: in-process)
    script = ("import os, signal\n"
              "import mlipdiv.data.labelsets as m\n"
              "from mlipdiv.data.qm import QMMethod\n"
              "calls, original = [], m.relabel\n"
              "def dying(record, method):\n"
              "    calls.append(1)\n"
              "    if len(calls) == 3:\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              "    return original(record, method)\n"
              "m.relabel = dying\n"
              f"m.add_label_set({str(store)!r}, 'gfn1', QMMethod('gfn1-xtb'), progress=False)\n")
    before = store.read_bytes()
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert process.returncode == -9, process.stderr
    parts = store.with_name("store.h5.labels-gfn1.parts")
    assert len(list(parts.glob("0*.npz"))) == 2
    assert store.read_bytes() == before  # nothing written in place before the end

    calls = []
    original = labelsets.relabel
    monkeypatch.setattr(labelsets, "relabel",
                        lambda record, method: calls.append(record.inchikey)
                        or original(record, method))
    summary = add_label_set(store, "gfn1", GFN1, progress=False)
    assert (summary.n_resumed, len(calls)) == (2, 2)
    assert (summary.n_molecules, summary.n_conformers) == (4, 16)
    assert not parts.exists()
    with ConformerStore(store) as opened:
        assert opened.label_counts("gfn1")["labelled_conformers"] == 16


@pytest.mark.parametrize("damage", ["chunk", "missing"])
def test_damage_in_a_label_set_is_found_by_check(store, damage, monkeypatch, capsys):
    add_label_set(store, "gfn1", GFN1, n_molecules=2, progress=False)
    with h5py.File(store, "r+") as raw:
        key = sorted(raw)[-1]
        if damage == "missing":
            del raw[key]["labels/gfn1/forces"]
        else:
            offset = raw[key]["labels/gfn1/energy"].id.get_chunk_info(0).byte_offset
    if damage == "chunk":  # overwrite the data's bytes: Fletcher-32 must notice
        with open(store, "r+b") as handle:
            handle.seek(offset)
            handle.write(bytes(range(17, 49)))
    code, out, err = run_cli(monkeypatch, capsys, "info", store, "--check", "--json")
    assert code == 1, err
    damaged = json.loads(out)["damaged"]
    assert list(damaged) == [key]
    assert ("labels/gfn1/energy" if damage == "chunk" else "no dataset forces") in damaged[key]


def test_a_tiny_dft_label_set_on_water(tmp_path):
    method = QMMethod("dft", functional_basis="pbe/sto-3g")
    store = tmp_path / "water.h5"
    write_store(store, [labelled_record("O", 3)], "GFN2-xTB (tblite)")
    with ConformerStore(store) as opened:
        water = opened.inchikeys[0]
    summary = add_label_set(store, "dft", method, n_molecules=1, conformers_per_molecule=1,
                            progress=False)
    assert summary.n_conformers == 1
    from pyscf import dft, gto

    with ConformerStore(store) as opened:
        record = opened.molecule(water, [0], labels="dft")
        assert "pbe/sto-3g" in opened.label_sets()["dft"]["level_of_theory"]
    mol = gto.M(atom=[(int(z), tuple(x)) for z, x in zip(record.atomic_numbers,
                                                          record.positions[0], strict=True)],
                unit="Angstrom", basis="sto-3g", verbose=0)
    mf = dft.RKS(mol).density_fit()
    mf.xc = "pbe"
    assert record.energy[0] == pytest.approx(mf.kernel() * EV_PER_HARTREE, rel=1e-8)


def test_wrong_uses_are_one_line_errors(store, monkeypatch, capsys):
    add_label_set(store, "gfn1", GFN1, n_molecules=1, progress=False)
    for args, message in [
        (["--method", "gfn2-xtb", "--as", "gfn1"], "label set 'gfn1' holds GFN1-xTB (tblite), "
                                                   "not GFN2-xTB (tblite)"),
        (["--as", "default"], "label set name 'default'"),
        (["--as", "x", "--out", "y.h5"], "give --out (a relabelled copy) or --as NAME"),
        (["--out", "y.h5", "--molecules", "2"], "--molecules and --conformers-per-molecule "
                                                "go with --as"),
    ]:
        code, _, err = run_cli(monkeypatch, capsys, "label", store, *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_second_level_from_another_store_is_matched_by_positions(store, tmp_path):
    from mlipdiv.data.generate import label_store
    from mlipdiv.data.labelsets import import_label_set
    from mlipdiv.data.store_writer import write_subset

    relabelled, partial = tmp_path / "gfn1.h5", tmp_path / "partial.h5"
    label_store(store, relabelled, GFN1, progress=False)
    with ConformerStore(relabelled) as other:  # 3 of 4 molecules, conformers 2 and 0 only
        write_subset(other, [(k, i) for k in other.inchikeys[:3] for i in (2, 0)], partial)
    summary = import_label_set(store, "gfn1", partial)
    assert (summary.n_molecules, summary.n_conformers) == (3, 6)
    assert summary.skipped == {f"not in {partial}": 1, "conformers without a match": 6}
    with ConformerStore(store) as opened, ConformerStore(relabelled) as other:
        assert opened.label_sets()["gfn1"]["level_of_theory"] == "GFN1-xTB (tblite)"
        key = opened.inchikeys[1]
        record = opened.molecule(key, labels="gfn1")
        assert record.label_mask.tolist() == [True, False, True, False]
        np.testing.assert_array_equal(record.energy[[0, 2]], other.molecule(key).energy[[0, 2]])
        assert opened.label_counts("gfn1")["unlabelled_molecules"] == [opened.inchikeys[3]]


def test_a_failing_molecule_is_skipped_counted_and_left_unlabelled(store, monkeypatch):
    from mlipdiv.data.qm import LabelError

    original = labelsets.relabel
    with ConformerStore(store) as opened:
        bad = opened.inchikeys[2]

    def failing(record, method):
        if record.inchikey == bad:
            raise LabelError("SCF did not converge")
        return original(record, method)

    monkeypatch.setattr(labelsets, "relabel", failing)
    summary = add_label_set(store, "gfn1", GFN1, progress=False)
    assert (summary.n_molecules, dict(summary.skipped)) == (3, {"SCF did not converge": 1})
    with ConformerStore(store) as opened:
        assert opened.label_counts("gfn1")["unlabelled_molecules"] == [bad]
        assert opened.check() == {}
