"""A second level of theory as a study axis (`[data] labels = ["default", "gfn1"]`): split
stores keep their named label sets, the config refuses a label set the store lacks, a label
set covering a subset of the conformers restricts every level's cells to the conformers
labelled at all of them (or is refused in one line naming the set and its counts), and a
dev-size study on two real levels (GFN2-xTB and GFN1-xTB, both tblite) gives per-level
results, fits and advice and the report's section "Does the cheap pilot's advice transfer?"."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import STUDY_TOML, labelled_record

from mlipdiv.data import ConformerStore, write_store
from mlipdiv.data.labelsets import add_label_set
from mlipdiv.data.qm import QMMethod
from mlipdiv.data.store_writer import write_subset
from mlipdiv.errors import MlipdivError
from mlipdiv.study import parse_config, run_study

GFN1 = QMMethod("gfn1-xtb")


@pytest.fixture(scope="module")
def two_level_store(diverse_store, tmp_path_factory) -> Path:
    """diverse_store (16 molecules × 8 GFN2-xTB conformers) with a GFN1-xTB label set on 6
    of each molecule's 8 conformers: the expensive level's labelled subset."""
    path = tmp_path_factory.mktemp("levels") / "levels.h5"
    shutil.copy(diverse_store, path)
    add_label_set(path, "gfn1", GFN1, conformers_per_molecule=6, progress=False)
    return path


def _config(store, *lines: str, section: str = "[data]") -> str:
    return STUDY_TOML.format(store=store).replace(section, "\n".join([section, *lines]), 1)


def test_a_subset_store_keeps_every_named_label_set(tmp_path):
    store = tmp_path / "store.h5"
    write_store(store, [labelled_record(s, 4, seed=i) for i, s in enumerate(("O", "CCO", "CN"))],
                "GFN2-xTB (tblite)")
    add_label_set(store, "gfn1", GFN1, n_molecules=2, conformers_per_molecule=2, progress=False)
    subset = tmp_path / "subset.h5"
    with ConformerStore(store) as opened:
        keys = opened.inchikeys
        pairs = [(keys[0], 3), (keys[0], 1), (keys[1], 2), (keys[2], 0)]
        assert write_subset(opened, pairs, subset) == 4
        with ConformerStore(subset) as copied:
            assert copied.label_sets() == opened.label_sets()
            assert copied.check() == {}
            # keys[0]: conformers 0 and 3 labelled (spread), so 3 yes and 1 no; keys[1] none
            first = copied.molecule(keys[0], labels="gfn1")
            assert first.label_mask.tolist() == [True, False]
            assert first.energy[0] == opened.molecule(keys[0], [3], labels="gfn1").energy[0]
            np.testing.assert_array_equal(first.forces[0],
                                          opened.molecule(keys[0], [3], labels="gfn1").forces[0])
            assert not copied.label_mask(keys[1], "gfn1").any()
            assert copied.label_mask(keys[2], "gfn1").tolist() == [True]
            np.testing.assert_array_equal(copied.molecule(keys[0]).energy,
                                          opened.molecule(keys[0], [3, 1]).energy)


def test_the_config_names_the_label_set_a_store_lacks(two_level_store, tmp_path):
    default = parse_config(_config(two_level_store))
    assert default.data.label_sets() == ["default"]
    assert "labels" not in default.comparable()["data"]  # studies before the axis compare equal
    assert default.comparable() == parse_config(
        _config(two_level_store, 'labels = ["default"]')).comparable()
    both = parse_config(_config(two_level_store, 'labels = ["default", "gfn1"]'))
    assert both.comparable()["data"]["labels"] == ["default", "gfn1"]
    for lines, reason in (
            (['labels = ["dft"]'], f"{two_level_store} has no label set 'dft' \\(it has "
                                   "default, gfn1\\)"),
            (['labels = ["gfn1", "gfn1"]'], "list distinct"),
            (["labels = []"], "list distinct")):
        with pytest.raises(MlipdivError, match=f"key data.labels: {reason}") as error:
            parse_config(_config(two_level_store, *lines))
        assert "\n" not in str(error.value)
    generated = ('[data]\nsource = "generate"\nlabels = ["default", "dft"]\n'
                 '[fixed_budget]\nbudget = 12\n')
    with pytest.raises(MlipdivError, match="key data.labels: a generated store holds its own "
                                           "labels only"):
        parse_config(generated)
    # a finished study read back elsewhere needs no store
    text = _config(tmp_path / "gone.h5", 'labels = ["default", "dft"]')
    assert parse_config(text, this_machine=False).data.label_sets() == ["default", "dft"]


def test_a_grid_the_labelled_subset_cannot_fill_is_one_line(diverse_store, tmp_path):
    store = tmp_path / "few.h5"
    shutil.copy(diverse_store, store)
    add_label_set(store, "gfn1", GFN1, n_molecules=5, progress=False)
    text = _config(store, 'labels = ["default", "gfn1"]')
    with pytest.raises(MlipdivError) as error:
        run_study(parse_config(text), text, tmp_path / "study", progress=False)
    message = str(error.value)
    assert "\n" not in message
    assert "cannot fill" in message or "pool" in message, message
    assert "'gfn1' labels 40/128 conformers of 5/16 molecules" in message, message


def test_a_study_on_two_levels_of_theory(two_level_store, tmp_path):
    """The same cells trained and scored on GFN2-xTB (default) and GFN1-xTB (a named set on
    6 of 8 conformers per molecule): the study draws from the 96 conformers labelled at both,
    results carry a `labels` column, runs, fits and advice are per level, the report compares
    the levels' optima and exponents with a verdict."""
    from mlipdiv.report import write_report

    text = (_config(two_level_store, 'labels = ["default", "gfn1"]')
            .replace('size = "dev"', 'size = "dev"\nsteps = 12')
            .replace("conformers = [1, 2, 4]", "conformers = [1, 4]")
            # 5 labelled pool conformers a molecule: budget 12 needs M >= 3
            .replace("molecules = [2, 4, 6]", "molecules = [3, 4, 6]"))
    out = tmp_path / "levels"
    report = write_report(run_study(parse_config(text), text, out, progress=False))
    with ConformerStore(out / "data.h5") as used:  # the conformers labelled at both levels
        assert used.total_conformers() == 96 and len(used) == 16
        assert used.label_counts("gfn1")["labelled_conformers"] == 96
    summary = json.loads((out / "data.json").read_text())
    assert summary["coverage"]["gfn1"]["labelled_conformers"] == 96
    results = pd.read_parquet(out / "results.parquet")
    assert set(results["labels"]) == {"default", "gfn1"} and set(results.model) == {"ani"}
    cells = results.groupby("labels").cell.apply(frozenset)
    assert cells["default"] == cells["gfn1"] and len(cells["default"]) >= 5
    assert not set(results[results["labels"] == "default"].run) & set(
        results[results["labels"] == "gfn1"].run)
    assert len(list((out / "cells").glob("*__ani-gfn1.json"))) == len(cells["gfn1"])
    # each level is scored against its own labels: GFN1 and GFN2 energies differ by eV, so
    # a model trained on one level would be far off the other
    for run in (out / "runs").glob("*/ani-gfn1/run.json"):
        assert json.loads(run.read_text())["meta"]["labels"] == "gfn1"
    fits = json.loads((out / "fit.json").read_text())
    assert {f["model"] for f in fits["fits"]} == {"ani/default", "ani/gfn1"}
    advice = json.loads((out / "advice.json").read_text())["advice"]
    assert {a["model"] for a in advice} == {"ani/default", "ani/gfn1"}
    auroc = pd.read_csv(out / "domain" / "auroc.csv")
    assert set(auroc.model) == {"ani/default", "ani/gfn1"}
    html = report.read_text()
    assert "Does the cheap pilot&#x27;s advice transfer?" in html
    assert "Levels at budget 12" in html and "Fitted exponents" in html
    assert "GFN1-xTB (tblite)" in html and "Verdict:" in html
    assert "Does pretraining move the optimum?" not in html
    assert {"levels_cf", "levels_st"} <= {p.stem for p in (out / "figures").glob("levels_*")}
    verdicts = [line.split("Verdict: ")[1].split(":")[0] for line in
                html.split("<li>") if "Verdict: " in line]
    assert verdicts and set(verdicts) <= {"transfers", "differs", "not determined"}
    print("\n".join(line.split("</li>")[0] for line in html.split("<li>")
                    if "Levels at" in line or "Fitted exponents" in line))


def test_the_example_pretrains_on_one_level_and_fine_tunes_on_both():
    """examples/levels_of_theory.toml: GFN2-xTB and DFT label sets, every cell from one
    pretrained start (read back: its store and start are made by the commands it lists)."""
    from mlipdiv.study.config import load_config

    example = Path(__file__).resolve().parents[1] / "examples" / "levels_of_theory.toml"
    config = load_config(example, this_machine=False)
    assert config.data.label_sets() == ["default", "dft"]
    assert config.models.starts() == ["pretrained"] and config.models.e0 == "refit"
    text = example.read_text()
    assert "ethanol 6.3 s" in text and "toluene 22 s" in text
    from mlipdiv.study.cells import model_label

    assert model_label("ani", "pretrained", config.models.starts(), "dft",
                       config.data.label_sets()) == "ani/dft"
    assert model_label("ani", "pretrained", ["scratch", "pretrained"], "dft",
                       ["default", "dft"]) == "ani/pretrained/dft"


def _fit(model: str, alpha: tuple[float, float, float], accepted: bool = True):
    from mlipdiv.study.fit import SurfaceFit

    return SurfaceFit.model_construct(
        model=model, selection="random-random", split="st", metric="m",
        form="molecules-only", accepted=accepted, params={"a": 1.0, "alpha": alpha[0]},
        params_ci={"a": (0.5, 2.0), "alpha": alpha[1:]})


def test_level_verdicts_from_the_intervals_compare_within_each_start():
    """Optima and exponents are compared between levels of one (model, start) only: the
    verdict words are the section's (transfers / differs / not determined)."""
    from test_report import _advice

    from mlipdiv.report.architectures import (
        axis_group,
        exponent_comparison,
        optimum_comparison,
    )

    level = axis_group(-1)
    lines = optimum_comparison([
        _advice("ani/scratch/default", 4, (3, 5), 6, (5, 8)),
        _advice("ani/scratch/dft", 12, (10, 16), 2, (1, 2)),
        _advice("ani/pretrained/default", 4, (3, 8), 6, (3, 8)),
        _advice("ani/pretrained/dft", 6, (4, 10), 4, (2, 6))], "level", "differs",
        "transfers", level)
    assert len(lines) == 2
    pretrained, scratch = lines  # sorted by the rest of the label
    assert "Levels at budget 24, random-random, ani/pretrained" in pretrained
    assert "Verdict: transfers" in pretrained and "ani/scratch" not in pretrained
    assert "Verdict: differs" in scratch and "ani/scratch/default vs ani/scratch/dft" in scratch
    apart = exponent_comparison([_fit("ani/default", (0.3, 0.2, 0.4)),
                                 _fit("ani/dft", (0.9, 0.7, 1.1))], "level", "differs",
                                "transfers", level)
    assert "alpha = 0.30 [0.20, 0.40]" in apart[0] and "Verdict: differs" in apart[0]
    same = exponent_comparison([_fit("ani/default", (0.3, 0.2, 0.6)),
                                _fit("ani/dft", (0.5, 0.4, 1.1))], "level", "differs",
                               "transfers", level)
    assert "Verdict: transfers" in same[0]
    rejected = exponent_comparison([_fit("ani/default", (0.3, 0.2, 0.6)),
                                    _fit("ani/dft", (0.5, 0.4, 1.1), accepted=False)],
                                   "level", "differs", "transfers", level)
    assert "Verdict: not determined" in rejected[0] and "ani/dft: no accepted fit" in rejected[0]
