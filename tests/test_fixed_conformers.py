"""The fixed-conformers experiment (C fixed, M varied): one class in one file
(`design/experiments/fixed_conformers.py`), end to end through design, config, study, fit,
advice and report with no other module naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import STUDY_TOML
from typer.testing import CliRunner

from mlipdiv.cli import app
from mlipdiv.design import DesignOptions, SplitOptions, make_design, make_splits
from mlipdiv.design.experiments import experiment, experiment_names
from mlipdiv.errors import MlipdivError
from mlipdiv.study import parse_config, run_study

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fixed_conformers.toml"


def per_molecule(pairs) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = {}
    for key, index in pairs:
        grouped.setdefault(key, []).append(index)
    return grouped


@pytest.fixture(scope="module")
def pool(diverse_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("fixed-c") / "splits"
    make_splits(diverse_store, out, SplitOptions(cf_molecules=0, st=0, sf=0))
    return out


def test_it_registers_as_the_third_experiment():
    assert experiment_names() == ("fixed-budget", "fixed-molecules", "fixed-conformers")
    kind = experiment("fixed-conformers")
    assert kind.axis == "M" and kind.fixed_field == "conformers"


def test_cells_hold_c_conformers_each_and_grow_by_molecules(pool):
    design = make_design(pool, DesignOptions("fixed-conformers", conformers=3, grid=(2, 4, 8),
                                             replicates=2, seed=1))
    assert [c.n_molecules for c in design.cells] == [2, 4, 8, 2, 4, 8]
    for cell in design.cells:
        counts = {len(v) for v in per_molecule(cell.train).values()}
        assert counts == {3} and cell.conformers_per_molecule == 3
        assert cell.n_train == 3 * cell.n_molecules and cell.remainder == 0
        assert cell.id.startswith(f"fixed-conformers/M{cell.n_molecules}-C3/")
        assert not set(cell.train) & set(cell.valid)
    for replicate in (0, 1):
        cells = [c for c in design.cells if c.replicate == replicate]
        for small, large in zip(cells, cells[1:], strict=False):
            # the same molecules with the same conformers, plus new molecules
            assert set(small.train) <= set(large.train)
    assert design.cells[0].train != design.cells[3].train  # replicates differ


def test_automatic_grid_and_what_fits(pool):
    design = make_design(pool, DesignOptions("fixed-conformers", conformers=2, grid_points=4))
    grid = design.options["grid"]
    assert grid[0] == 1 and grid[-1] == 16 and len(grid) == 4
    assert "automatic grid: 16 of the M from 1 to 16 can be filled with C = 2" in \
        design.grid_note
    with pytest.raises(MlipdivError, match="the pool has only 16 molecules"):
        make_design(pool, DesignOptions("fixed-conformers", conformers=2, grid=(4, 20)))
    with pytest.raises(MlipdivError, match="fixed-conformers needs C >= 1"):
        make_design(pool, DesignOptions("fixed-conformers", grid=(4,)))
    with pytest.raises(MlipdivError, match=r"no M fits C = 8; use a smaller C; or use "):
        make_design(pool, DesignOptions("fixed-conformers", conformers=8, grid=(2,)))


def test_cli_design_takes_its_fixed_c_and_m_grid(pool, tmp_path):
    runner = CliRunner()
    common = ["design", "fixed-conformers", "--splits", str(pool)]
    result = runner.invoke(app, [*common, "--out", str(tmp_path / "d.json"), "--conformers",
                                 "2", "--molecules-grid", "3,6", "--json"])
    assert result.exit_code == 0, result.output
    cells = json.loads(result.output)["cells"]
    assert [(c["n_molecules"], c["n_train"]) for c in cells] == [(3, 6), (6, 12)]
    result = runner.invoke(app, [*common, "--out", str(tmp_path / "e.json"), "--budget", "8"])
    assert result.exit_code != 0
    assert "--budget: not an option of design fixed-conformers" in str(result.exception)


@pytest.mark.parametrize("section, message", [
    ("[fixed_conformers]\nconformers = 2", "key fixed_conformers.molecules: Field required"),
    ("[fixed_conformers]\nconformers = 0\nmolecules = [2]", "key fixed_conformers.conformers"),
    ("[fixed_conformers]\nconformers = 2\nmolecules = [2, 2]", "repeats"),
    ("[fixed_conformers]\nconformers = 2\nmolecules = [64]", "exceeds data.n_molecules"),
    ("[fixed_conformers]\nconformers = 99\nmolecules = [2]", "exceeds data.conformers"),
])
def test_config_section_is_validated_with_its_key(section, message):
    with pytest.raises(MlipdivError, match=message):
        parse_config(section, "bad.toml")


def test_the_example_config_validates():
    config = parse_config(EXAMPLE.read_text(), str(EXAMPLE))
    assert "fixed-conformers" in config.experiments()
    assert config.largest_training_set() >= 64


FIXED_C_TOML = STUDY_TOML.replace(
    "[fixed_budget]\nbudget = 12\nmolecules = [2, 4, 6]\n",
    "[fixed_conformers]\nconformers = 2\nmolecules = [2, 4, 8]\n").replace(
    "[fixed_molecules]\nmolecules = 3\nconformers = [1, 2, 4]",
    "[fixed_molecules]\nmolecules = 4\nconformers = [1, 2, 4]")


def test_a_study_with_fixed_conformers_runs_fits_advises_and_reports(diverse_store, tmp_path):
    from mlipdiv.report import write_report

    text = FIXED_C_TOML.format(store=diverse_store)
    config = parse_config(text)
    assert config.experiments() == ["fixed-molecules", "fixed-conformers"]
    assert config.largest_training_set() == 16  # max(4 × 4, 8 × 2)
    root = run_study(config, text, tmp_path / "study", progress=False)
    results = pd.read_parquet(root / "results.parquet")
    fixed_c = results[results.experiment == "fixed-conformers"]
    assert sorted(fixed_c.M.unique()) == [2, 4, 8] and set(fixed_c.C) == {2}
    # M = 4 × C = 2 is one training set in both experiments: trained once, shared
    shared = results[(results.M == 4) & (results.C == 2)].drop_duplicates("cell")
    assert len(shared) == 2 and shared.shares_run_of.astype(bool).sum() == 1
    fits = json.loads((root / "fit.json").read_text())
    assert fits["fits"] and all(f["n_cells"] >= 5 for f in fits["fits"])
    assert (root / "advice.json").exists()
    html = write_report(root).read_text()
    assert "fixed-conformers: C = 2 conformers per molecule, M ∈ {2, 4, 8}" in html
    assert "fixed-conformers, ani, random-random: CF" in html
