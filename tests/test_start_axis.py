"""The study axis `[models] start = ["scratch", "pretrained"]`: both starts train on the same
cells with the same steps, and the results, fits, advice and report are per start. The
pretrained start is an ANI run trained with mlipdiv itself on other molecules (nothing
downloads)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import STUDY_TOML, labelled_record

from mlipdiv.errors import MlipdivError
from mlipdiv.models import TrainingSpec, train
from mlipdiv.study import parse_config, run_study
from mlipdiv.study.cells import label_starts

# molecules not in diverse_store, with its elements (H, C, N, O)
OTHER_SMILES = ["CCO", "CC(=O)N", "CCN", "OC=O", "c1ccncc1"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A dev ANI run pretrained on five other molecules x five conformers."""
    records = [labelled_record(s, 6, seed=i) for i, s in enumerate(OTHER_SMILES)]
    out = tmp_path_factory.mktemp("pretrained") / "run"
    return train([r.subset(range(5)) for r in records], [r.subset(range(5, 6)) for r in records],
                 TrainingSpec("ani", "dev", steps=6, steps_per_round=3), out, progress=False)


def _config(store, *models_lines: str) -> str:
    return STUDY_TOML.format(store=store).replace(
        'size = "dev"', "\n".join(['size = "dev"', *models_lines]))


def test_start_config(diverse_store, pretrained):
    """`start` defaults to today's single start, needs init_from for "pretrained", lists
    distinct starts, names its key in one-line errors; configs without it compare as before."""
    init = f'init_from = "{pretrained}"'
    scratch = parse_config(_config(diverse_store))
    assert scratch.models.starts() == ["scratch"]
    assert parse_config(_config(diverse_store, init)).models.starts() == ["pretrained"]
    for lines, reason in ((['start = ["scratch", "pretrained"]'], "needs init_from"),
                          ([init, 'start = ["scratch", "scratch"]'], "distinct"),
                          ([init, "start = []"], "distinct")):
        with pytest.raises(MlipdivError, match=f"models.start: .*{reason}") as error:
            parse_config(_config(diverse_store, *lines))
        assert "\n" not in str(error.value)
    with pytest.raises(MlipdivError, match="models.start"):
        parse_config(_config(diverse_store, init, 'start = ["warm"]'))
    # studies made before the axis compare equal, with or without a pretrained start
    assert "start" not in scratch.comparable()["models"]
    assert scratch.comparable() == parse_config(
        _config(diverse_store, 'start = ["scratch"]')).comparable()
    assert parse_config(_config(diverse_store, init)).comparable() == parse_config(
        _config(diverse_store, init, 'start = ["pretrained"]')).comparable()
    both = parse_config(_config(diverse_store, init, 'start = ["scratch", "pretrained"]'))
    assert both.comparable()["models"]["start"] == ["scratch", "pretrained"]
    assert both.models.start_options("scratch")["init_from"] is None
    assert both.models.start_options("pretrained")["init_from"] == pretrained.resolve()
    # results written before the axis read as the study's single start
    old = pd.DataFrame({"model": ["ani"], "cell": ["c"]})
    assert label_starts(old, ["scratch"]).start.tolist() == ["scratch"]
    assert label_starts(old.assign(start="pretrained"), ["scratch", "pretrained"]
                        ).model.tolist() == ["ani/pretrained"]


def test_start_verdicts_from_the_intervals():
    """The section's verdict on constructed advice: "moves" when the starts' intervals are
    disjoint, "same within intervals" when they overlap."""
    from test_report import _advice

    from mlipdiv.report.architectures import optimum_comparison

    moves = optimum_comparison([_advice("ani/scratch", 4, (3, 5), 6, (5, 8)),
                                _advice("ani/pretrained", 12, (10, 16), 2, (1, 2))],
                               "start", "moves")
    assert "Starts at budget 24" in moves[0] and "Verdict: moves" in moves[0]
    assert "depends on the start" in moves[0] and "ani/scratch vs ani/pretrained" in moves[0]
    same = optimum_comparison([_advice("ani/scratch", 4, (3, 8), 6, (3, 8)),
                               _advice("ani/pretrained", 6, (4, 10), 4, (2, 6))],
                              "start", "moves")
    assert "Verdict: same within intervals" in same[0]


def test_a_study_with_two_starts(diverse_store, pretrained, tmp_path):
    """Scratch and pretrained ANI on the same cells with the same steps: distinct runs and
    cell results, a `start` column, fits and advice per start, and the report's section
    "Does pretraining move the optimum?" with a verdict and both starts on one figure."""
    from mlipdiv.report import write_report

    text = _config(diverse_store, f'init_from = "{pretrained}"',
                   'start = ["scratch", "pretrained"]', "steps = 12")
    text = text.replace("conformers = [1, 2, 4]", "conformers = [1, 4]")
    out = tmp_path / "starts"
    report = write_report(run_study(parse_config(text), text, out, progress=False))
    results = pd.read_parquet(out / "results.parquet")
    assert set(results.model) == {"ani"} and set(results.start) == {"scratch", "pretrained"}
    cells = results.groupby("start").cell.apply(frozenset)
    assert cells["scratch"] == cells["pretrained"] and len(cells["scratch"]) >= 5
    assert results.groupby("start").run.nunique().eq(len(cells["scratch"])).all()
    assert not set(results[results.start == "scratch"].run) & set(
        results[results.start == "pretrained"].run)
    assert len(list((out / "cells").glob("*__ani-scratch.json"))) == len(cells["scratch"])
    assert len(list((out / "cells").glob("*__ani-pretrained.json"))) == len(cells["scratch"])
    for run in (out / "runs").glob("*/*/run.json"):  # the same steps; scratch ignores init_from
        record = json.loads(run.read_text())
        assert record["schedule"]["max_steps"] == 12
        assert ("init_from" in record["spec"]) == run.parent.name.endswith("-pretrained")
    fits = json.loads((out / "fit.json").read_text())
    assert {f["model"] for f in fits["fits"]} == {"ani/scratch", "ani/pretrained"}
    advice = json.loads((out / "advice.json").read_text())["advice"]
    assert {a["model"] for a in advice} == {"ani/scratch", "ani/pretrained"}
    auroc = pd.read_csv(out / "domain" / "auroc.csv")  # the domain step runs per start too
    assert set(auroc.model) == {"ani/scratch", "ani/pretrained"}
    html = report.read_text()
    assert "Does pretraining move the optimum?" in html and "Starts at budget 12" in html
    assert "Verdict:" in html and "Architectures compared" not in html
    assert "trained from scratch and from the pretrained start" in html
    assert {"starts_cf", "starts_st"} <= {p.stem for p in (out / "figures").glob("starts_*")}
    # verify checks one (model, start) of the advice, trained from that start only
    from mlipdiv.errors import FieldError
    from mlipdiv.study.verify import run_verify

    with pytest.raises(FieldError, match="ani/scratch"):
        run_verify(out, 12, replicates=1, model="ani", progress=False)
    result = run_verify(out, 12, replicates=1, model="ani/pretrained", progress=False)
    assert result.model == "ani/pretrained"
    runs = list((out / "verify" / "N12" / "runs").glob("*/*/run.json"))
    assert runs and all("init_from" in json.loads(r.read_text())["spec"] for r in runs)
