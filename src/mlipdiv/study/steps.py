"""What a study step is: a name, the config keys it reads, the steps whose outputs it reads,
the files it writes, and how it runs. The runner's `STEPS` list holds the study's steps in
order (as the report's `SECTIONS` holds its sections); which steps a changed config makes
stale is derived from it: every step reading a changed key, and every step after one that
reads a stale step's outputs.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlipdiv.study.config import StudyConfig
from mlipdiv.study.layout import StudyPaths

log = logging.getLogger("mlipdiv.study")


@dataclass
class StudyRun:
    """One run of a study: its config and directory, and what each step hands the next."""

    config: StudyConfig
    paths: StudyPaths
    progress: bool = True
    store: Path | None = None  # the conformer store (generated or configured)
    designs: list[Path] = field(default_factory=list)  # the grid's design files
    tasks: list[Any] = field(default_factory=list)  # every (cell, model) to train and score
    failures: list[str] = field(default_factory=list)  # trainings that failed, named
    results: Any = None  # the results table (pandas) of every finished cell


@dataclass(frozen=True)
class Step:
    """One step of a study."""

    name: str
    reads: tuple[str, ...]  # top-level keys of `StudyConfig.comparable()` it depends on
    after: tuple[str, ...]  # the steps whose outputs it reads
    outputs: Callable[[StudyPaths], list[Path]]  # what it writes (removed when it is stale)
    run: Callable[[StudyRun], None]  # does what is missing; skips what is already there
    doc: str = ""


def stale_steps(steps: list[Step], changed_keys: Iterable[str]) -> list[Step]:
    """The steps a change of these config keys (dotted: "split.st") makes stale, in order."""
    changed = {key.split(".")[0] for key in changed_keys}
    stale: set[str] = set()
    for step in steps:  # in order, so a step after a stale one sees it
        if changed & set(step.reads) or stale & set(step.after):
            stale.add(step.name)
    return [step for step in steps if step.name in stale]


def remove_outputs(steps: list[Step], paths: StudyPaths) -> None:
    """Delete what these steps wrote."""
    for step in steps:
        for path in step.outputs(paths):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    if steps:
        log.info("config changed: redoing the steps %s", ", ".join(s.name for s in steps))
