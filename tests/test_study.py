"""The one-command study: config validation, error-surface fit, budget advice, and a dev-size
study end to end (local process pool, resume after kill -9, Ray on a local instance)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import STUDY_TOML

from mlipdiv import cli
from mlipdiv.errors import MlipdivError
from mlipdiv.study import (
    PRESETS,
    load_config,
    load_preset,
    parse_config,
    parse_weights,
    run_study,
)
from mlipdiv.study.layout import StudyPaths
from mlipdiv.study.runner import check_writable

N_CELLS = 6  # 3 fixed-budget + 3 fixed-molecules cells, one model
MLIPDIV = str(Path(sys.executable).with_name("mlipdiv"))


# ---------------------------------------------------------------- config
@pytest.mark.parametrize("name", PRESETS)
def test_presets_validate(name):
    config = load_preset(name)
    assert config.experiments() == ["fixed-budget", "fixed-molecules"]


@pytest.mark.parametrize("text, message", [
    ("colour = 1\n[fixed_budget]\nbudget = 8", "unknown key colour"),
    ("[fixed_budget]\nbudget = 8\nspeed = 2", "unknown key fixed_budget.speed"),
    ("[fixed_budget]\nbudget = 'many'", "key fixed_budget.budget"),
    ("[fixed_budget]\nbudget = 10000", "exceeds the generated data"),
    ("[fixed_budget]\nbudget = 8\nmolecules = [2, 2]", "repeats"),
    ("[fixed_budget]\nbudget = 8\nmolecules = [16]", "exceeds the budget"),
    ("[fixed_budget]\nbudget = 8\n[advice]\nweights = {ood = 1.0}", "no OOD set"),
    ("[data]\nsource = 'store'\n[fixed_budget]\nbudget = 8", "needs data.store"),
    ("[executor]\naddress = 'x:1'\n[fixed_budget]\nbudget = 8", "only used with kind = 'ray'"),
    ("name = 'x'", "at least one experiment"),
    ("[fixed_budget\n", "not valid TOML"),
    ("[fixed_budget]\nbudget = 8\n[advice]\nweights = {cf = nan}", "key advice.weights.cf"),
    ("[fixed_budget]\nbudget = 8\n[data]\ntemperature = inf", "key data.temperature"),
])
def test_bad_config_names_key_and_reason(text, message):
    with pytest.raises(MlipdivError, match=message):
        parse_config(text, "bad.toml")


def test_cli_prints_preset_and_rejects_bad_config(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["mlipdiv", "study", "--print-config", "quick"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert parse_config(printed) == load_preset("quick")
    bad = tmp_path / "bad.toml"
    bad.write_text("[fixed_budget]\nbudget = 8\nwho = 1\n")
    monkeypatch.setattr(sys, "argv", ["mlipdiv", "study", str(bad)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"mlipdiv: error: {bad}: unknown key fixed_budget.who"


def test_unwritable_study_directory_fails_first(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(MlipdivError, match="cannot write the study directory"):
        check_writable(blocker / "study")


def test_data_too_small_names_every_unfillable_cell(diverse_store, tmp_path):
    text = (STUDY_TOML.format(store=diverse_store)
            .replace("budget = 12\nmolecules = [2, 4, 6]", "budget = 13\nmolecules = [3, 13]")
            .replace("conformers = [1, 2, 4]", "conformers = [1, 9]"))
    with pytest.raises(MlipdivError) as error:
        run_study(parse_config(text), text, tmp_path / "small", progress=False)
    message = str(error.value)
    assert "fixed-budget M=13" in message and "fixed-molecules C=9" in message
    assert "M=3:" not in message and "C=1:" not in message
    assert not (tmp_path / "small" / "runs").exists()


def test_a_bad_value_in_a_study_is_named_by_its_config_key(diverse_store, tmp_path):
    text = STUDY_TOML.format(store=diverse_store).replace("st = 1\n", "st = 999\n")
    with pytest.raises(MlipdivError, match=r"^config key split\.st 999: exceeds") as error:
        run_study(parse_config(text), text, tmp_path / "big", progress=False)
    assert "--" not in str(error.value)


# ---------------------------------------------------------------- advice weights
def test_weights_parsing():
    assert parse_weights("cf=1, st=2.5,sf=0") == {"cf": 1.0, "st": 2.5, "sf": 0.0}
    for bad in ("cf", "xx=1", "cf=-1", "cf=0", "cf=nan", "st=inf"):
        with pytest.raises(MlipdivError, match=r"^advice\.weights"):
            parse_weights(bad)


# ---------------------------------------------------------------- the study end to end
def _results(study: Path) -> pd.DataFrame:
    return pd.read_parquet(StudyPaths(study).results_parquet)


def test_study_end_to_end(finished_study):
    paths = StudyPaths(finished_study)
    results = _results(finished_study)
    splits = sorted(results.split.unique())
    assert {"cf", "st"} <= set(splits)
    assert len(results) == N_CELLS * len(splits)
    assert not results.duplicated(["cell", "model", "split"]).any()
    assert set(results.experiment) == {"fixed-budget", "fixed-molecules"}
    budget = results[results.experiment == "fixed-budget"]
    assert (budget.N == 12).all() and sorted(budget.M.unique()) == [2, 4, 6]
    assert np.allclose(results.M * results.C, results.N)
    for column in ("selection", "div_n_scaffolds", "div_mean_tanimoto_distance",
                   "energy_mae_mev_per_atom_ci_low", "forces_mae_mev_per_angstrom_ci_high"):
        assert column in results
    assert len(pd.read_csv(paths.results_csv)) == len(results)
    fits = json.loads(paths.fit.read_text())["fits"]
    assert {f["split"] for f in fits} >= {"cf", "st"}
    advice = json.loads(paths.advice.read_text())["advice"]
    assert advice and advice[0]["n_molecules"] * advice[0]["conformers_per_molecule"] <= 12
    log = paths.log.read_text()
    assert log.count(" done in ") == N_CELLS
    for name in ("data", "profile", "splits", "report"):
        assert (finished_study / {"data": "profile.json", "profile": "profile.png",
                                  "splits": "splits/manifest.json",
                                  "report": "report.html"}[name]).exists()


def test_rerun_skips_finished_cells_and_changed_config_is_refused(finished_study):
    paths = StudyPaths(finished_study)
    config_text = paths.config.read_text()
    run_study(parse_config(config_text), config_text, finished_study, progress=False)
    assert paths.log.read_text().count(" done in ") == N_CELLS
    changed = config_text.replace('size = "dev"', 'size = "fast"')
    with pytest.raises(MlipdivError, match=r"different config \(keys models.size[,)]"):
        run_study(parse_config(changed), changed, finished_study, progress=False)


def _copy_without_cells(study: Path, destination: Path, keep_cells: int = 0) -> list[Path]:
    """A copy of a finished study whose trainings and results are gone except `keep_cells`."""
    shutil.copytree(study, destination)
    paths = StudyPaths(destination)
    cell_files = sorted((destination / "cells").glob("*.json"))
    for cell_file in cell_files[keep_cells:]:
        cell_file.unlink()
        model_runs = destination / "runs" / cell_file.stem.split("__")[0]
        shutil.rmtree(model_runs)
    for path in (paths.results_parquet, paths.results_csv, paths.fit, paths.advice, paths.log):
        path.unlink()
    return cell_files[keep_cells:]


def _training_in_progress(study: Path) -> bool:
    """Some run has checkpointed an epoch and is not complete."""
    for run_file in (study / "runs").glob("*/*/run.json"):
        try:
            status = json.loads(run_file.read_text()).get("status")
        except (OSError, json.JSONDecodeError):
            continue
        if status == "training" and any(run_file.parent.rglob("checkpoint.pt")):
            return True
    return False


def _kill_when(command: list[str], ready, timeout: float) -> None:
    """Start `command`, wait until `ready()` holds, then kill -9 it (failing if it ended)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None and not ready():
        time.sleep(0.1)
    assert process.poll() is None, f"{command[1]} finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def test_resume_after_kill_loses_and_duplicates_no_cell(finished_study, tmp_path):
    study = tmp_path / "resumed"
    kept = 3
    _copy_without_cells(finished_study, study, keep_cells=kept)
    command = [MLIPDIV, "study", str(study / "config.toml"), "--out", str(study), "--no-report"]
    cells = study / "cells"

    def midway() -> bool:
        done = list(cells.glob("*.json")) if cells.exists() else []
        return kept < len(done) < N_CELLS and _training_in_progress(study)

    _kill_when(command, midway, timeout=90)
    finished_before = {p.name: p.stat().st_mtime_ns for p in cells.glob("*.json")
                       if not p.name.startswith(".")}  # not a killed writer's temporary
    assert kept < len(finished_before) < N_CELLS
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    results = _results(study)
    assert len(results) == N_CELLS * results.split.nunique()
    assert not results.duplicated(["cell", "model", "split"]).any()
    for name, mtime in finished_before.items():
        assert (cells / name).stat().st_mtime_ns == mtime  # not redone


def test_ray_executor_on_a_local_instance(finished_study, tmp_path):
    pytest.importorskip("ray")
    study = tmp_path / "ray"
    redone = _copy_without_cells(finished_study, study, keep_cells=N_CELLS - 1)
    text = StudyPaths(study).config.read_text().replace("workers = 2",
                                                        'kind = "ray"\nworkers = 1')
    run_study(parse_config(text), text, study, progress=False)
    assert all(path.exists() for path in redone)
    results = _results(study)
    assert len(results) == N_CELLS * results.split.nunique()
    assert "(ray executor" in StudyPaths(study).log.read_text()


def test_domain_step_resumes_and_feeds_the_report(finished_study, tmp_path):
    from matplotlib import pyplot as plt

    from mlipdiv.domain import DomainEvaluation
    from mlipdiv.report.domain_section import study_section
    from mlipdiv.study.domain_step import AUROC_CSV, study_runs, study_step

    paths = StudyPaths(finished_study)
    runs = study_runs(finished_study)
    assert sorted(r.experiment for r in runs) == ["fixed-budget", "fixed-molecules"]
    assert all(r.evaluation_path.exists() for r in runs)  # the study ran the step
    stamps = [r.evaluation_path.stat().st_mtime_ns for r in runs]
    study_step(finished_study)
    assert [r.evaluation_path.stat().st_mtime_ns for r in runs] == stamps
    later = runs[0].evaluation_path.stat().st_mtime + 5
    os.utime(runs[0].result_path, (later, later))  # the cell was retrained: evaluate again
    study_step(finished_study)
    assert runs[0].evaluation_path.stat().st_mtime_ns != stamps[0]
    assert runs[1].evaluation_path.stat().st_mtime_ns == stamps[1]

    table = pd.read_csv(paths.domain / AUROC_CSV)
    assert set(table.split) == set(_results(finished_study).split)
    assert {"latent_distance_max", "density_nll_max", "tanimoto_distance",
            "quests_dh_max"} <= set(table.score)
    in_distribution = table.split == "cf"
    assert table[in_distribution].auroc_vs_in_distribution.isna().all()
    assert table[~in_distribution].auroc_vs_in_distribution.between(0, 1).all()
    evaluation = DomainEvaluation.model_validate_json(runs[1].evaluation_path.read_text())
    rows = table[table.cell == runs[1].cell].set_index(["split", "score"])
    for row in evaluation.scores:
        written = rows.at[(row.split, row.score), "spearman_energy"]
        assert (pd.isna(written) and row.spearman_energy is None
                or written == pytest.approx(row.spearman_energy))

    section = study_section(paths, load_config(paths.config))
    assert section.html.count("<table>") == 1 and "latent_distance_max" in section.html
    (name, _, figure), = section.figures
    headline = max(runs, key=lambda r: (r.n_train, r.n_molecules))
    curves = DomainEvaluation.model_validate_json(headline.evaluation_path.read_text()).curves
    assert name.startswith("domain_retention_")
    assert len(figure.axes) == len({c.split for c in curves})  # splits with predictions
    plt.close(figure)
    assert "Applicability domain" in paths.report.read_text()
    assert study_section(StudyPaths(tmp_path), load_config(paths.config)) is None


# ---------------------------------------------------------------- the protocol
def test_cf_is_scored_on_each_cells_own_training_molecules(finished_study):
    from mlipdiv.design import load_design

    paths = StudyPaths(finished_study)
    molecules = pd.read_parquet(paths.results_molecules)
    cf_rows = _results(finished_study).query("split == 'cf'")
    assert len(cf_rows) == N_CELLS and (cf_rows.scope == "training molecules").all()
    trained = {cell.id: {key for key, _ in cell.train}
               for design in (finished_study / "designs").glob("*.json")
               for cell in load_design(design).cells}
    for row in cf_rows.itertuples():
        scored = set(molecules.query("cell == @row.cell and split == 'cf'").inchikey)
        assert 0 < len(scored) <= row.M and scored <= trained[row.cell]
        assert row.n_molecules == len(scored)
    smallest = cf_rows.loc[cf_rows.M.idxmin()]
    assert smallest.n_molecules <= 2  # M = 2: never the other pool molecules' CF conformers


def test_every_cell_trains_the_same_number_of_steps(finished_study):
    paths = StudyPaths(finished_study)
    schedule = json.loads(paths.settings.read_text())["training_schedule"]["ani"]
    assert schedule["largest_cell_conformers"] == 12  # N = 12 = fixed-molecules 3 × 4
    runs = [json.loads(p.read_text()) for p in (finished_study / "runs").glob("*/*/run.json")]
    assert len(runs) == N_CELLS
    for run in runs:
        assert run["schedule"]["max_steps"] == schedule["steps"]
        for member in run["members"]:
            assert (member["steps"] == schedule["steps"]
                    or member["stopped_by"] == "early-stopping")
    results = _results(finished_study)
    assert {"train_steps", "best_step", "converged",
            "div_effective_conformers_per_molecule"} <= set(results.columns)
    html = paths.report.read_text()
    assert f"{schedule['steps']} optimiser steps for every cell" in html


def test_identical_cells_of_both_experiments_share_one_training(diverse_store, tmp_path):
    from mlipdiv.study.cells import cell_tasks
    from mlipdiv.study.runner import design_step, split_step

    text = STUDY_TOML.format(store=diverse_store).replace("conformers = [1, 2, 4]",
                                                          "conformers = [1, 4]")
    text = text.replace("molecules = [2, 4, 6]", "molecules = [3, 6]")
    config = parse_config(text)
    paths = StudyPaths(tmp_path / "shared")
    paths.root.mkdir()
    split_step(config, diverse_store, paths)
    tasks = cell_tasks(config, paths, design_step(config, paths))
    shared = [t for t in tasks if t.shares_run_of]
    # fixed-budget M = 3 × C = 4 is fixed-molecules M = 3, C = 4: one training, two rows
    assert len(shared) == 1 and shared[0].cell_id.startswith("fixed-molecules/M3-C4")
    assert shared[0].shares_run_of.startswith("fixed-budget/M3-C4")
    first = next(t for t in tasks if t.cell_id == shared[0].shares_run_of)
    assert shared[0].run_dir == first.run_dir and shared[0].result_path != first.result_path


def test_verify_end_to_end_resumes_after_kill(finished_study, tmp_path):
    from mlipdiv.report import write_report
    from mlipdiv.study.verify import load_verifications, verify_directory

    study = tmp_path / "verified"
    shutil.copytree(finished_study, study)
    command = [MLIPDIV, "verify", str(study), "--budget", "12", "--replicates", "2"]
    cells = verify_directory(study, 12) / "cells"
    _kill_when(command, lambda: cells.exists() and bool(list(cells.glob("*.json"))),
               timeout=120)
    finished_before = {p.name: p.stat().st_mtime_ns for p in cells.glob("*.json")
                       if not p.name.startswith(".")}  # not a killed writer's temporary
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for name, mtime in finished_before.items():
        assert (cells / name).stat().st_mtime_ns == mtime  # not redone
    (result,) = load_verifications(study)
    labels = {d.label: d for d in result.designs}
    advised = labels["advised"].n_molecules
    # an extreme the advice equals is replaced by the nearest distinct design: never itself
    assert len({d.n_molecules for d in result.designs}) == len(result.designs) == 3
    heavy = "structure-heavy" if advised != 12 else "one step fewer molecules"
    light = "conformer-heavy" if advised != 2 else "one step more molecules"
    assert set(labels) == {"advised", heavy, light}
    if advised != 2:
        assert labels["conformer-heavy"].n_molecules == 2  # the study grid's smallest M
    else:
        assert labels[light].n_molecules == 4 and "extreme itself" in result.sentence
    if advised != 12:
        assert labels["structure-heavy"].n_molecules == 12  # min(N, pool molecules)
    assert all(abs(d.n_molecules * d.conformers_per_molecule - 12) < 1e-9
               for d in result.designs)
    assert {v.n_replicates for v in result.comparison.designs} == {2}
    assert {d.versus for d in result.comparison.differences} == {heavy, light}
    for value in (*result.comparison.designs, *result.comparison.differences):
        assert value.ci_low <= value.value <= value.ci_high
    assert result.sentence.startswith("At N = 12, advised M = ")
    assert "beat" in result.sentence or "is the" in result.sentence
    # new draws: no verification cell trains on exactly a study cell's conformers
    verify_runs = {p.parent.parent.name for p in
                   (verify_directory(study, 12) / "runs").glob("*/*/run.json")}
    assert len(verify_runs) == len(set(labels[k].n_molecules for k in labels)) * 2
    html = write_report(study).read_text()
    assert "Does the advice hold?" in html and result.sentence[:30] in html


def test_damaged_internal_files_are_redone_or_named(finished_study, tmp_path):
    study = tmp_path / "damaged"
    shutil.copytree(finished_study, study)
    paths = StudyPaths(study)
    cell_file = sorted((study / "cells").glob("*.json"))[0]
    cell_file.write_text('{"rows": [')  # truncated by something outside mlipdiv
    text = paths.config.read_text()
    run_study(parse_config(text), text, study, progress=False)
    assert "damaged or old-format cell result" in paths.log.read_text()
    assert json.loads(cell_file.read_text())["rows"]  # the cell was scored again
    assert len(_results(study)) == N_CELLS * _results(study).split.nunique()
    paths.settings.write_text("{not json")
    damaged = r"study.json: damaged study settings \(.*\); use --force"
    with pytest.raises(MlipdivError, match=damaged):
        run_study(parse_config(text), text, study, progress=False)


def test_a_study_with_two_architectures_compares_them(diverse_store, tmp_path):
    """ANI (descriptors) and SchNet (graph-pes message passing) on the same cells: both are
    trained with the same steps, fitted and advised, and the report compares them."""
    from mlipdiv.report import write_report

    text = STUDY_TOML.format(store=diverse_store).replace(
        'architectures = ["ani"]', 'architectures = ["ani", "schnet"]\nsteps = 24')
    text = text.replace("conformers = [1, 2, 4]", "conformers = [1, 4]")
    report = write_report(run_study(parse_config(text), text, tmp_path / "two", progress=False))
    results = pd.read_parquet(tmp_path / "two" / "results.parquet")
    assert set(results.model) == {"ani", "schnet"}
    per_model = results.groupby("model").cell.nunique()
    assert per_model["ani"] == per_model["schnet"] >= 5
    for run in (tmp_path / "two" / "runs").glob("*/*/run.json"):  # equal compute for both
        assert json.loads(run.read_text())["schedule"]["max_steps"] == 24
    advice = json.loads((tmp_path / "two" / "advice.json").read_text())["advice"]
    assert {a["model"] for a in advice} == {"ani", "schnet"}
    html = report.read_text()
    assert "Architectures compared" in html and "Architectures at budget 12" in html
    assert "Verdict:" in html
    figures = {p.stem for p in (tmp_path / "two" / "figures").glob("architectures_*.png")}
    assert {"architectures_cf", "architectures_st"} <= figures


def test_refine_adds_cells_and_resumes_after_kill(finished_study, tmp_path):
    """`mlipdiv refine` killed (-9) while training an added cell resumes that round: no cell
    trained twice, every round done, the report shows the adaptive pilot."""
    study = tmp_path / "refined"
    shutil.copytree(finished_study, study)
    with open(study / "config.toml", "a") as config:  # a criterion the tiny study cannot meet
        config.write("[adaptive]\nmax_molecule_ratio = 1.0001\n")
    command = [MLIPDIV, "refine", str(study), "--cells", "2", "--per-round", "1"]
    _kill_when(command + ["--no-report"], lambda: _training_in_progress(study), timeout=300)
    pending = json.loads((study / "adaptive.json").read_text())
    assert pending["rounds"] and pending["rounds"][-1]["status"] == "pending"
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    state = json.loads((study / "adaptive.json").read_text())
    assert all(r["status"] == "done" for r in state["rounds"]) and state["stopped"]
    assert sum(len(r["cells"]) for r in state["rounds"]) <= 2
    finished = [line.split(" done in ")[0].split("cell ")[-1]
                for line in StudyPaths(study).log.read_text().splitlines()
                if " done in " in line and "adaptive-r" in line]
    assert finished and len(finished) == len(set(finished))
    results = _results(study)
    assert results.cell.str.startswith("adaptive-r1/").any()
    assert "Adaptive pilot" in (study / "report.html").read_text()


def test_verify_beyond_what_the_pool_supplies_names_the_largest_budget(finished_study,
                                                                       tmp_path):
    from mlipdiv.study import load_config
    from mlipdiv.study.cells import pool_limits
    from mlipdiv.study.verify import run_verify

    study = tmp_path / "big"
    shutil.copytree(finished_study, study)
    paths = StudyPaths(study)
    limits = pool_limits(load_config(paths.config), paths)
    # the advice can place this budget (every pool molecule at its most conformers), but the
    # pool cannot supply all three designs of it
    budget = limits.max_molecules * limits.max_conformers_per_molecule
    with pytest.raises(MlipdivError, match=r"cannot supply the designs .* largest budget it "
                                           r"can supply is N = \d+"):
        run_verify(study, budget, replicates=1, progress=False)
    assert not (study / "verify" / f"N{budget}" / "runs").exists()


def test_automatic_grid_of_a_study_holds_only_cells_the_pool_fills(uneven_store, tmp_path,
                                                                   caplog):
    """Two molecules keep 2 pool conformers after CF, the others 9: the study's automatic
    fixed-budget grid stops below M = 14 (all pool molecules, which it used to propose and
    then fail on) instead of failing, and says which M were eligible; the same M given
    explicitly is refused naming the smallest M that fits."""
    from mlipdiv.design import load_design
    from mlipdiv.study.runner import design_step, split_step

    text = STUDY_TOML.format(store=uneven_store).replace("budget = 12\nmolecules = [2, 4, 6]",
                                                         "budget = 30")
    text = text[:text.index("[fixed_molecules]")] + text[text.index("[design]"):]
    text = text.replace("allow_short = true", "allow_short = false")
    config = parse_config(text)
    paths = StudyPaths(tmp_path / "uneven")
    paths.root.mkdir()
    split_step(config, uneven_store, paths)
    with caplog.at_level("INFO", logger="mlipdiv.study"):
        [path] = design_step(config, paths)
    design = load_design(path)
    assert "of the M from 1 to 14 can be filled" in design.grid_note
    assert design.grid_note in caplog.text
    assert max(design.options["grid"]) < 14
    assert design.cells and not any(cell.short for cell in design.cells)
    assert {cell.n_train for cell in design.cells} == {30}

    explicit = parse_config(text.replace("budget = 30", "budget = 30\nmolecules = [5, 14]"))
    paths = StudyPaths(tmp_path / "explicit")
    paths.root.mkdir()
    split_step(explicit, uneven_store, paths)
    with pytest.raises(MlipdivError, match=r"fixed-budget M=14: cell .* the smallest M that "
                                           r"fits budget 30 is \d+") as error:
        design_step(explicit, paths)
    assert "M=5:" not in str(error.value)
