"""`mlipdiv study --plan`: the plan's counts against a real dev-size study, its calibrated
wall time against the measured one, the CLI's JSON, and a bad config refused as by the study."""

from __future__ import annotations

import json
import os
import sys

import pandas as pd
import pytest
from conftest import STUDY_TOML

from mlipdiv.design.designs import load_design
from mlipdiv.study import parse_config
from mlipdiv.study.layout import StudyPaths
from mlipdiv.study.plan import plan_study, read_plan, study_wall_seconds


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    from mlipdiv.cli import main

    monkeypatch.setattr(sys, "argv", ["mlipdiv", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_plan_counts_equal_the_finished_study(finished_study, diverse_store, tmp_path):
    config = parse_config(STUDY_TOML.format(store=diverse_store))
    paths = StudyPaths(finished_study)
    results = pd.read_parquet(paths.results_parquet)
    designs = [load_design(p) for p in sorted(paths.designs.glob("*.json"))]
    schedule = json.loads(paths.settings.read_text())["training_schedule"]

    # before the study: counted from the config, in a directory without a study
    plan = plan_study(config, tmp_path / "new", steps_per_second=100.0)
    assert plan.counted_from == "config"
    assert plan.total_cells == sum(len(d.cells) for d in designs) == results.cell.nunique()
    assert plan.cells == {d.experiment: len(d.cells) for d in designs}
    assert plan.cell_trainings == len(results.drop_duplicates(["cell", "model"]))
    assert plan.trainings == results.run.nunique()
    assert plan.steps_per_cell == {m: s["steps"] for m, s in schedule.items()}
    assert max(results.train_steps) <= plan.steps_per_cell["ani"]
    assert plan.total_steps_left == plan.trainings * plan.steps_per_cell["ani"]
    assert plan.conformers_to_label == 0 and plan.finished == 0
    for design in designs:
        assert plan.grids[design.experiment] == sorted(design.options["grid"])

    # the finished study: counted from its designs, every cell done
    resumed = plan_study(config, finished_study, steps_per_second=100.0)
    assert resumed.counted_from == "designs"
    assert (resumed.total_cells, resumed.trainings) == (plan.total_cells, plan.trainings)
    assert resumed.finished == resumed.cell_trainings and resumed.trainings_left == 0
    assert resumed.total_steps_left == 0


def test_plan_estimate_within_2x_of_the_measured_run(finished_study, diverse_store, tmp_path):
    """The plan the study made as it started (calibrated on this machine) against the wall
    time the same run then took (study.log)."""
    paths = StudyPaths(finished_study)
    plan = read_plan(paths)
    measured = study_wall_seconds(paths)
    assert plan is not None and measured is not None
    estimate = plan.layouts[0].wall_seconds
    print(f"plan estimate {estimate:.1f} s, measured {measured:.1f} s")
    within = measured / 2 <= estimate <= 2 * measured
    # the study itself kept `workers` cores busy; more than that came from other work
    cores, load = os.cpu_count() or 1, os.getloadavg()[0]
    workers = plan.layouts[0].parallel_cells
    if not within and max(plan.calibration.load_average, load) > cores + workers:
        pytest.skip(f"the machine ran other work (load {load:.1f} on {cores} cores): a wall "
                    f"time check means nothing there (estimate {estimate:.1f} s, measured "
                    f"{measured:.1f} s)")
    assert within, (estimate, measured)
    assert plan.calibration.models[0].model == "ani"
    assert plan.calibration.models[0].seconds_per_step > 0
    # the running study's plan leaves out its own start-up (paid before the log's clock);
    # a plan made ahead of the command counts it
    start = plan.calibration.study_start_seconds
    config = parse_config(STUDY_TOML.format(store=diverse_store))
    running, ahead = (plan_study(config, tmp_path, calibration=plan.calibration,
                                 process_started=started).layouts[0].wall_seconds
                      for started in (True, False))
    assert start > 0 and ahead == pytest.approx(running + start)
    # GPU throughput is unknown on this CPU machine unless stated
    assert [layout.wall_seconds for layout in plan.layouts[1:]] == [None, None]
    # the report repeats the plan next to what the run took
    report = paths.report.read_text()
    assert f"The plan made at the start: {plan.trainings} trainings" in report
    assert f"{measured:.0f} s of wall time" in report


def test_plan_json_trains_nothing(monkeypatch, capsys, diverse_store, tmp_path):
    config = tmp_path / "study.toml"
    config.write_text(STUDY_TOML.format(store=diverse_store))
    out = tmp_path / "out"
    code, stdout, err = run_cli(monkeypatch, capsys, "study", config, "--plan", "--json",
                                "--out", out, "--steps-per-second", "50",
                                "--gpu-steps-per-second", "400", "--gpus", "3")
    assert code == 0, err
    plan = json.loads(stdout)
    assert plan["format"] == "mlipdiv-plan" and plan["trainings"] == 6
    gpu = {layout["name"]: layout for layout in plan["layouts"]}["3 GPUs"]
    assert gpu["devices"] == 3 and gpu["wall_seconds"] > 0
    assert gpu["device_hours"] == pytest.approx(gpu["wall_seconds"] * 3 / 3600)
    assert not (out / "runs").exists() and not (out / "cells").exists()


def test_plan_refuses_a_bad_config_as_the_study(monkeypatch, capsys, diverse_store, tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text(STUDY_TOML.format(store=diverse_store).replace(
        'size = "dev"', 'size = "huge"'))
    refusals = []
    for extra in (["--plan"], []):
        code, stdout, err = run_cli(monkeypatch, capsys, "study", config, "--out",
                                    tmp_path / "out", *extra)
        assert code == 2 and not stdout
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "models.size" in lines[0], err
        refusals.append(lines[0])
    assert refusals[0] == refusals[1]
    assert not (tmp_path / "out").exists()


def test_plan_of_a_finished_study_counts_its_designs(monkeypatch, capsys, finished_study):
    code, stdout, err = run_cli(monkeypatch, capsys, "study", finished_study / "config.toml",
                                "--plan", "--out", finished_study)
    assert code == 0, err
    assert "cells counted from the designs" in stdout
    assert "trainings after sharing identical cells: 6; finished: 6; left: 0" in stdout
    assert "0 in all" in stdout


def test_plan_names_a_missing_store(monkeypatch, capsys, tmp_path):
    config = tmp_path / "study.toml"
    config.write_text(STUDY_TOML.format(store=tmp_path / "absent.h5"))
    code, stdout, err = run_cli(monkeypatch, capsys, "study", config, "--plan", "--json",
                                "--out", tmp_path / "out")
    assert code == 2 and not stdout
    assert err.strip() == f"mlipdiv: error: data.store {tmp_path / 'absent.h5'}: no such store"


def test_plan_flags_need_plan(monkeypatch, capsys, diverse_store, tmp_path):
    config = tmp_path / "study.toml"
    config.write_text(STUDY_TOML.format(store=diverse_store))
    code, _, err = run_cli(monkeypatch, capsys, "study", config, "--json",
                           "--out", tmp_path / "out")
    assert code == 2 and "--json: only read with --plan" in err
    assert not (tmp_path / "out").exists()


def test_automatic_grid_estimated_for_generated_data(tmp_path):
    text = """
[data]
n_molecules = 20
conformers = 6
[split]
st = 2
sf = 2
[fixed_budget]
budget = 12
[design]
replicates = 2
"""
    config = parse_config(text)
    plan = plan_study(config, tmp_path / "s", steps_per_second=100.0)
    grid = plan.grids["fixed-budget"]
    # 16 pool molecules of 6 - 2 (CF) conformers: M = 4 is the fewest holding 12 + validation
    assert grid == [4, 5, 7, 9, 12]
    assert plan.cells == {"fixed-budget": 2 * len(grid)}
    assert plan.conformers_to_label == 120 and plan.qm_method == "gfn2-xtb"
    assert any("may drop values the pool cannot fill" in note for note in plan.notes)
