"""The study as a list of steps: which steps a config change makes stale is derived from what
each step reads, and every setting that defines the results is read by some step."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlipdiv.design.experiments import experiments
from mlipdiv.study import load_preset
from mlipdiv.study.layout import StudyPaths
from mlipdiv.study.runner import PRESENTATION_KEYS, STEPS
from mlipdiv.study.steps import stale_steps


def _names(steps) -> list[str]:
    return [step.name for step in steps]


def test_every_setting_is_read_by_a_step():
    read = {key for step in STEPS for key in step.reads} | set(PRESENTATION_KEYS)
    config = load_preset("quick")
    assert set(config.comparable()) <= read
    assert {kind.config_key for kind in experiments()} <= read  # a new experiment too


def test_steps_name_only_earlier_steps_and_write_distinct_paths_in_the_study():
    seen: set[str] = set()
    for step in STEPS:
        assert set(step.after) <= seen, step.name
        seen.add(step.name)
    paths = StudyPaths(Path("/study"))
    outputs = [path for step in STEPS for path in step.outputs(paths)]
    assert len(outputs) == len(set(outputs))
    assert all(path.parent == paths.root for path in outputs)


@pytest.mark.parametrize("changed, stale", [
    (["name"], []),
    (["advice.metric"], ["fit", "adaptive"]),
    (["adaptive.cells"], ["adaptive"]),
    (["models.size", "training_schedule.mace.steps"],
     ["train", "results", "fit", "adaptive", "domain"]),
    (["fixed_conformers"], ["design", "train", "results", "fit", "adaptive", "domain"]),
    (["split.st"], ["split", "design", "train", "results", "fit", "adaptive", "domain"]),
    (["data.conformers"], [step.name for step in STEPS]),
])
def test_a_change_makes_its_readers_and_everything_downstream_stale(changed, stale):
    assert _names(stale_steps(STEPS, changed)) == stale
