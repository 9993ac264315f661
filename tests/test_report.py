"""The study report: self-contained HTML, findings computed from the numbers, the public
dataset table, the optional-section hook, and a headless-Chromium load check."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlipdiv.report import SECTIONS, Section, cell_summary, load_public_datasets
from mlipdiv.report.build import domain_section
from mlipdiv.report.findings import selection_findings, trend_findings
from mlipdiv.report.sections import drawn
from mlipdiv.report.tables import metric_terms

CHROMIUM = "/usr/bin/chromium"


def test_report_is_self_contained_with_both_experiments(finished_study):
    html = (finished_study / "report.html").read_text()
    images = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)="(https?:)?//', html)
    pngs = sorted(p.stem for p in (finished_study / "figures").glob("*.png"))
    assert len(pngs) == len(images)
    for name in ("fixed-budget_energy_mae_mev_per_atom", "fixed-molecules_energy_mae_mev_per_atom",
                 "datasets_map", "cell_diversity", "parity_best", "parity_worst"):
        assert name in pngs
    assert any(name.startswith("surface_") for name in pngs)
    assert "Question:" in html and "fixed-budget: N = 12" in html
    assert re.search(r"CF energy MAE \(meV/atom\): (error (falls|rises) as M grows|slope of "
                     r"log error on log M)", html)
    assert "Training compute is held equal" in html
    assert "scored per cell on the withheld conformers" in html


def _study_tables(values_low, values_high, molecule_spread=0.05, seed=0):
    """Results and per-molecule terms of a fixed-budget experiment: M = 4 and 64, one
    replicate per pair of values, 10 ST molecules whose errors scatter by `molecule_spread`."""
    rng = np.random.default_rng(seed)
    rows, molecules = [], []
    for replicate, (low, high) in enumerate(zip(values_low, values_high, strict=True)):
        for m, value in ((4, low), (64, high)):
            cell = f"fixed-budget/M{m}/r{replicate}"
            rows.append(dict(experiment="fixed-budget", model="ani", selection="random-random",
                             split="st", M=m, C=64 / m, replicate=replicate, cell=cell,
                             n_molecules=10, e=value))
            for k in range(10):
                error = value * np.exp(rng.normal(0, molecule_spread))
                molecules.append(dict(cell=cell, model="ani", split="st", replicate=replicate,
                                      inchikey=f"MOL{k}", num_e=error * 5, den_e=5.0))
    return pd.DataFrame(rows), pd.DataFrame(molecules)


def _cells(values_low, values_high, molecule_spread=0.05):
    return cell_summary(*_study_tables(values_low, values_high, molecule_spread), "e")


def test_findings_state_a_trend_only_when_the_interval_supports_it():
    clear = trend_findings(metric_terms(*_study_tables([30, 31, 29], [10, 10.5, 9.5]), "e"),
                           "E")
    assert len(clear) == 1 and "error falls as M grows" in clear[0]
    assert "slope of log error on log M -0.4" in clear[0] and "× 3 replicates" in clear[0]
    # molecules agree within each replicate, but the replicates disagree: no trend
    unclear = trend_findings(metric_terms(*_study_tables([30, 12, 25], [20, 28, 14]), "e"),
                             "E")
    assert "do not support a trend" in unclear[0]
    one = trend_findings(metric_terms(*_study_tables([30], [10]), "e"), "E")
    assert "one replicate, so the interval ignores training variability" in one[0]


def test_cell_intervals_widen_when_replicates_disagree():
    agree, disagree = _cells([20, 20, 20], [10, 10, 10]), _cells([10, 30, 20], [5, 15, 10])
    width = {name: (t.ci_high / t.ci_low).iloc[0] for name, t in (("agree", agree),
                                                                  ("disagree", disagree))}
    assert width["disagree"] > 2 * width["agree"]
    assert agree.training_variability.all()


def test_selection_findings_compare_matched_cells():
    random = _cells([30, 31, 29], [10, 10.5, 9.5])
    maxmin = random.assign(selection="maxmin-random", log_value=random.log_value - 0.5)
    lines = selection_findings(pd.concat([random, maxmin]), "E")
    assert len(lines) == 1 and "maxmin-random vs random-random over 2 matched cells" in lines[0]
    assert "error ratio 0.61" in lines[0] and "lower error than random" in lines[0]


def test_public_dataset_table():
    table = load_public_datasets()
    for name in ("QM9", "ANI-1", "ANI-1x", "ANI-1ccx", "QM7-X", "SPICE 1", "SPICE 2", "GEOM",
                 "nablaDFT", "MD17", "rMD17", "Transition1x"):
        assert name in set(table.name), name
    assert table.conformers.gt(0).all()
    assert table.reference.str.len().gt(10).all() and table.year.between(2014, 2025).all()
    qm9 = table.set_index("name").loc["QM9"]
    assert qm9.molecules == 133885 and qm9.conformers_per_molecule == 1


def domain_like_section(view) -> Section:
    return Section("Applicability domain", f"<p>{view}</p>")


def failing_section(view) -> Section:
    raise ValueError("no domain outputs")


def injecting_section(view) -> Section:
    raise ValueError("bad value <script>alert(1)</script> in evaluation.json")


def test_a_failing_section_is_a_note_and_a_log_line(caplog):
    assert drawn(domain_like_section, "study", "Domain").html == "<p>study</p>"
    failed = drawn(failing_section, "study", "Applicability domain")
    assert failed.title == "Applicability domain"
    assert "could not be drawn: ValueError: no domain outputs" in failed.html
    assert "not drawn: ValueError: no domain outputs" in caplog.text
    crafted = drawn(injecting_section, "study", "Domain")
    assert "<script>" not in crafted.html and "&lt;script&gt;" in crafted.html
    assert [title for title, _ in SECTIONS][-2:] == ["Applicability domain",
                                                    "Parity: best and worst cells"]


def test_domain_section_without_faiss_is_left_out_with_a_reason(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "mlipdiv.report.domain_section", None)  # import fails
    assert domain_section(view=None) is None
    assert "domain section left out: ModuleNotFoundError" in caplog.text


@pytest.mark.skipif(not Path(CHROMIUM).exists(),
                    reason=f"{CHROMIUM} absent (Debian package chromium; .ci/run installs it)")
def test_report_loads_in_headless_chromium(finished_study, tmp_path):
    report = tmp_path / "report.html"
    shutil.copy(finished_study / "report.html", report)  # no figures folder beside it
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
         "--v=0", "--virtual-time-budget=5000", f"--user-data-dir={tmp_path / 'profile'}",
         "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", result.stdout)
    assert body, result.stdout[:500]
    decoded = re.search(r'data-images-decoded="(\d+)/(\d+)"', body.group(1))
    assert decoded and int(decoded.group(2)) > 5 and decoded.group(1) == decoded.group(2)
    assert 'data-errors="0"' in body.group(1)
    assert "CONSOLE" not in result.stderr, result.stderr


def _advice(model: str, m: int, m_interval: tuple[int, int], c: int,
            c_interval: tuple[int, int], determined: bool = True, next_cells=()):
    from mlipdiv.study.advise import Advice, Estimate

    estimate = Estimate(value=100.0, ci_low=90.0, ci_high=110.0)
    return Advice(model=model, selection="random-random", metric="forces_mae_mev_per_angstrom",
                  budget=24, weights={"cf": 1.0}, cost_per_molecule=0.0, cost_per_conformer=1.0,
                  n_molecules=m, conformers_per_molecule=c, n_conformers=m * c,
                  molecules_interval=m_interval, conformers_interval=c_interval,
                  predicted={"cf": estimate}, weighted_error=estimate, neighbours=[],
                  forms={"cf": "M+C"}, determined=determined, warnings=[],
                  next_cells=list(next_cells))


def test_architecture_optima_compared_by_their_intervals():
    from mlipdiv.report.architectures import optimum_comparison

    apart = optimum_comparison([_advice("mace", 4, (3, 5), 6, (5, 8)),
                                _advice("schnet", 12, (10, 16), 2, (1, 2))])
    assert len(apart) == 1 and "differs between architectures" in apart[0]
    assert "mace vs schnet" in apart[0] and "M* = 4 (3–5)" in apart[0]
    overlapping = optimum_comparison([_advice("mace", 4, (3, 8), 6, (3, 8)),
                                      _advice("painn", 6, (4, 10), 4, (2, 6))])
    assert "Verdict: same within intervals" in overlapping[0]
    undetermined = optimum_comparison([
        _advice("mace", 4, (3, 8), 6, (3, 8)),
        _advice("painn", 6, (2, 20), 4, (1, 12), determined=False,
                next_cells=[(9, 2, 0.4), (12, 2, 0.2)])])
    assert "Verdict: not determined" in undetermined[0]
    assert "run 2 more cell(s)" in undetermined[0] and "M = 9 × C = 2" in undetermined[0]
    assert optimum_comparison([_advice("mace", 4, (3, 5), 6, (5, 8))]) == []  # one model
