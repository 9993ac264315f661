"""The study report: self-contained HTML, findings computed from the numbers, the public
dataset table, the optional-section hook, and a headless-Chromium load check."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from mlipdiv.report import Section, cell_summary, load_public_datasets, optional_sections
from mlipdiv.report import sections as report_sections
from mlipdiv.report.findings import experiment_findings, selection_findings

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
    assert re.search(r"CF energy MAE \(meV/atom\) at M = 2 is [0-9.]+× that at M = 6", html)


def _cells(values_low, values_high, ci_factor):
    rows = []
    for replicate, (low, high) in enumerate(zip(values_low, values_high, strict=True)):
        for m, value in ((4, low), (64, high)):
            rows.append(dict(experiment="fixed-budget", model="ani", selection="random-random",
                             split="st", M=m, C=64 / m, replicate=replicate, n_molecules=10,
                             e=value, e_ci_low=value / ci_factor, e_ci_high=value * ci_factor))
    return cell_summary(pd.DataFrame(rows), "e")


def test_findings_state_a_trend_only_when_the_interval_supports_it():
    clear = experiment_findings(_cells([30, 31, 29], [10, 10.5, 9.5], 1.1), "E")
    assert len(clear) == 1 and "falls as M grows" in clear[0] and "3.0" in clear[0]
    unclear = experiment_findings(_cells([30, 12, 25], [20, 28, 14], 2.0), "E")
    assert "do not support a trend" in unclear[0]
    few = _cells([30], [10], 1.1).assign(n_test_molecules=1)
    assert "too few for an interval" in experiment_findings(few, "E")[0]


def test_selection_findings_compare_matched_cells():
    random = _cells([30, 31, 29], [10, 10.5, 9.5], 1.1)
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


def domain_like_section(study_dir: Path) -> Section:
    return Section("Applicability domain", f"<p>{study_dir.name}</p>")


def failing_section(study_dir: Path) -> Section:
    raise ValueError("no domain outputs")


def test_optional_sections_hook(monkeypatch, tmp_path):
    monkeypatch.setattr(report_sections, "OPTIONAL_SECTIONS", [
        f"{__name__}:domain_like_section", f"{__name__}:failing_section",
        "mlipdiv_not_installed.module:section"])
    found = optional_sections(tmp_path)
    assert [s.title for s in found] == ["Applicability domain", f"{__name__}:failing_section"]
    assert "could not be drawn: no domain outputs" in found[1].html


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
