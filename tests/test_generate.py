"""Generation and labelling: real ETKDG/MD/NMS conformers, real GFN2-xTB and PySCF labels."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import minimize_rotation_and_translation
from rdkit import Chem
from typer.testing import CliRunner

import mlipdiv.data.generate as generate_module
from mlipdiv.cli import app
from mlipdiv.data import ConformerStore, QMMethod, perceive
from mlipdiv.data.generate import GenerateOptions, generate, label_store
from mlipdiv.data.identity import identity_of
from mlipdiv.data.sampling import SAMPLERS, prepare_molecule, sample_conformers
from mlipdiv.data.sources import MoleculeFilter, parse_elements, select_molecules
from mlipdiv.data.units import BOHR_TO_ANGSTROM, HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM, HARTREE_TO_EV
from mlipdiv.errors import MlipdivError

THREE_MOLECULES = "CCO ethanol\nCC(=O)N acetamide\nNCCO ethanolamine\n"


def write_smi(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """3 molecules x 3 conformers from a .smi file, default sampler, two workers."""
    directory = tmp_path_factory.mktemp("generated")
    source = write_smi(directory / "three.smi", THREE_MOLECULES)
    out = directory / "data.h5"
    summary = generate(source, out, 3, GenerateOptions(3, seed=1), workers=2, progress=False)
    return out, summary


def tblite_direct(numbers: np.ndarray, positions: np.ndarray) -> tuple[float, np.ndarray]:
    """GFN2-xTB energy (eV) and forces (eV/A) straight from tblite, converted here."""
    from tblite.interface import Calculator
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # OpenMP threads only slow tiny molecules down
        calc = Calculator("GFN2-xTB", numbers, positions / BOHR_TO_ANGSTROM)
        calc.set("verbosity", 0)
        result = calc.singlepoint()
    return (result.get("energy") * HARTREE_TO_EV,
            -result.get("gradient") * HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM)


def aligned_rmsd(numbers: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    reference, moved = Atoms(numbers=numbers, positions=a), Atoms(numbers=numbers, positions=b)
    minimize_rotation_and_translation(reference, moved)
    return float(np.sqrt(((reference.positions - moved.positions) ** 2).sum(1).mean()))


def test_generated_labels_match_direct_tblite(generated):
    out, summary = generated
    assert (summary.n_molecules, summary.n_conformers, summary.n_skipped) == (3, 9, 0)
    assert not out.with_name(out.name + ".parts").exists()
    with ConformerStore(out) as store:
        assert store.attrs["sampler"] == "etkdg+md"
        assert "GFN2-xTB" in store.level_of_theory
        for record in store.molecules():
            assert record.n_conformers == 3
            assert list(record.sampler) == ["etkdg", "etkdg", "md"] or list(
                record.sampler) == ["etkdg", "md", "md"]
            is_md = record.sampler == "md"
            assert np.all(record.temperature[is_md] == 500.0)
            assert np.isnan(record.temperature[~is_md]).all()
            assert all(s.startswith("three.smi:") for s in record.source)
            for i in range(record.n_conformers):
                energy, forces = tblite_direct(record.atomic_numbers, record.positions[i])
                assert record.energy[i] == pytest.approx(energy, abs=1e-6)
                np.testing.assert_allclose(record.forces[i], forces, atol=1e-6)
                identity = perceive(record.atomic_numbers, record.positions[i])
                assert identity.inchikey == record.inchikey
                # stored in canonical order, as imports are
                np.testing.assert_array_equal(identity.canonical_order,
                                              np.arange(record.n_atoms))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampler_conformers_differ_beyond_noise_and_stay_one_molecule(sampler):
    mol = prepare_molecule("CCCCO")
    conformers = sample_conformers(mol, 3, sampler, 500.0, QMMethod(), seed=1)
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    inchikey = identity_of(Chem.Mol(mol)).inchikey
    assert len(conformers.positions) == 3
    assert set(conformers.sampler) <= set(sampler.split("+"))
    for i, positions in enumerate(conformers.positions):
        assert perceive(numbers, positions).inchikey == inchikey
        for j in range(i):
            assert aligned_rmsd(numbers, positions, conformers.positions[j]) > 0.05


def test_generate_resumes_after_kill_9_without_redoing_molecules(tmp_path, monkeypatch):
    source = write_smi(tmp_path / "four.smi", "CCCO\nCCOC\nCC(C)O\nNCCO\n")
    out = tmp_path / "resume.h5"
    parts = tmp_path / "resume.h5.parts"
    script = ("from mlipdiv.data.generate import generate, GenerateOptions\n"
              f"generate({source!r}, {str(out)!r}, 4, GenerateOptions(3, sampler='md'), "
              "workers=2, progress=False)")
    process = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(parts.glob("0*.npz")) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = sorted(p.name for p in parts.glob("0*.npz"))
    assert 0 < len(finished) < 4 and not out.exists()

    calls = []

    def counting(entry, options, seed):
        calls.append(entry.name)
        return original(entry, options, seed)

    original = generate_module.generate_molecule
    monkeypatch.setattr(generate_module, "generate_molecule", counting)
    summary = generate(source, out, 4, GenerateOptions(3, sampler="md"), progress=False)
    assert summary.n_resumed == len(finished)
    assert len(calls) == 4 - len(finished)
    assert (summary.n_molecules, summary.n_conformers) == (4, 12)
    with ConformerStore(out) as store:
        assert len(set(store.inchikeys)) == 4
        assert sorted(s for r in store.molecules() for s in set(r.source)) == sorted(
            f"four.smi:line {i}" for i in range(1, 5))
    assert not parts.exists()


def test_bad_molecules_are_skipped_and_counted(tmp_path):
    source = write_smi(tmp_path / "bad.smi", "CCO good\nC1CC((C bad\nC[Se]C selenium\n"
                                             "C1#CC1 cyclopropyne\nCC(=O)O acid\n")
    out = tmp_path / "bad.h5"
    result = CliRunner().invoke(app, [
        "generate", "--molecules", source, "--n-molecules", "10", "--conformers", "2",
        "--sampler", "etkdg", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["n_molecules"] == 2
    assert summary["skipped"] == {"unparsable SMILES": 1, "unsupported element": 1,
                                  "embedding failed": 1}
    with ConformerStore(out) as store:
        assert sorted(store.group_attrs(k)["smiles"] for k in store.inchikeys) == [
            "CC(=O)O", "CCO"]


def test_label_reproduces_labels_in_parallel(generated, tmp_path):
    out, _ = generated
    relabelled = tmp_path / "relabelled.h5"
    summary = label_store(out, relabelled, QMMethod("gfn2-xtb"), workers=2, progress=False)
    assert (summary.n_molecules, summary.n_conformers) == (3, 9)
    with ConformerStore(out) as original, ConformerStore(relabelled) as store:
        assert store.inchikeys == original.inchikeys
        for before, after in zip(original.molecules(), store.molecules(), strict=True):
            np.testing.assert_allclose(after.energy, before.energy, atol=1e-8)
            np.testing.assert_allclose(after.forces, before.forces, atol=1e-8)
            np.testing.assert_array_equal(after.positions, before.positions)
            assert list(after.sampler) == list(before.sampler)


def test_dft_labels_agree_with_finite_differences(tmp_path):
    method = QMMethod("dft", functional_basis="pbe/sto-3g")
    out = tmp_path / "water.h5"
    summary = generate(write_smi(tmp_path / "water.smi", "O water\n"), out, 1,
                       GenerateOptions(2, method=method), progress=False)
    assert summary.n_conformers == 2
    with ConformerStore(out) as store:
        assert "pbe/sto-3g" in store.level_of_theory
        record = next(store.molecules())
    positions, step = record.positions[-1], 1e-3
    for atom, axis in [(0, 0), (1, 2)]:
        shifted = [positions.copy(), positions.copy()]
        shifted[0][atom, axis] += step
        shifted[1][atom, axis] -= step
        plus, minus = (method.label(record.atomic_numbers, x)[0] for x in shifted)
        assert record.forces[-1][atom, axis] == pytest.approx(-(plus - minus) / (2 * step),
                                                              abs=5e-3)


def test_selection_is_deterministic_filtered_and_prefix_stable():
    molecule_filter = MoleculeFilter(parse_elements("C,H,N,O"), 3, 9)
    five = select_molecules("nci", 5, molecule_filter, seed=3)
    eight = select_molecules("nci", 8, molecule_filter, seed=3)
    assert eight.entries[:5] == five.entries
    assert select_molecules("nci", 8, molecule_filter, seed=4).entries != eight.entries
    for entry in eight.entries:
        mol = Chem.MolFromSmiles(entry.smiles)
        assert 3 <= mol.GetNumHeavyAtoms() <= 9
        assert {a.GetSymbol() for a in mol.GetAtoms()} <= {"C", "N", "O"}
        assert entry.charge == 0


def test_bad_options_and_foreign_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(MlipdivError, match="no such file and not a named set"):
        generate(str(tmp_path / "missing.smi"), tmp_path / "x.h5", 1, GenerateOptions(1))
    source = write_smi(tmp_path / "one.smi", "CCO\n")
    parts = tmp_path / "x.h5.parts"
    parts.mkdir()
    (parts / "settings.json").write_text(json.dumps({"command": "generate", "seed": 99}))
    with pytest.raises(MlipdivError, match="checkpoints of a different run"):
        generate(source, tmp_path / "x.h5", 1, GenerateOptions(1), progress=False)
    result = CliRunner().invoke(app, ["generate", "--molecules", source, "--n-molecules", "1",
                                      "--conformers", "1", "--out", str(tmp_path / "y.h5"),
                                      "--method", "hf"])
    assert isinstance(result.exception, MlipdivError)
    assert "--method hf" in str(result.exception)


def test_nothing_generated_is_an_error_with_the_reasons(tmp_path):
    for text, reason in (("", "the source is empty"),
                         ("not_a_smiles\n[Na+].[Cl-]\n", "unparsable SMILES: 1")):
        source = write_smi(tmp_path / "bad.smi", text)
        with pytest.raises(MlipdivError, match=f"no molecule passes the filters.*{reason}"):
            generate(source, tmp_path / "none.h5", 2, GenerateOptions(2), progress=False)
        assert not (tmp_path / "none.h5").exists()
        assert not (tmp_path / "none.h5.parts").exists()


def test_kill_9_of_the_command_leaves_no_worker_behind(tmp_path):
    import psutil

    source = write_smi(tmp_path / "six.smi", "CCCO\nCCOC\nCC(C)O\nNCCO\nCCCN\nOCCO\n")
    parts = tmp_path / "orphans.h5.parts"
    script = ("from mlipdiv.data.generate import generate, GenerateOptions\n"
              "if __name__ == '__main__':\n"
              f"    generate({source!r}, {str(tmp_path / 'orphans.h5')!r}, 6, "
              "GenerateOptions(3, sampler='md'), workers=2, progress=False)")
    process = subprocess.Popen([sys.executable, "-c", script],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(parts.glob("0*.npz")) and time.monotonic() < deadline:
        time.sleep(0.02)
    family = psutil.Process(process.pid).children(recursive=True)
    assert len(family) >= 3  # forkserver, resource tracker or workers
    process.kill()  # only the command: its workers must follow on their own
    process.wait()
    gone, alive = psutil.wait_procs(family, timeout=15)
    assert not alive, [p.cmdline()[:3] for p in alive]
    written = len(list(parts.glob("0*.npz")))
    time.sleep(1)
    assert len(list(parts.glob("0*.npz"))) == written  # nothing writes after the kill
