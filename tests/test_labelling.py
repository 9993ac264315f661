"""Labelling throughput: one tblite calculator per molecule, the optional SCF restart and its
fresh-start fallback, and the worker pool started while the input is checked."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import embed

import mlipdiv.data.generate as generate_module
from mlipdiv.data import ConformerStore, QMMethod
from mlipdiv.data.generate import label_store
from mlipdiv.data.qm import LabelError, XtbSeries
from mlipdiv.data.units import BOHR_TO_ANGSTROM
from mlipdiv.errors import MlipdivError


def fresh(numbers: np.ndarray, positions: np.ndarray, accuracy: float = 1.0):
    """Energy (Hartree) and gradient (Hartree/Bohr) from a new tblite calculator."""
    from tblite.interface import Calculator

    calc = Calculator("GFN2-xTB", numbers, positions / BOHR_TO_ANGSTROM)
    calc.set("verbosity", 0)
    calc.set("accuracy", accuracy)
    result = calc.singlepoint()
    return result.get("energy"), result.get("gradient")


@pytest.fixture(scope="module")
def conformers() -> list[tuple[np.ndarray, np.ndarray]]:
    """Distinct ETKDG conformers of two flexible molecules."""
    return [embed("CCCCO", 6, seed=3), embed("NCC(=O)OC", 6, seed=4)]


def test_one_calculator_per_molecule_gives_the_fresh_labels(conformers):
    for numbers, positions in conformers:
        series = XtbSeries("GFN2-xTB", numbers)
        for xyz in positions:
            energy, gradient = series.singlepoint(xyz)
            expected_energy, expected_gradient = fresh(numbers, xyz)
            assert energy == pytest.approx(expected_energy, abs=1e-12)
            np.testing.assert_allclose(gradient, expected_gradient, atol=1e-12)
        assert series.n_restarts == 0


def test_scf_restart_agrees_with_fresh_starts_to_the_scf_tolerance(conformers):
    hartree_to_ev, gradient_to_forces = 27.211386, 51.422086
    for numbers, positions in conformers:
        series = XtbSeries("GFN2-xTB", numbers, restart=True)
        for xyz in positions:
            energy, gradient = series.singlepoint(xyz)
            fresh_energy, fresh_gradient = fresh(numbers, xyz)
            _, converged = fresh(numbers, xyz, accuracy=1e-3)  # a tightly converged SCF
            assert abs(energy - fresh_energy) * hartree_to_ev < 1e-5
            # forces converge linearly in the SCF: a restart's are as close to the converged
            # ones as a fresh start's (both within the default threshold's ~2e-3 eV/A)
            restart_error = np.abs(gradient - converged).max() * gradient_to_forces
            fresh_error = np.abs(fresh_gradient - converged).max() * gradient_to_forces
            assert restart_error < 2e-3 and fresh_error < 2e-3
        assert (series.n_restarts, series.n_fallbacks) == (len(positions) - 1, 0)


class _FailingRestarts:
    """A tblite calculator whose restarted SCFs fail (raise, or give a non-finite energy)."""

    def __init__(self, calculator, how: str):
        self.calculator, self.how = calculator, how

    def update(self, positions: np.ndarray) -> None:
        self.calculator.update(positions)

    def singlepoint(self, guess=None):
        if guess is None:
            return self.calculator.singlepoint()
        if self.how == "raise":
            from tblite.exceptions import TBLiteRuntimeError

            raise TBLiteRuntimeError("SCF not converged in 250 cycles")
        result = self.calculator.singlepoint(guess)
        return type("NonFinite", (), {"get": lambda _, key: np.nan * result.get(key)})()


@pytest.mark.parametrize("how", ["raise", "non-finite"])
def test_a_failed_restart_is_run_again_from_a_fresh_start(conformers, how):
    numbers, positions = conformers[0]
    series = XtbSeries("GFN2-xTB", numbers, restart=True)
    series.singlepoint(positions[0])
    series._calculator = _FailingRestarts(series._calculator, how)
    energy, gradient = series.singlepoint(positions[1])
    expected_energy, expected_gradient = fresh(numbers, positions[1])
    assert energy == pytest.approx(expected_energy, abs=1e-12)
    np.testing.assert_allclose(gradient, expected_gradient, atol=1e-12)
    assert (series.n_restarts, series.n_fallbacks) == (1, 1)
    series.singlepoint(positions[2])  # a new calculator: restarts work again
    assert (series.n_restarts, series.n_fallbacks) == (2, 1)


def test_a_failed_fresh_start_is_a_label_error(conformers, monkeypatch):
    import tblite.interface

    class Unconverged(tblite.interface.Calculator):
        def singlepoint(self, res=None, copy=False):
            raise tblite.interface.TBLiteRuntimeError("SCF not converged in 250 cycles")

    monkeypatch.setattr(tblite.interface, "Calculator", Unconverged)
    numbers, positions = conformers[0]
    with pytest.raises(LabelError, match="GFN2-xTB failed: SCF not converged"):
        QMMethod("gfn2-xtb").label_many(numbers, positions)


def test_two_workers_label_every_conformer_once_and_resume(diverse_store, tmp_path,
                                                            monkeypatch):
    store = tmp_path / "in.h5"
    shutil.copy(diverse_store, store)
    out = tmp_path / "out.h5"
    original, calls = generate_module._label_job, []

    def interrupted(job):  # in-process (one worker): stop after three molecules
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(job.name)
        return original(job)

    monkeypatch.setattr(generate_module, "_label_job", interrupted)
    with pytest.raises(KeyboardInterrupt):
        label_store(store, out, QMMethod("gfn2-xtb"), workers=1, progress=False)
    monkeypatch.setattr(generate_module, "_label_job", original)
    assert len(list(tmp_path.glob("out.h5.parts/0*.npz"))) == 3 and not out.exists()

    summary = label_store(store, out, QMMethod("gfn2-xtb"), workers=2, progress=False)
    assert summary.n_resumed == 3
    with ConformerStore(store) as before, ConformerStore(out) as after:
        assert after.inchikeys == before.inchikeys
        assert summary.n_conformers == sum(before.conformer_counts().values())
        for old, new in zip(before.molecules(), after.molecules(), strict=True):
            np.testing.assert_array_equal(new.positions, old.positions)
            np.testing.assert_allclose(new.energy, old.energy, atol=1e-8)
            np.testing.assert_allclose(new.forces, old.forces, atol=1e-8)
    assert not (tmp_path / "out.h5.parts").exists()


def test_a_run_refused_while_its_workers_start_ends_at_once(tmp_path):
    with pytest.raises(MlipdivError, match="no such store"):
        label_store(tmp_path / "missing.h5", tmp_path / "out.h5", QMMethod("gfn2-xtb"),
                    workers=2, progress=False)


def test_checkpoint_temporaries_of_dead_runs_are_removed_once_per_run(diverse_store, tmp_path,
                                                                      monkeypatch):
    import os

    import mlipdiv.atomic as atomic

    dead = 2 ** 22 + 12345  # beyond pid_max: no such process
    folder = tmp_path / "parts"
    folder.mkdir()
    for name in (f".000001.tmp-{dead}.npz", f".000002.tmp-{os.getpid()}.npz", "000003.npz"):
        (folder / name).write_text("x")
    assert atomic.remove_stale_temporaries_in(folder) == [folder / f".000001.tmp-{dead}.npz"]
    assert sorted(p.name for p in folder.iterdir()) == [f".000002.tmp-{os.getpid()}.npz",
                                                        "000003.npz"]

    listings, probes = [], []
    original, original_probe = atomic._remove_stale, atomic.check_writable
    monkeypatch.setattr(atomic, "_remove_stale",
                        lambda folder, pattern: listings.append(folder)
                        or original(folder, pattern))
    monkeypatch.setattr(atomic, "check_writable",
                        lambda path: probes.append(Path(path).parent) or original_probe(path))
    summary = label_store(diverse_store, tmp_path / "out.h5", QMMethod("gfn2-xtb"),
                          progress=False)
    # the parts folder is listed and probed when the run starts, not once per checkpoint
    parts = tmp_path / "out.h5.parts"
    assert listings.count(parts) <= 2 < summary.n_molecules
    assert probes.count(parts) <= 2 < summary.n_molecules


def test_a_run_opens_its_input_store_once_for_all_its_jobs(diverse_store, tmp_path,
                                                           monkeypatch):
    opened, original = [], ConformerStore.__init__

    def counting(self, path, *args, **kwargs):
        opened.append(Path(path))
        original(self, path, *args, **kwargs)

    monkeypatch.setattr(ConformerStore, "__init__", counting)
    summary = label_store(diverse_store, tmp_path / "out.h5", QMMethod("gfn2-xtb"),
                          progress=False)
    # one open shared by the input check and the jobs: opening lists every molecule, so an
    # open per job made a run over many small molecules quadratic
    assert opened.count(Path(diverse_store)) == 1 < summary.n_molecules
    assert not generate_module._input_stores  # closed when the run ended


def test_small_molecules_go_to_the_workers_in_batches_that_shrink_to_one():
    from mlipdiv.data.generate import BATCH_SECONDS, _Batches, _Job

    jobs = [_Job(i, f"m{i}", "", (), cost=1.0) for i in range(400)]
    batches = _Batches(jobs, workers=2)
    first = batches.next()
    assert len(first) == 1  # nothing measured yet: one molecule a task
    batches.learn(first, seconds=0.004)  # 4 ms a molecule: 25 fit in BATCH_SECONDS
    sizes, tasks = [], [first]
    while batches.queue:
        tasks.append(batches.next())
        sizes.append(len(tasks[-1]))
    assert [job.index for task in tasks for job in task] == list(range(400))
    assert abs(sizes[0] - BATCH_SECONDS / 0.004) <= 1 and sizes[-1] == 1
    assert sizes == sorted(sizes, reverse=True)  # the last tasks are the smallest
    batches = _Batches(jobs[:10], workers=2)
    batches.learn(batches.next(), seconds=5.0)  # slow molecules (DFT): one a task
    assert len(batches.next()) == 1
