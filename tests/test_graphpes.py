"""Real SchNet, PaiNN, NequIP and TensorNet (graph-pes) training on ~50 GFN2-xTB conformers at
the dev size.

The backend-independent tests of test_models.py (training, forces as minus the energy
gradient, save/load, features, ASE MD, resume, epoch policy) are collected here again, with
this module's `trained` fixture: a run of each graph-pes backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.md.verlet import VelocityVerlet
from scipy.spatial.transform import Rotation
from test_models import (  # noqa: F401 - collected here again, with this module's `trained`
    conformer_sets,
    test_ase_calculator_runs_md,
    test_epoch_policy_makes_one_round_one_epoch,
    test_forces_are_minus_the_energy_gradient,
    test_resume_after_interruption_matches_uninterrupted,
    test_save_load_predict_identical,
    test_training_loss_falls,
)

from mlipdiv.models import TrainingSpec, backend_names, load_run, potential_class, train

GRAPH_PES = ("schnet", "painn", "nequip", "tensornet")


@pytest.fixture(scope="session", params=GRAPH_PES)
def trained(request, conformer_sets, tmp_path_factory):  # noqa: F811 - imported fixture
    """A float64 dev-size run of each graph-pes backend."""
    train_set, valid_set = conformer_sets
    out = tmp_path_factory.mktemp(request.param) / "run"
    train(train_set, valid_set, TrainingSpec(request.param, "dev", dtype="float64"), out,
          progress=False, source={"cell": "test-cell"})
    return load_run(out)


def test_backends_are_registered_with_their_library():
    assert set(GRAPH_PES) <= set(backend_names())
    for backend in GRAPH_PES:
        cls = potential_class(backend)
        assert cls.backend == backend and cls.library == "graph-pes"
        assert cls.cutoff(cls.sizes["standard"].model) == 5.0
    assert "GraphPesPotential" not in {potential_class(b).__name__ for b in backend_names()}


@pytest.mark.parametrize("backend", GRAPH_PES)
def test_every_size_builds_in_float64_with_the_e0s_as_offsets(backend):
    from ase.build import molecule

    cls = potential_class(backend)
    atoms = molecule("CH3CH2OH")
    e0 = {1: -13.6, 6: -1029.8, 8: -2041.2}
    for size in cls.sizes.values():
        config = {"elements": sorted(e0), "e0": [e0[z] for z in sorted(e0)],
                  "model": size.model, "dtype": "float64",
                  "stats": {"force_rms": 0.7, "avg_num_neighbors": 8.0}}
        potential = cls(config)
        energy, forces = potential.predict_arrays(atoms.numbers, atoms.positions[None])
        assert np.isfinite(energy).all() and np.abs(forces).max() > 0
        scaler = potential.module["many_body"].scaler.per_element_scaling
        assert scaler.dtype == torch.float64 and float(scaler[6].detach()) == 0.7
        with torch.no_grad():  # no learned part: the energy is the E0s alone
            scaler.zero_()
        energy, forces = potential.predict_arrays(atoms.numbers, atoms.positions[None])
        assert energy[0] == pytest.approx(sum(e0[int(z)] for z in atoms.numbers), abs=1e-9)
        assert np.abs(forces).max() == 0


def _feature_width(model: dict, backend: str) -> int:
    return 3 * model["channels"] if backend == "tensornet" else model["channels"]


def test_invariant_features_are_rotation_invariant(trained, conformer_sets):  # noqa: F811
    record = conformer_sets[1][1]
    member = trained.members[0]
    positions = record.positions[0]
    rotated = positions @ Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).as_matrix().T + 0.7
    features = member.features_arrays(record.atomic_numbers,
                                      np.stack([positions, rotated, record.positions[1]]))
    width = _feature_width(trained.record.hyperparameters["model"], trained.record.model)
    assert features.shape == (3, record.n_atoms, width)
    np.testing.assert_allclose(features[1], features[0], rtol=0, atol=1e-8)
    assert np.abs(features[2] - features[0]).max() > 1e-4  # another conformer: other features
    energies, forces = member.predict_arrays(record.atomic_numbers,
                                             np.stack([positions, rotated]))
    assert energies[1] == pytest.approx(energies[0], abs=1e-8)
    np.testing.assert_allclose(forces[1], forces[0] @ Rotation.from_euler(
        "xyz", [0.3, -1.1, 2.0]).as_matrix().T, rtol=0, atol=1e-8)


@pytest.mark.parametrize("backend", GRAPH_PES)
def test_ensemble_of_two_has_a_committee_spread(backend, conformer_sets,  # noqa: F811
                                                tmp_path):
    train_set, valid_set = conformer_sets
    out = tmp_path / "run"
    train(train_set, valid_set,  # float32, the default
          TrainingSpec(backend, "dev", ensemble=2, steps=4, steps_per_round=2), out,
          progress=False)
    run = load_run(out)
    assert run.n_members == 2 and run.record.member_seeds == [0, 1]
    prediction = run.predict(valid_set[:1])[0]
    assert prediction.energy.shape == (2, 2) and np.isfinite(prediction.forces).all()
    assert (prediction.energy.std(axis=0) > 1e-4).all()
    atoms = valid_set[0].to_atoms()[0]
    atoms.calc = run.calculator()
    VelocityVerlet(atoms, timestep=0.5 * units.fs).run(3)
    assert atoms.calc.results["energy_std"] > 1e-4
    assert atoms.calc.results["forces_std"].max() > 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", GRAPH_PES)
def test_cuda_training_matches_cpu_predictions(backend, conformer_sets,  # noqa: F811
                                               tmp_path):
    train_set, valid_set = conformer_sets
    train(train_set, valid_set, TrainingSpec(backend, "dev", dtype="float64", device="cuda",
                                             steps=4, steps_per_round=2),
          tmp_path / "run", progress=False)
    on_gpu, on_cpu = load_run(tmp_path / "run", "cuda"), load_run(tmp_path / "run", "cpu")
    assert run_device(on_gpu) == "cuda" and on_gpu.record.device == "cuda"
    for a, b in zip(on_gpu.predict(valid_set), on_cpu.predict(valid_set), strict=True):
        np.testing.assert_allclose(a.energy, b.energy, rtol=0, atol=1e-8)
        np.testing.assert_allclose(a.forces, b.forces, rtol=0, atol=1e-8)
    features = on_gpu.atom_features(valid_set[:1])[0]
    np.testing.assert_allclose(features, on_cpu.atom_features(valid_set[:1])[0], atol=1e-8)


def run_device(run) -> str:
    return next(run.members[0].module.parameters()).device.type


def test_graphs_equal_graph_pes_from_ase(trained, conformer_sets):  # noqa: F811
    """mlipdiv builds each conformer's `AtomicGraph` from its arrays; it must be the graph
    `AtomicGraph.from_ase` builds (same pairs in the same order, no cell, same labels)."""
    from ase import Atoms
    from graph_pes.atomic_graph import AtomicGraph

    from mlipdiv.models.base import conformers, default_dtype

    member = trained.members[0]
    cutoff = member.cutoff(member.config["model"])
    items = conformers(conformer_sets[1])
    with default_dtype(member.dtype):
        ours = member.prepare_all(items)
        for conformer, graph in zip(items, ours, strict=True):
            atoms = Atoms(conformer.numbers, conformer.positions)
            atoms.info["energy"], atoms.arrays["forces"] = conformer.energy, conformer.forces
            theirs = AtomicGraph.from_ase(atoms, cutoff)
            for field in ("Z", "R", "cell", "neighbour_list", "neighbour_cell_offsets"):
                assert torch.equal(getattr(graph, field), getattr(theirs, field)), field
            for key in ("energy", "forces"):
                assert torch.equal(graph.properties[key], theirs.properties[key]), key
            assert graph.cutoff == theirs.cutoff and graph.neighbour_list.shape[1] > 0
