"""Where each step of a study writes, under names a person can guess."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mlipdiv.errors import MlipdivError

# what to do about a damaged study file: a rerun rebuilds results, fit, advice and report from
# the finished cells; --force starts the study over
RESULTS_REMEDY = "rerun the study (its table, fit and advice are rebuilt from finished cells)"
RESTART_REMEDY = "rerun the study with --force"


@dataclass(frozen=True)
class StudyPaths:
    """The files and folders of one study directory."""

    root: Path

    def finished(self) -> StudyPaths:
        """These paths, once checked to hold a finished study (MlipdivError otherwise)."""
        if not self.fit.exists() or not self.settings.exists():
            raise MlipdivError(f"{self.root}: no finished study (no fit.json); run `mlipdiv "
                               "study` first")
        return self

    @property
    def config(self) -> Path:
        """The study's config as run (TOML, the user's text)."""
        return self.root / "config.toml"

    @property
    def settings(self) -> Path:
        """The validated settings that define the results (JSON; compared on rerun)."""
        return self.root / "study.json"

    @property
    def plan(self) -> Path:
        """The plan made when the study started (`mlipdiv study --plan`'s, as JSON)."""
        return self.root / "plan.json"

    @property
    def data(self) -> Path:
        """The generated store, or (`data.labels` with a set covering a subset) the
        conformers of the configured store labelled at every listed set."""
        return self.root / "data.h5"

    @property
    def data_parts(self) -> Path:
        """The generator's finished molecules, kept until the store is written (resume)."""
        return Path(f"{self.data}.parts")

    @property
    def profile(self) -> Path:
        return self.root / "profile.json"

    @property
    def profile_molecules(self) -> Path:
        return self.root / "profile_molecules.csv"

    @property
    def profile_plot(self) -> Path:
        return self.root / "profile.png"

    @property
    def splits(self) -> Path:
        return self.root / "splits"

    @property
    def designs(self) -> Path:
        """The design files: the grid's (one per experiment and selection) and the pilot's."""
        return self.root / "designs"

    def design(self, experiment: str, selection: str) -> Path:
        """Design file of one experiment drawn with one "<molecule>-<conformer>" selection."""
        return self.designs / f"{experiment}_{selection}.json"

    def adaptive_design(self, round_index: int, molecules: int, conformers: int,
                        selection: str) -> Path:
        """Design file of one cell the adaptive pilot added in a round."""
        return (self.designs
                / f"adaptive-r{round_index}-M{molecules}-C{conformers}_{selection}.json")

    def adaptive_design_files(self) -> list[Path]:
        """The design files the adaptive pilot has written so far."""
        return sorted(self.designs.glob("adaptive-*.json"))

    @property
    def adaptive(self) -> Path:
        """The adaptive pilot's rounds (cells added, why, the optimum before and after)."""
        return self.root / "adaptive.json"

    @property
    def data_summary(self) -> Path:
        return self.root / "data.json"

    @property
    def runs(self) -> Path:
        """The training runs, one folder per cell and model."""
        return self.root / "runs"

    def run(self, cell_id: str, model: str, start: str | None = None) -> Path:
        """Training run directory of one cell and model (checkpoints live there); `start`
        names the start and/or label set in a study with several ("pretrained", "dft",
        "pretrained-dft"; one start and one label set keep the plain name)."""
        return self.runs / slug(cell_id) / with_start(model, start)

    @property
    def cells(self) -> Path:
        """The finished cells' result files."""
        return self.root / "cells"

    def cell_result(self, cell_id: str, model: str, start: str | None = None) -> Path:
        """The finished cell's result rows; its presence marks the cell as done (`start` as
        in `run`)."""
        return self.cells / f"{slug(cell_id)}__{with_start(model, start)}.json"

    @property
    def results_parquet(self) -> Path:
        return self.root / "results.parquet"

    @property
    def results_csv(self) -> Path:
        return self.root / "results.csv"

    @property
    def results_molecules(self) -> Path:
        """Per-molecule error terms of every cell, model and split (for the bootstraps)."""
        return self.root / "results_molecules.parquet"

    @property
    def fit(self) -> Path:
        return self.root / "fit.json"

    @property
    def advice(self) -> Path:
        return self.root / "advice.json"

    @property
    def log(self) -> Path:
        return self.root / "study.log"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def verify_root(self) -> Path:
        """`mlipdiv verify`'s checks, one folder per budget."""
        return self.root / "verify"

    def verify(self, budget: int) -> Path:
        """The check of the advice at one budget N."""
        return self.verify_root / f"N{budget}"

    @property
    def domain(self) -> Path:
        """Applicability-domain outputs (written by the domain step; read by the report)."""
        return self.root / "domain"


def slug(cell_id: str) -> str:
    """A cell id as one file-name component ("fixed-budget/M16-C8/r0/random-random" ->
    "fixed-budget_M16-C8_r0_random-random")."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", cell_id).strip("_")


def with_start(model: str, start: str | None) -> str:
    """A model's file-name component, with its start where the study has several."""
    return model if start is None else f"{model}-{start}"
