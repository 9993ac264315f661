"""A pretrained start (`TrainingSpec.init_from`): dev-size runs pretrained with mlipdiv itself
(nothing downloads), fine-tuned from the run, its model file and a file saved by mace-torch."""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import labelled_record
from typer.testing import CliRunner

from mlipdiv.cli import app
from mlipdiv.errors import FieldError, MlipdivError
from mlipdiv.models import (
    Schedule,
    TrainingSpec,
    fit_e0,
    load_run,
    potential_class,
    run_size,
    train,
)
from mlipdiv.models.pretrained import load_start
from mlipdiv.models.record import RunRecord
from mlipdiv.models.train_run import training_conformers
from mlipdiv.models.training import fit

# five compositions that separate the E0s of H, C, N and O
SMILES = ["CCO", "CC(=O)N", "c1ccccc1O", "CCN", "OC=O"]
PRETRAIN = dict(size="dev", dtype="float64", steps=6, steps_per_round=3)


@pytest.fixture(scope="module")
def data():
    """Five molecules x six labelled conformers: five for training, one for validation."""
    records = [labelled_record(s, 6, seed=i) for i, s in enumerate(SMILES)]
    return [r.subset(range(5)) for r in records], [r.subset(range(5, 6)) for r in records]


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
    """A pretrained dev run per backend, trained on `data` (load_run of it by backend)."""
    runs = {}

    def get(backend: str):
        if backend not in runs:
            out = tmp_path_factory.mktemp(f"pre-{backend}") / "run"
            train(*data, TrainingSpec(backend, **PRETRAIN), out, progress=False)
            runs[backend] = load_run(out)
        return runs[backend]

    return get


def _save_as_mace_torch(run, path):
    """Member 0's model saved as mace-torch saves one (and MACE-OFF ships): torch.save of the
    module; e3nn's compiled parts warn that torch.jit.save is deprecated (not ours)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`torch.jit.save` is deprecated")
        torch.save(run.members[0].module, path)
    return path


def _predicted(start, records, e0=None) -> np.ndarray:
    """A start's energies of `records` (with E0s `e0` in place of its own), in float64 (one
    model built: MACE's take seconds)."""
    potential = start.potential("float64", e0=e0)
    return np.concatenate([potential.predict_arrays(r.atomic_numbers, r.positions)[0]
                           for r in records])


def _energies(run, records) -> np.ndarray:
    return np.concatenate([p.mean_energy for p in run.predict(records)])


@pytest.mark.parametrize("backend", ["mace", "schnet", "ani"])
def test_finetuning_from_a_run_equals_continuing_its_training(backend, data, pretrained,
                                                                tmp_path):
    """Same data, same E0s (refit on the same labels): the fine-tuned run is the pretrained
    model trained further by the same loop, step for step."""
    train_set, valid_set = data
    start = pretrained(backend)
    spec = TrainingSpec(backend, "dev", dtype="float64", steps=4, steps_per_round=2,
                        init_from=start.path)
    tuned = load_run(train(train_set, valid_set, spec, tmp_path / "tuned", progress=False))
    assert tuned.record.e0 == {**start.record.e0, "note": tuned.record.e0["note"]}
    assert tuned.record.hyperparameters["model"] == start.record.hyperparameters["model"]
    # continuing by hand: the pretrained member, the training loop, the same steps and seed
    potential = potential_class(backend).load(start.path / "member-0" / "model.pt")
    settings = run_size(backend, "dev").training
    fit(potential, potential.prepare_all(training_conformers(train_set)),
        potential.prepare_all(training_conformers(valid_set)), settings, Schedule(4, 2),
        tmp_path / "continued.pt", spec.seed, "continued")
    continued = np.concatenate([potential.predict_arrays(r.atomic_numbers, r.positions)[0]
                                for r in valid_set])
    assert np.allclose(_energies(tuned, valid_set), continued, rtol=0, atol=1e-9)
    # and the start did move: four steps changed the predictions
    assert not np.allclose(_energies(start, valid_set), continued, rtol=0, atol=1e-6)


def test_a_mace_model_file_saved_by_mace_torch_is_a_start(data, pretrained, tmp_path):
    start = pretrained("mace")
    model = start.members[0].module
    assert type(model).__name__ == "ScaleShiftMACE"
    path = _save_as_mace_torch(start, tmp_path / "pretrained.model")
    read = load_start(path, "mace", "float64")
    assert read.config["model"] == start.record.hyperparameters["model"]
    assert read.checksum == hashlib.sha256(path.read_bytes()).hexdigest()
    assert np.allclose(_predicted(read, data[1]), _energies(start, data[1]), rtol=0, atol=1e-9)
    # fine-tuned from the file, in float32: the run remembers the file's checksum
    spec = TrainingSpec("mace", "dev", steps=2, steps_per_round=1, init_from=path)
    out = train(*data, spec, tmp_path / "tuned", progress=False)
    recorded = json.loads((out / "run.json").read_text())["spec"]["init_from"]
    assert recorded == {"checksum": read.checksum, "e0": "refit", "finetune_lr": None,
                        "freeze": []}
    assert load_run(out).record.source.init_from == str(path.resolve())  # where it came from


def test_a_graph_pes_model_file_is_a_start(data, pretrained, tmp_path):
    """A graph-pes AdditionModel saved whole (what graph-pes's `load_model` reads), its parts
    under the user's own names: the SchNet and its offset's E0s come back."""
    from graph_pes.models import AdditionModel, load_model

    start = pretrained("schnet")
    parts = start.members[0].module.models
    path = tmp_path / "schnet.pt"
    torch.save(AdditionModel(energy_offset=parts["offset"], schnet=parts["many_body"]), path)
    assert isinstance(load_model(path), AdditionModel)  # graph-pes's own reader takes it
    read = load_start(path, "schnet", "float64")
    assert read.config["model"] == start.record.hyperparameters["model"]
    assert read.config["e0"] == pytest.approx(list(start.record.e0["energies_ev"].values()))
    assert np.allclose(_predicted(read, data[1]), _energies(start, data[1]), rtol=0, atol=1e-9)
    with pytest.raises(FieldError, match="a graph-pes model \\(AdditionModel\\); this run "
                       "trains mace"):
        load_start(path, "mace")
    torch.save(parts["many_body"], tmp_path / "bare.pt")
    with pytest.raises(FieldError, match="an AdditionModel of an energy offset and a SchNet"):
        load_start(tmp_path / "bare.pt", "schnet")


def test_e0_options_on_labels_shifted_per_element(data, pretrained):
    """Labels = the start's own predictions + c_z per atom of element z: keep keeps the
    start's E0s, shift recovers E0 + c, refit the least-squares E0s of the new labels."""
    start = load_start(pretrained("mace").path, "mace", "float64")
    offset = {1: 0.1, 6: -0.3, 7: 0.2, 8: 0.5}
    predicted = pretrained("mace").predict(data[0])
    shifted = [replace(r, energy=p.mean_energy + sum(offset[int(z)] for z in r.atomic_numbers))
               for r, p in zip(data[0], predicted, strict=True)]
    old = dict(zip(start.config["elements"], start.config["e0"], strict=True))
    assert start.e0("keep", shifted, "float64").energies == old
    shift = start.e0("shift", shifted, "float64")
    assert not shift.regularised
    for z, c in offset.items():
        assert shift.energies[z] == pytest.approx(old[z] + c, abs=1e-8)
    # the shifted E0s go into the model: the start with them predicts the new labels
    labels = np.concatenate([r.energy for r in shifted])
    assert np.allclose(_predicted(start, shifted, shift.energies), labels, rtol=0, atol=1e-8)
    refit = start.e0("refit", shifted, "float64").energies
    assert refit == fit_e0(shifted).energies
    for z, c in offset.items():  # least squares is linear: the fit moves by c
        unshifted = fit_e0([replace(r, energy=p.mean_energy)
                            for r, p in zip(data[0], predicted, strict=True)]).energies
        assert refit[z] == pytest.approx(unshifted[z] + c, abs=1e-8)


def test_the_start_is_refused_in_one_line(data, pretrained, tmp_path):
    mace = pretrained("mace").path
    library_file = _save_as_mace_torch(pretrained("mace"), tmp_path / "mace.model")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    RunRecord(status="training", spec={}).write(unfinished)
    cases = [
        (mace, "ani", "a mace run; this run trains ani"),
        (unfinished, "mace", "a run whose training has not finished"),
        (tmp_path, "mace", "a directory without run.json: not a mlipdiv run"),
        (mace / "member-0" / "model.pt", "ani", "a mlipdiv mace model; this run trains ani"),
        (library_file, "schnet", "a mace-torch model (ScaleShiftMACE); this run trains schnet "
         "(graph-pes)"),
        (mace / "member-0" / "checkpoint.pt", "mace", "not a model file"),
        (tmp_path / "absent", "mace", "no such run directory or model file"),
    ]
    for path, backend, reason in cases:
        out = tmp_path / f"refused-{backend}"
        spec = TrainingSpec(backend, "dev", steps=1, steps_per_round=1, init_from=path)
        with pytest.raises(FieldError) as error:
            train(*data, spec, out, progress=False)
        assert error.value.field == "init_from" and reason in str(error.value)
        assert "\n" not in str(error.value) and not out.exists()
    mace_spec = TrainingSpec("mace", "dev", steps=1, steps_per_round=1, init_from=mace)
    for bad, field in ((dict(e0="keep", init_from=None), "e0"), (dict(e0="half"), "e0"),
                       (dict(finetune_lr=0.0), "finetune_lr"),
                       (dict(freeze=("nothing",)), "freeze"),
                       (dict(freeze=("node_embedding",), init_from=None), "freeze")):
        with pytest.raises(FieldError) as error:
            train(*data, replace(mace_spec, **bad), tmp_path / "bad", progress=False)
        assert error.value.field == field, bad
    # the new labels hold an element the start does not know
    with pytest.raises(FieldError, match="knows no S of the training or validation data"):
        train([labelled_record("CCS", 3)], data[1], mace_spec, tmp_path / "bad",
              progress=False)


def test_resuming_with_another_start_is_refused_and_freeze_holds(data, pretrained, tmp_path):
    start = pretrained("mace")
    spec = TrainingSpec("mace", "dev", dtype="float64", steps=2, steps_per_round=1,
                        init_from=start.path, freeze=("node_embedding", "interactions.0"),
                        finetune_lr=1e-3, e0="keep")
    tuned = load_run(train(*data, spec, tmp_path / "run", progress=False))
    assert tuned.record.hyperparameters["training"]["learning_rate"] == 1e-3
    assert tuned.record.e0["energies_ev"] == start.record.e0["energies_ev"]
    before, after = (dict(run.members[0].module.named_parameters()) for run in (start, tuned))
    for name, parameter in after.items():
        same = torch.equal(parameter, before[name])
        assert same == name.startswith(spec.freeze), name
    library_file = _save_as_mace_torch(start, tmp_path / "mace.model")
    with pytest.raises(FieldError, match="holds a different run"):
        train(*data, replace(spec, init_from=library_file), tmp_path / "run", progress=False)
    with pytest.raises(FieldError, match="holds a different run"):
        train(*data, replace(spec, e0="refit"), tmp_path / "run", progress=False)
    # a run from scratch records no start: its spec is as before this option existed
    assert "init_from" not in start.record.spec


def test_cli_train_init_from(data, pretrained, tmp_path):
    from mlipdiv.data import write_store

    write_store(tmp_path / "train.h5", data[0], "GFN2-xTB (tblite)")
    write_store(tmp_path / "valid.h5", data[1], "GFN2-xTB (tblite)")
    args = ["train", "--train", str(tmp_path / "train.h5"), "--valid",
            str(tmp_path / "valid.h5"), "--model", "mace", "--size", "dev", "--steps", "1",
            "--steps-per-round", "1", "--init-from", str(pretrained("mace").path), "--e0",
            "shift", "--freeze", "node_embedding", "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    spec = json.loads((tmp_path / "run" / "run.json").read_text())["spec"]["init_from"]
    assert (spec["e0"], spec["freeze"]) == ("shift", ["node_embedding"])
    result = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "other"), "--model", "ani"])
    assert isinstance(result.exception, FieldError)  # `main` prints it as its flag, one line
    assert result.exception.as_flag().startswith("--init-from ")
    assert "a mace run; this run trains ani" in result.exception.as_flag()


def test_study_cells_start_from_models_init_from(diverse_store, data, pretrained, tmp_path):
    """`[models] init_from` and `e0` reach every cell's spec, and a cell trains from the
    start (an ANI run pretrained on other molecules)."""
    from conftest import STUDY_TOML

    from mlipdiv.study import parse_config
    from mlipdiv.study.cells import cell_tasks, train_cell
    from mlipdiv.study.layout import StudyPaths
    from mlipdiv.study.runner import design_step, split_step

    start = pretrained("ani").path
    text = STUDY_TOML.format(store=diverse_store).replace(
        'size = "dev"', f'size = "dev"\ninit_from = "{start}"\ne0 = "shift"')
    config = parse_config(text)
    paths = StudyPaths(tmp_path / "study")
    paths.root.mkdir()
    split_step(config, diverse_store, paths)
    tasks = cell_tasks(config, paths, design_step(config, paths))
    assert tasks and {(t.spec.init_from, t.spec.e0) for t in tasks} == {(start.resolve(), "shift")}
    task = tasks[0]
    run = load_run(train_cell(task.design, task.cell_id, replace(task.spec, steps=2,
                                                                 steps_per_round=1),
                              tmp_path / "cell-run", progress=False))
    assert run.record.spec["init_from"]["e0"] == "shift"
    assert run.record.elements == load_run(start).record.elements
    # a study from scratch compares equal to one made before pretrained starts existed
    scratch = parse_config(STUDY_TOML.format(store=diverse_store)).comparable()["models"]
    assert not {"init_from", "e0", "finetune_lr", "freeze"} & set(scratch)
    assert config.comparable()["models"]["e0"] == "shift"
    with pytest.raises(MlipdivError, match="models.e0: only used with init_from"):
        parse_config(STUDY_TOML.format(store=diverse_store).replace(
            'size = "dev"', 'size = "dev"\ne0 = "keep"'))
