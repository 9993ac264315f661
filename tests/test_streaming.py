"""Training streamed from a store (`models.streaming`): the same run as in memory, resumable,
with statistics, E0s and fingerprint equal to the in-memory ones, and one-line errors."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import labelled_record

from mlipdiv.data import write_store
from mlipdiv.errors import FieldError, MlipdivError
from mlipdiv.models import StoreTrainingSet, TrainingSpec, fit_e0, potential_class, train
from mlipdiv.models.train_run import data_fingerprint, training_statistics
from mlipdiv.models.training import batch_orders

SMILES = ["CCO", "CC(=O)N", "c1ccccc1O", "OC=O"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A training store (4 molecules x 6 GFN2-xTB conformers, one of them energy-only in
    `masked.h5`), its records, and validation records (2 conformers each)."""
    records = [labelled_record(s, 8, seed=i) for i, s in enumerate(SMILES)]
    train_set, valid_set = [r.subset(range(6)) for r in records], [r.subset(range(6, 8))
                                                                   for r in records]
    folder = tmp_path_factory.mktemp("streaming")
    write_store(folder / "train.h5", train_set, "GFN2-xTB (tblite)")
    with_masked = [*train_set[:-1], train_set[-1].subset(range(6))]
    with_masked[-1].forces = None
    write_store(folder / "masked.h5", with_masked, "GFN2-xTB (tblite)")
    return folder, train_set, valid_set


def _store_order(path, records):
    """Records in the store's molecule order (what a read of the whole store gives)."""
    return sorted(records, key=lambda r: r.inchikey)


def _weights(run_dir) -> dict:
    """The member's tensors (a graph-pes state_dict also holds plain extra state)."""
    state = torch.load(run_dir / "member-0" / "model.pt", weights_only=True)["state_dict"]
    return {k: v.double() for k, v in state.items() if isinstance(v, torch.Tensor)}


def _history(run_dir) -> list[dict]:
    return json.loads((run_dir / "run.json").read_text())["members"][0]["history"]


@pytest.mark.parametrize("model, dtype, workers, tolerance", [
    ("ani", "float64", 0, 1e-10),
    ("schnet", "float32", 1, 1e-5),
])
def test_streamed_training_equals_in_memory(stores, tmp_path, model, dtype, workers,
                                            tolerance):
    folder, train_set, valid_set = stores
    spec = TrainingSpec(model, "dev", dtype=dtype, steps=6, steps_per_round=3, seed=3)
    memory = train(_store_order(folder / "train.h5", train_set), valid_set, spec,
                   tmp_path / "memory", progress=False)
    streamed = train(StoreTrainingSet(folder / "train.h5", workers=workers), valid_set, spec,
                     tmp_path / "streamed", progress=False)
    a, b = _weights(memory), _weights(streamed)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0,
                                   atol=tolerance, err_msg=name)
    for h1, h2 in zip(_history(memory), _history(streamed), strict=True):
        assert h1["train_loss"] == pytest.approx(h2["train_loss"], rel=tolerance)
        assert h1["valid_loss"] == pytest.approx(h2["valid_loss"], rel=tolerance)
    one, two = (json.loads((d / "run.json").read_text()) for d in (memory, streamed))
    assert one["spec"] == two["spec"]  # the same data fingerprint: the same run
    assert one["e0"] == two["e0"]


def test_streamed_run_resumes_where_it_stopped(stores, tmp_path):
    folder, _, valid_set = stores
    spec = TrainingSpec("ani", "dev", dtype="float64", steps=8, steps_per_round=2)
    whole = train(StoreTrainingSet(folder / "train.h5", workers=0), valid_set, spec,
                  tmp_path / "whole", progress=False)
    stopped: list[int] = []

    def stop_after_two(member, stats):
        if stats.epoch == 2:
            stopped.append(stats.step)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(StoreTrainingSet(folder / "train.h5", workers=1), valid_set, spec,
              tmp_path / "resumed", progress=False, on_epoch=stop_after_two)
    assert stopped == [4]
    resumed = train(StoreTrainingSet(folder / "train.h5", workers=1), valid_set, spec,
                    tmp_path / "resumed", progress=False)
    a, b = _weights(whole), _weights(resumed)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-10, err_msg=name)
    assert [h["step"] for h in _history(resumed)] == [2, 4, 6, 8]


def test_scan_matches_the_in_memory_figures(stores):
    folder, train_set, _ = stores
    records = _store_order(folder / "train.h5", train_set)
    streamed = StoreTrainingSet(folder / "train.h5", workers=0)
    cutoff = potential_class("mace").cutoff(potential_class("mace").sizes["dev"].model)
    scan = streamed.scan(cutoff)
    assert scan.fingerprint == data_fingerprint(records)
    stats = training_statistics(records, cutoff)
    assert scan.avg_num_neighbors == stats["avg_num_neighbors"]
    assert scan.force_rms == pytest.approx(stats["force_rms"], rel=1e-14)
    assert streamed.fit_e0(scan) == fit_e0(records)
    # the set reads conformers as the in-memory path flattens them
    assert len(streamed) == sum(r.n_conformers for r in records)
    last = streamed[len(streamed) - 1]
    np.testing.assert_array_equal(last.positions, records[-1].positions[-1])
    assert last.energy == records[-1].energy[-1]


def test_a_selection_of_pairs_matches_its_records(stores):
    folder, train_set, _ = stores
    pairs = [(train_set[1].inchikey, 4), (train_set[0].inchikey, 2), (train_set[1].inchikey, 0)]
    streamed = StoreTrainingSet(folder / "train.h5", pairs, workers=0)
    records = [train_set[1].subset([4, 0]), train_set[0].subset([2])]
    assert streamed.scan(5.0).fingerprint == data_fingerprint(records)
    assert [c.energy for c in streamed] == [*records[0].energy, *records[1].energy]
    with pytest.raises(MlipdivError, match="has 6 conformers, asked for index 9"):
        StoreTrainingSet(folder / "train.h5", [(train_set[0].inchikey, 9)])


def test_energy_only_conformers_stream_masked(stores):
    folder, _, _ = stores
    streamed = StoreTrainingSet(folder / "masked.h5", workers=0)
    assert sum(not s.has_forces for s in streamed.summaries) == 1
    assert sum(np.isnan(c.forces).all() for c in streamed) == 6


def test_batch_orders_are_the_in_memory_stream():
    orders = batch_orders(12, 5, 3, 0)
    first = [next(orders) for _ in range(6)]
    assert [len(o) for o in first] == [5, 5, 2, 5, 5, 2]
    assert sorted(np.concatenate(first[:3])) == list(range(12))
    resumed = batch_orders(12, 5, 3, 4)
    np.testing.assert_array_equal(next(resumed), first[4])


def test_bad_store_path_is_one_line(monkeypatch, capsys, tmp_path, stores):
    from mlipdiv.cli import main

    folder, _, _ = stores
    for path, fragment in ((tmp_path / "absent.h5", "no such store"),
                           (folder, "is a directory")):
        with pytest.raises(MlipdivError, match=fragment):
            StoreTrainingSet(path)
    xyz = tmp_path / "train.xyz"
    xyz.write_text("")
    monkeypatch.setattr(sys, "argv", ["mlipdiv", "train", "--train", str(xyz), "--valid",
                                      str(folder / "train.h5"), "--stream", "--model", "ani",
                                      "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--train" in err and "reads a store (.h5)" in err


def test_stream_options_are_checked():
    with pytest.raises(FieldError, match="only with stream"):
        TrainingSpec("ani", "dev", loader_workers=2).run_size()
    with pytest.raises(FieldError, match="0 or more"):
        TrainingSpec("ani", "dev", stream=True, loader_workers=-1).run_size()


def test_train_command_streams_a_store(monkeypatch, capsys, tmp_path, stores):
    from mlipdiv.cli import main

    folder, _, valid_set = stores
    write_store(tmp_path / "valid.h5", valid_set, "GFN2-xTB (tblite)")
    monkeypatch.setattr(sys, "argv", [
        "mlipdiv", "train", "--train", str(folder / "train.h5"), "--valid",
        str(tmp_path / "valid.h5"), "--model", "ani", "--size", "dev", "--steps", "2",
        "--steps-per-round", "1", "--stream", "--loader-workers", "0", "--out",
        str(tmp_path / "run")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "complete" and record["n_train"] == 24
    assert "streamed from" in (tmp_path / "run" / "train.log").read_text()


def test_a_study_cell_streams_to_the_same_run(diverse_store, tmp_path):
    """`[models] stream = true`: every cell's spec streams, a streamed cell trains to the
    weights of the in-memory cell, and the key is not part of what makes a study (a config
    with it compares equal to one without)."""
    from conftest import STUDY_TOML

    from mlipdiv.study import parse_config
    from mlipdiv.study.cells import cell_tasks, train_cell
    from mlipdiv.study.layout import StudyPaths
    from mlipdiv.study.runner import design_step, split_step

    plain = STUDY_TOML.format(store=diverse_store)
    text = plain.replace('size = "dev"', 'size = "dev"\nstream = true\nloader_workers = 0')
    config = parse_config(text)
    assert config.comparable() == parse_config(plain).comparable()
    paths = StudyPaths(tmp_path / "study")
    paths.root.mkdir()
    split_step(config, diverse_store, paths)
    tasks = cell_tasks(config, paths, design_step(config, paths))
    assert {(t.spec.stream, t.spec.loader_workers) for t in tasks} == {(True, 0)}
    task = tasks[0]
    short = replace(task.spec, steps=4, steps_per_round=2, dtype="float64")
    streamed = train_cell(task.design, task.cell_id, short, tmp_path / "streamed",
                          progress=False)
    memory = train_cell(task.design, task.cell_id,
                        replace(short, stream=False, loader_workers=None),
                        tmp_path / "memory", progress=False)
    a, b = _weights(memory), _weights(streamed)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-10, err_msg=name)
    with pytest.raises(MlipdivError, match="models.loader_workers: only with stream"):
        parse_config(plain.replace('size = "dev"', 'size = "dev"\nloader_workers = 1'))
