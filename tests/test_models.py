"""Real MACE and ANI training on ~50 GFN2-xTB conformers at the dev size."""

from __future__ import annotations

import json
import re
from itertools import islice

import numpy as np
import pytest
import torch
from ase import units
from ase.io import read
from ase.md.verlet import VelocityVerlet
from conftest import embed, labelled_record
from typer.testing import CliRunner

from mlipdiv.cli import app
from mlipdiv.data import MoleculeRecord, write_store
from mlipdiv.errors import FieldError, MlipdivError
from mlipdiv.models import TrainingSpec, fit_e0, load_run, train

BACKENDS = ("mace", "ani")
SMILES = ["CCO", "CC(=O)N", "c1ccccc1O", "CCN", "OC=O"]


@pytest.fixture(scope="session")
def conformer_sets() -> tuple[list[MoleculeRecord], list[MoleculeRecord]]:
    """Five molecules x ten labelled conformers: eight for training, two for validation."""
    records = [labelled_record(s, 10, seed=i) for i, s in enumerate(SMILES)]
    return [r.subset(range(8)) for r in records], [r.subset(range(8, 10)) for r in records]


@pytest.fixture(scope="session", params=BACKENDS)
def trained(request, conformer_sets, tmp_path_factory):
    """A float64 dev-size run of each backend."""
    train_set, valid_set = conformer_sets
    out = tmp_path_factory.mktemp(request.param) / "run"
    train(train_set, valid_set, TrainingSpec(request.param, "dev", dtype="float64"), out,
          progress=False, source={"cell": "test-cell"})
    return load_run(out)


def test_training_loss_falls(trained):
    history = trained.record.members[0].history
    assert len(history) >= 5
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert history[-1]["valid_forces_mae_mev_per_angstrom"] < \
        history[0]["valid_forces_mae_mev_per_angstrom"]
    assert trained.record.source.cell == "test-cell"
    assert trained.record.hyperparameters["size"] == "dev"
    assert "hyperparameters" in (trained.path / "train.log").read_text()


def test_forces_are_minus_the_energy_gradient(trained, conformer_sets):
    record = conformer_sets[1][0]
    member = trained.members[0]
    positions, step = record.positions[0], 1e-4
    displaced = []
    for atom in range(record.n_atoms):
        for axis in range(3):
            for sign in (1, -1):
                moved = positions.copy()
                moved[atom, axis] += sign * step
                displaced.append(moved)
    energies, _ = member.predict_arrays(record.atomic_numbers, np.array(displaced))
    numeric = -(energies[0::2] - energies[1::2]) / (2 * step)
    _, forces = member.predict_arrays(record.atomic_numbers, positions[None])
    np.testing.assert_allclose(forces[0].reshape(-1), numeric, atol=1e-6, rtol=1e-5)
    assert np.abs(forces).max() > 1e-3  # a real, non-zero force field


def test_save_load_predict_identical(trained, conformer_sets):
    valid = conformer_sets[1]
    again = load_run(trained.path)
    first, second = trained.predict(valid), again.predict(valid)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.energy, b.energy)
        np.testing.assert_array_equal(a.forces, b.forces)
    assert first[0].energy.shape == (1, 2) and first[0].forces.shape == (1, 2, 9, 3)
    features = trained.atom_features(valid[:1])[0]
    assert features.shape[:2] == (2, 9) and np.isfinite(features).all()


def test_ase_calculator_runs_md(trained, conformer_sets):
    atoms = conformer_sets[1][2].to_atoms()[0]
    atoms.calc = trained.calculator()
    start = atoms.positions.copy()
    VelocityVerlet(atoms, timestep=0.5 * units.fs).run(10)
    assert np.isfinite(atoms.get_potential_energy())
    assert not np.allclose(atoms.positions, start)
    assert atoms.calc.results["energy_std"] == 0.0  # one member: no committee spread


def test_resume_after_interruption_matches_uninterrupted(trained, conformer_sets, tmp_path):
    train_set, valid_set = conformer_sets

    def interrupt(member, stats):
        if stats.epoch == 4:
            raise KeyboardInterrupt  # as if killed right after epoch 4's checkpoint

    spec = TrainingSpec(trained.record.model, "dev", dtype="float64")
    with pytest.raises(KeyboardInterrupt):
        train(train_set, valid_set, spec, tmp_path / "killed", progress=False,
              on_epoch=interrupt)
    with pytest.raises(MlipdivError, match="not finished"):
        load_run(tmp_path / "killed")
    epochs_seen = []
    train(train_set, valid_set, spec, tmp_path / "killed", progress=False,
          on_epoch=lambda m, s: epochs_seen.append(s.epoch))
    assert epochs_seen[0] == 5  # resumed after the last checkpoint, not from scratch
    resumed = load_run(tmp_path / "killed").predict(valid_set)
    for a, b in zip(resumed, trained.predict(valid_set), strict=True):  # uninterrupted run
        np.testing.assert_allclose(a.energy, b.energy, rtol=0, atol=1e-8)
        np.testing.assert_allclose(a.forces, b.forces, rtol=0, atol=1e-8)


def test_epoch_policy_makes_one_round_one_epoch(trained):
    member = trained.record.members[0]
    per_epoch = 5  # 40 training conformers, batch size 8
    assert trained.record.schedule == {"max_steps": 12 * per_epoch,
                                        "steps_per_round": per_epoch, "policy": "epochs"}
    assert [h["step"] for h in member.history] == \
        [per_epoch * (k + 1) for k in range(member.rounds)]
    assert member.steps == member.epochs * per_epoch
    assert member.best_step == member.best_epoch * per_epoch


def test_same_schedule_gives_every_training_set_size_the_same_steps(conformer_sets,
                                                                     tmp_path):
    train_set, valid_set = conformer_sets
    small = [r.subset(range(3)) for r in train_set[:2]]  # 6 conformers: 1 batch per pass
    steps = []
    for name, data in (("small", small), ("large", train_set)):  # 40: 5 batches per pass
        train(data, valid_set, TrainingSpec("ani", "dev", steps=10, steps_per_round=4),
              tmp_path / name, progress=False)
        meta = json.loads((tmp_path / name / "run.json").read_text())
        member = meta["members"][0]
        assert [h["step"] for h in member["history"]] == [4, 8, 10]  # last round cut short
        assert member["rounds"] == 3 and member["stopped_by"] == "step-budget"
        assert meta["schedule"] == {"max_steps": 10, "steps_per_round": 4, "policy": "steps"}
        steps.append(member["steps"])
    assert steps == [10, 10]


def test_resume_mid_pass_matches_uninterrupted(conformer_sets, tmp_path):
    train_set, valid_set = conformer_sets
    data = [r.subset(range(4)) for r in train_set[:3]]  # 12 conformers: 2 batches per pass
    # rounds of 5 steps span 2.5 passes: round 1 ends one batch into pass 3
    spec = TrainingSpec("ani", "dev", dtype="float64", steps=14, steps_per_round=5)

    def interrupt(member, stats):
        if stats.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(data, valid_set, spec, tmp_path / "killed", progress=False, on_epoch=interrupt)
    steps_seen = []
    train(data, valid_set, spec, tmp_path / "killed", progress=False,
          on_epoch=lambda m, s: steps_seen.append(s.step))
    assert steps_seen == [10, 14]  # resumed after round 1's checkpoint
    train(data, valid_set, spec, tmp_path / "whole", progress=False)
    resumed, whole = load_run(tmp_path / "killed"), load_run(tmp_path / "whole")
    losses = [[h["train_loss"] for h in run.record.members[0].history]
              for run in (resumed, whole)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-12)
    for a, b in zip(resumed.predict(valid_set), whole.predict(valid_set), strict=True):
        np.testing.assert_allclose(a.energy, b.energy, rtol=0, atol=1e-8)
        np.testing.assert_allclose(a.forces, b.forces, rtol=0, atol=1e-8)


def test_batch_stream_resumes_from_the_step_count_alone():
    from mlipdiv.models.training import batch_stream

    class Orders:  # stands in for a Potential: a batch is its item indices
        def batches(self, items, batch_size, order):
            order = list(order)
            return iter([order[i:i + batch_size] for i in range(0, len(order), batch_size)])

    whole = list(islice(batch_stream(Orders(), range(12), 5, 3, 0), 10))  # 3 per pass
    assert [len(b) for b in whole[:3]] == [5, 5, 2]
    for start in range(0, 9, 3):  # every pass is a permutation, and a different one
        assert sorted(sum(whole[start:start + 3], [])) == list(range(12))
    assert sum(whole[0:3], []) != sum(whole[3:6], [])
    for done in (1, 3, 4, 8):
        assert list(islice(batch_stream(Orders(), range(12), 5, 3, done), 10 - done)) == \
            whole[done:]


def test_short_step_budget_is_not_converged(conformer_sets, tmp_path):
    train(*conformer_sets, TrainingSpec("ani", "dev", steps=6, steps_per_round=2),
          tmp_path / "short", progress=False)
    member = json.loads((tmp_path / "short" / "run.json").read_text())["members"][0]
    losses = [h["valid_loss"] for h in member["history"]]
    assert member["stopped_by"] == "step-budget" and member["steps"] == 6
    assert losses[-1] == min(losses) < losses[0]  # validation loss still falling at the end
    assert member["best_step"] == 6 and member["converged"] is False


def test_convergence_rule():
    from mlipdiv.models.training import is_converged

    assert not is_converged("step-budget", 100, 100)
    assert not is_converged("step-budget", 91, 100)  # best within the last 10 %
    assert is_converged("step-budget", 90, 100)
    assert is_converged("early-stopping", 60, 100)


def test_rerun_with_other_settings_is_refused(trained, conformer_sets):
    with pytest.raises(MlipdivError, match="different run"):
        train(*conformer_sets, TrainingSpec(trained.record.model, "fast"), trained.path,
              progress=False)


def test_e0_fit_recovers_known_energies():
    true_e0 = {1: -13.6, 6: -1029.8, 7: -1485.3, 8: -2041.2}
    records = []
    rng = np.random.default_rng(0)
    for smiles in ["C", "N", "O", "CC", "CO", "CN", "NO", "C=O"]:
        numbers, positions = embed(smiles, 3)
        energy = sum(true_e0[int(z)] for z in numbers) + rng.normal(0, 1e-3, 3)
        records.append(MoleculeRecord(smiles, smiles, smiles, numbers, positions, energy,
                                      np.zeros_like(positions)))
    fit = fit_e0(records)
    assert not fit.regularised
    for z, value in true_e0.items():
        assert fit.energies[z] == pytest.approx(value, abs=5e-3)


def test_e0_fit_regularised_when_compositions_cannot_separate(conformer_sets):
    ethanol = conformer_sets[0][0]
    fit = fit_e0([ethanol])
    assert fit.regularised and "cannot separate" in fit.note
    counts = {z: np.count_nonzero(ethanol.atomic_numbers == z) for z in fit.energies}
    total = sum(counts[z] * e for z, e in fit.energies.items())
    assert total == pytest.approx(ethanol.energy.mean(), abs=1e-3)
    assert all(e < -1.0 for e in fit.energies.values())  # never zeros


def test_bad_training_input_is_one_line_error(conformer_sets, tmp_path):
    single = [conformer_sets[0][0].subset([0])]
    with pytest.raises(MlipdivError, match="at least 2"):
        train(single, conformer_sets[1], TrainingSpec("ani", "dev"), tmp_path / "r")
    # a validation element the training set lacks: the model has no E0 or embedding for it
    chlorine = [labelled_record("CCCl", 2, seed=7)]
    for backend in ("mace", "ani"):
        with pytest.raises(MlipdivError, match=r"validation molecule \S+: element\(s\) Cl "
                                               r"absent from the training set \(H, C, N, O\)"):
            train(conformer_sets[0], chlorine, TrainingSpec(backend, "dev"), tmp_path / "r")
    # a bad setting is a FieldError naming the spec's field (the CLI says it as its flag)
    for spec, field, message in (
            (TrainingSpec("ani", "huge"), "size", "size .huge.: choose from dev, fast, standard"),
            (TrainingSpec("ani", "dev", steps=10), "steps_per_round", "both or neither"),
            (TrainingSpec("ani", "dev", steps_per_round=5), "steps", "both or neither"),
            (TrainingSpec("ani", "dev", steps=10, steps_per_round=5, epochs=3), "epochs",
             "one of them"),
            (TrainingSpec("ani", "dev", steps=0, steps_per_round=5), "steps", "at least 1"),
            (TrainingSpec("ani", "dev", epochs=0), "epochs", "epochs 0: must be at least 1"),
            (TrainingSpec("ani", "dev", ensemble=0), "ensemble", "at least 1"),
            (TrainingSpec("ani", "dev", dtype="float16"), "dtype", "choose from")):
        with pytest.raises(FieldError, match=message) as error:
            train(*conformer_sets, spec, tmp_path / "r")
        assert error.value.field == field and "--" not in str(error.value)
    assert not (tmp_path / "r").exists()
    from mlipdiv.models import resolve_device

    for device, message in (("tpu9", "device tpu9: expected cpu, cuda or cuda:N"),
                            ("cpu:1", "expected"), ("cuda:x", "expected")):
        with pytest.raises(FieldError, match=message):
            resolve_device(device)
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(MlipdivError, match="CUDA is not available"):
            resolve_device("cuda")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text(json.dumps({"status": "complete", "spec": {},
                                                           "model": "ani", "ensemble": 1}))
    with pytest.raises(MlipdivError, match="no such checkpoint"):
        load_run(tmp_path / "bad")


def test_cli_train_evaluate_predict(conformer_sets, tmp_path):
    train_set, valid_set = conformer_sets
    write_store(tmp_path / "train.h5", train_set, "GFN2-xTB (tblite)")
    write_store(tmp_path / "valid.h5", valid_set, "GFN2-xTB (tblite)")
    test_set = [*valid_set, labelled_record("CS", 3)]  # sulfur: absent from training
    write_store(tmp_path / "test.h5", test_set, "GFN2-xTB (tblite)")
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--train", str(tmp_path / "train.h5"), "--valid",
                                 str(tmp_path / "valid.h5"), "--model", "ani", "--size", "dev",
                                 "--ensemble", "2", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--data",
                                 str(tmp_path / "test.h5"), "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout.strip().splitlines()[-1])[0]
    assert row["split"] == "test" and row["model"] == "ani" and row["ensemble"] == 2
    assert row["out_of_domain_conformers"] == 3 and row["n_conformers"] == 13
    assert row["energy_mae_mev_per_atom_ci_low"] <= row["energy_mae_mev_per_atom"]
    result = runner.invoke(app, ["predict", str(tmp_path / "run"), str(tmp_path / "test.h5"),
                                 "--out", str(tmp_path / "pred.extxyz")])
    assert result.exit_code == 0, result.output
    frames = read(tmp_path / "pred.extxyz", index=":")
    run = load_run(tmp_path / "run")
    expected = run.predict(valid_set[:1])[0]
    first = next(f for f in frames if f.info["inchikey"] == valid_set[0].inchikey)
    assert first.get_potential_energy() == pytest.approx(expected.mean_energy[0], abs=1e-4)
    assert first.info["energy_std"] > 0  # two members disagree somewhat
    assert sum(bool(f.info["out_of_domain"]) for f in frames) == 3
    # a NaN coordinate: no prediction (not a finite energy with zero forces), and counted
    from ase.io import write as ase_write

    broken = frames[0].copy()
    broken.positions[0, 0] = np.nan
    ase_write(tmp_path / "nan.extxyz", [broken, frames[1]])
    result = runner.invoke(app, ["predict", str(tmp_path / "run"), str(tmp_path / "nan.extxyz"),
                                 "--out", str(tmp_path / "nan-pred.extxyz")])
    assert result.exit_code == 0, result.output
    predicted = read(tmp_path / "nan-pred.extxyz", index=":")
    assert predicted[0].info["invalid_positions"] and predicted[0].calc is None
    assert not predicted[1].info["invalid_positions"] and predicted[1].calc is not None


def test_cli_design_cell_train_and_evaluate_splits(tmp_path):
    from mlipdiv.design import DesignOptions, SplitOptions, make_design, make_splits, write_design

    flexible = ["CCCO", "CC(=O)NC", "OCCN", "CCOC=O", "c1ccccc1O", "CCCN"]
    records = [labelled_record(s, 10, seed=i) for i, s in enumerate(flexible)]
    write_store(tmp_path / "store.h5", records, "GFN2-xTB (tblite)")
    make_splits(tmp_path / "store.h5", tmp_path / "splits",
                SplitOptions(cf_molecules=2, cf_conformers=1, st=1, sf=0))
    design = make_design(tmp_path / "splits", DesignOptions(
        experiment="fixed-budget", budget=16, grid=(4,), validation_fraction=0.2, allow_short=True))
    write_design(design, tmp_path / "design.json")
    cell = design.cells[0]
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--design", str(tmp_path / "design.json"), "--cell",
                                 cell.id, "--model", "ani", "--size", "dev", "--out",
                                 str(tmp_path / "run"), "--steps", "9", "--steps-per-round",
                                 "3"])
    assert result.exit_code == 0, result.output
    record = load_run(tmp_path / "run").record
    assert record.n_train == cell.n_train and record.members[0].steps == 9
    assert record.schedule == {"max_steps": 9, "steps_per_round": 3, "policy": "steps"}
    result = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--splits",
                                 str(tmp_path / "splits"), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    assert {r["split"] for r in rows} == {"cf", "st"}
    assert all(r["cell"] == cell.id and r["n_train"] == cell.n_train for r in rows)
    result = runner.invoke(app, ["train", "--design", str(tmp_path / "design.json"), "--cell",
                                 "no/such/cell", "--model", "ani", "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "no cell 'no/such/cell'" in str(result.exception)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(conformer_sets, tmp_path):
    import torch

    from mlipdiv.models import potential_class, run_size
    from mlipdiv.models.base import conformers, read_checkpoint
    from mlipdiv.models.training import Schedule, fit

    train_set, valid_set = conformer_sets
    e0 = fit_e0(train_set)
    size = run_size("ani", "dev")
    config = {"elements": sorted(e0.energies), "e0": [e0.energies[z] for z in sorted(e0.energies)],
              "model": size.model, "dtype": "float32",
              "stats": {"force_rms": 1.0, "avg_num_neighbors": 10.0}}
    potential = potential_class("ani")(config)
    items = potential.prepare_all(conformers(train_set)), potential.prepare_all(
        conformers(valid_set))
    checkpoint = tmp_path / "checkpoint.pt"

    def diverge(stats):
        if stats.epoch == 2:  # a diverged weight, as a too-large step would leave
            with torch.no_grad():
                next(potential.module.parameters()).fill_(float("nan"))

    schedule = Schedule.from_epochs(4, len(items[0]), size.training.batch_size)
    with pytest.raises(MlipdivError, match="last good checkpoint .round 2, step 10"):
        fit(potential, *items, size.training, schedule, checkpoint, 0, "fp", diverge)
    good = read_checkpoint(checkpoint)
    assert good["state"]["epochs_done"] == 2 and good["state"]["steps_done"] == 10
    assert all(torch.isfinite(v).all() for v in good["module"].values() if v.is_floating_point())


class _Exploit:
    """Unpickling this runs a shell command (writes a marker file)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_in_a_run_directory_is_refused(trained, tmp_path):
    import shutil

    import torch

    run = tmp_path / "shared-run"
    shutil.copytree(trained.path, run)
    marker = tmp_path / "pwned"
    torch.save({"format": "x", "payload": _Exploit(str(marker))}, run / "member-0" / "model.pt")
    with pytest.raises(MlipdivError, match="refused: it holds objects other than weights"):
        load_run(run)
    assert not marker.exists()
    import subprocess
    import sys
    from pathlib import Path

    mlipdiv = str(Path(sys.executable).with_name("mlipdiv"))
    done = subprocess.run([mlipdiv, "evaluate", str(run), "--data", str(run / "x.h5")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and not marker.exists()
    assert "refused: it holds objects other than weights" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1  # one line, no traceback


def test_runs_record_absolute_data_paths(conformer_sets, tmp_path, monkeypatch):
    train_set, valid_set = conformer_sets
    write_store(tmp_path / "train.h5", train_set, "GFN2-xTB (tblite)")
    write_store(tmp_path / "valid.h5", valid_set, "GFN2-xTB (tblite)")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", "--train", "train.h5", "--valid", "valid.h5",
                                      "--model", "ani", "--size", "dev", "--steps", "4",
                                      "--steps-per-round", "2", "--out", "run"])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "run" / "run.json").read_text())["meta"]
    assert meta["train"] == str(tmp_path / "train.h5") and meta["valid"] == str(
        tmp_path / "valid.h5")


def test_backends_register_themselves_and_are_checked_when_defined():
    from mlipdiv.models import backend_names, potential_class
    from mlipdiv.models.base import Potential
    from mlipdiv.study.config import ModelsConfig

    assert {"mace", "ani"} <= set(backend_names())
    assert potential_class("ani").backend == "ani"
    assert potential_class("mace").cutoff(potential_class("mace").sizes["dev"].model) == 4.0
    with pytest.raises(TypeError, match="must declare library, cutoff_key, sizes"):
        class Incomplete(Potential):  # every abstract method, no declarations
            backend = "incomplete"
            build_module = prepare = collate = energy_forces = invariant_features = None
            import_library = None
    with pytest.raises(TypeError, match="defined twice"):
        class Again(potential_class("ani")):
            pass
    assert "incomplete" not in backend_names()
    *others, last = (repr(name) for name in backend_names())  # the choices: every backend
    with pytest.raises(ValueError, match=re.escape(f"{', '.join(others)} or {last}")):
        ModelsConfig(architectures=["incomplete"])


def test_mace_graphs_and_batches_equal_mace_torchs_own(trained, conformer_sets):
    """mlipdiv's MACE graphs and batching (built in a few tensor operations) give the
    energies and forces that mace-torch's `AtomicData.from_config` and its batching give."""
    if trained.record.model != "mace":
        pytest.skip("MACE's own data path")
    from mace.data import AtomicData, Configuration
    from mace.tools import AtomicNumberTable
    from mace.tools.torch_geometric.batch import Batch as MaceBatch

    from mlipdiv.models.base import conformers, default_dtype, frozen_parameters

    member = trained.members[0]
    items = conformers(conformer_sets[1])
    with default_dtype(torch.float64):
        graphs = [AtomicData.from_config(
            Configuration(atomic_numbers=c.numbers, positions=c.positions, properties={},
                          property_weights={}, pbc=(False, False, False)),
            AtomicNumberTable(member.elements), member.cutoff(member.config["model"]))
            for c in items]
    theirs = MaceBatch.from_data_list(graphs)
    ours = member.collate(member.prepare_all(items))
    assert int(ours.inputs["edge_index"].shape[1]) == int(theirs.edge_index.shape[1])
    with frozen_parameters(member.module):
        energy, forces = member.energy_forces(ours, training=False)
        out = member.module(theirs.to_dict(), training=False, compute_force=True)
    np.testing.assert_allclose(energy.detach().numpy(), out["energy"].detach().numpy(),
                               rtol=1e-12)
    np.testing.assert_allclose(forces.detach().numpy(), out["forces"].detach().numpy(),
                               rtol=1e-9, atol=1e-12)
