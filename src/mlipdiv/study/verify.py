"""`mlipdiv verify STUDY --budget N`: does the advice hold when trained?

Three training sets of the same budget N are drawn anew from the study's pool (a seed the
study's cells never used): the advised (M*, C*), the structure-heavy extreme (the largest M the
pool allows, C >= 1: QM9-like) and the conformer-heavy extreme (the smallest M of the study's
grid, C = N / M: QM7-X / ANI-1-like). Each is trained in R replicates with the study's models
and training schedule, scored on the study's test splits, and compared by the weighted held-out
error, with paired differences (advice minus extreme; replicate r of every design shares its
molecule order and training seed) and 95 % intervals from a hierarchical bootstrap over
replicates and test molecules.

Everything goes to `STUDY/verify/N<budget>/` (design, runs, cell results, `verify.json`);
like the study it resumes after any interruption, redoing only unfinished trainings.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel

from mlipdiv.atomic import write_json_atomic
from mlipdiv.design import Design, DesignOptions, load_design, make_design, write_design
from mlipdiv.design.experiments import budget_options
from mlipdiv.errors import FieldError, MlipdivError
from mlipdiv.files import read_json, reading
from mlipdiv.locking import locks_output
from mlipdiv.metrics.hierarchical import DesignComparison, compare_designs
from mlipdiv.study.advise import Advice, DataLimits, advise
from mlipdiv.study.cells import (
    attach_log,
    cell_tasks,
    execute,
    model_label,
    pool_limits,
    read_cell_results,
)
from mlipdiv.study.config import StudyConfig, load_config
from mlipdiv.study.fit import load_fits
from mlipdiv.study.layout import RESTART_REMEDY, StudyPaths

VERIFY_SEED_OFFSET = 1009  # new draws: neither molecule orders nor seeds of the study's cells
ADVISED = "advised"
STRUCTURE_HEAVY = "structure-heavy"
CONFORMER_HEAVY = "conformer-heavy"
FEWER_STEP = "one step fewer molecules"  # stands in for the structure-heavy extreme it equals
MORE_STEP = "one step more molecules"  # stands in for the conformer-heavy extreme it equals
SETTINGS_FILE = "verify-settings.json"
RESULT_FILE = "verify.json"

log = logging.getLogger("mlipdiv.study")


class VerifyDesign(BaseModel):
    """One of the compared training sets."""

    label: str
    n_molecules: int
    conformers_per_molecule: float
    cells: list[str]


class VerifyResult(BaseModel):
    """What `verify.json` holds."""

    budget: int
    model: str
    selection: str
    metric: str
    weights: dict[str, float]
    replicates: int
    advice: Advice
    designs: list[VerifyDesign]
    comparison: DesignComparison
    sentence: str


def verify_directory(study_dir: Path, budget: int) -> Path:
    return StudyPaths(study_dir).verify(budget)


def _grid(config: StudyConfig) -> list[int]:
    """The molecule counts the study's first experiment naming any measured ([1] if none)."""
    named = (kind.configured_molecules(section)
             for kind, section in config.experiment_sections().items())
    return next((values for values in named if values), [1])


def verify_designs(advice: Advice, config: StudyConfig, limits: DataLimits,
                   budget: int) -> dict[str, int]:
    """M of each compared design: the advice, and the two extremes of the same budget (the
    structure-heavy one: the most molecules the pool holds, at most N; the conformer-heavy
    one: the study grid's fewest molecules, or the fewest whose conformers the pool can
    supply at this budget). When
    the advice coincides with an extreme, that extreme is replaced by the nearest distinct
    design on the other side (the next M of the study's grid, else half or twice M*), so no
    design is ever compared with itself."""
    advised = advice.n_molecules
    per_molecule = limits.max_conformers_per_molecule or budget
    most = min(budget, limits.max_molecules)
    fewest = min(max(min(_grid(config)), math.ceil(budget / per_molecule)), most)
    grid = sorted(set(_grid(config)) | {most, fewest})
    targets = {ADVISED: advised}
    if most == advised:
        below = [m for m in grid if m < advised]
        targets[FEWER_STEP] = below[-1] if below else max(1, advised // 2)
    else:
        targets[STRUCTURE_HEAVY] = most
    if fewest == advised:
        above = [m for m in grid if advised < m <= most]
        targets[MORE_STEP] = above[0] if above else min(2 * advised, most)
    else:
        targets[CONFORMER_HEAVY] = fewest
    distinct: dict[str, int] = {}
    for label, m in targets.items():
        if m not in distinct.values():
            distinct[label] = m
    if len(distinct) < 2:
        raise MlipdivError(f"verify at N = {budget}: the pool offers no design distinct from "
                           f"the advice (M = {advised}) to compare it with")
    return distinct


def _check_settings(root: Path, settings: dict, force: bool) -> None:
    """Refuse a verify directory made with other settings unless `force` (which clears it)."""
    path = root / SETTINGS_FILE
    if path.exists() and read_json(path, "verify settings", "use --force to redo it") != settings:
        if not force:
            raise MlipdivError(f"{root}: holds a verification with other settings; use --force "
                               "to redo it")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, settings)


def _options(config: StudyConfig, molecules: list[int], budget: int, replicates: int,
             selection: tuple[str, str]) -> DesignOptions:
    """The verification design: a design at budget N over the compared M values."""
    common = {**config.design_common(selection), "replicates": replicates,
              "seed": config.seed + VERIFY_SEED_OFFSET}
    return budget_options(common, budget, tuple(molecules))


def _draw(config: StudyConfig, study: StudyPaths, molecules: list[int], budget: int,
          replicates: int, selection: tuple[str, str]) -> Design:
    """Draw the verification design before any work; when the pool cannot supply it, one
    line naming the largest budget it can (the same designs, their M capped at N)."""
    try:
        return make_design(study.splits, _options(config, molecules, budget, replicates,
                                                  selection))
    except MlipdivError as exc:
        reason = str(exc)

    def fits(n: int) -> bool:
        try:
            make_design(study.splits, _options(config, [min(m, n) for m in molecules], n,
                                               replicates, selection))
            return True
        except MlipdivError:
            return False

    low, high = 1, budget  # fits(low) is assumed, fits(high) is known false
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    largest = f"the largest budget it can supply is N = {low}" if low > 1 and fits(low) else \
        "it cannot supply any of them"
    raise MlipdivError(f"verify at N = {budget}: the study's pool cannot supply the designs "
                       f"M = {', '.join(map(str, sorted(set(molecules))))} ({reason}); "
                       f"{largest}")


def _design(design: Design, root: Path) -> Path:
    path = root / "design.json"
    if not path.exists():
        write_design(design, path)
    return path


@locks_output("study_dir")  # the study's own lock: no study or verify writes meanwhile
def run_verify(study_dir: str | Path, budget: int, *, replicates: int = 3,
               weights: dict[str, float] | None = None, model: str | None = None,
               force: bool = False, progress: bool = True) -> VerifyResult:
    """Train and compare the advised design and both extremes at `budget`; writes and returns
    `verify.json`."""

    study = StudyPaths(Path(study_dir)).finished()
    if budget < 2:
        raise FieldError("budget", budget, "must be >= 2")
    if replicates < 1:
        raise FieldError("replicates", replicates, "must be >= 1")
    config = load_config(study.config)
    fits, _ = load_fits(study.fit)
    weights = weights or dict(config.advice.weights)
    fitted = {f.split for f in fits}
    weights = {s: w for s, w in weights.items() if s in fitted and w > 0}
    # with several starts or label sets, a model is "ani/pretrained", "ani/dft", ...
    starts, label_sets = config.models.starts(), config.data.label_sets()
    trained = {model_label(a, s, starts, ls, label_sets): (a, s, ls)
               for a in config.models.architectures for s in starts for ls in label_sets}
    labels = list(trained)
    model = model or labels[0]
    if model not in labels:
        raise FieldError("model", model, f"the study trained {labels}")
    backend, start, label_set = trained[model]
    selection = (config.design.molecule_selection[0], config.design.conformer_selection[0])
    selection_name = "-".join(selection)
    limits = pool_limits(config, study)
    advice = advise(fits, budget, model=model, selection=selection_name, weights=weights,
                    cost_per_molecule=0.0, cost_per_conformer=1.0, limits=limits)
    targets = verify_designs(advice, config, limits, budget)
    drawn = _draw(config, study, list(targets.values()), budget, replicates, selection)
    root = verify_directory(study.root, budget)
    _check_settings(root, {"budget": budget, "replicates": replicates, "weights": weights,
                           "model": model, "targets": targets,
                           "study": read_json(study.settings, "study settings",
                                              RESTART_REMEDY)}, force)
    paths = StudyPaths(root)
    handler = attach_log(paths)
    try:
        design_path = _design(drawn, root)
        single = config.model_copy(update={
            "models": config.models.model_copy(update={"architectures": [backend],
                                                       "start": [start]}),
            "data": config.data.model_copy(update={"labels": [label_set]})})
        tasks = cell_tasks(single, paths, [design_path], seed_offset=VERIFY_SEED_OFFSET,
                           splits=study.splits)
        log.info("verify N=%d: %s", budget, ", ".join(f"{k} M={m}" for k, m in targets.items()))
        failures = execute(single, tasks, progress)
        if failures:
            raise MlipdivError(f"verify: {len(failures)} training(s) failed (rerun to retry): "
                               f"{failures[0]}")
        _, molecules = read_cell_results(tasks)
    finally:
        log.removeHandler(handler)
        handler.close()
    cells = load_design(design_path).cells
    designs = [VerifyDesign(label=label, n_molecules=m, conformers_per_molecule=budget / m,
                            cells=[c.id for c in cells if c.n_molecules == m])
               for label, m in targets.items()]
    comparison = compare_designs(_labelled(molecules, designs), weights, config.advice.metric,
                                 reference=ADVISED, seed=config.seed)
    result = VerifyResult(budget=budget, model=model, selection=selection_name,
                          metric=config.advice.metric, weights=weights, replicates=replicates,
                          advice=advice, designs=designs, comparison=comparison,
                          sentence=verdict(comparison, designs))
    write_json_atomic(root / RESULT_FILE, result.model_dump(mode="json"))
    return result


def _labelled(molecules: pd.DataFrame, designs: list[VerifyDesign]) -> pd.DataFrame:
    """Per-molecule terms with the design label of their cell (a cell shared by two labels,
    when the advice equals an extreme, appears under both)."""
    frames = [molecules[molecules.cell.isin(d.cells)].assign(design=d.label) for d in designs]
    return pd.concat(frames, ignore_index=True)


STAND_INS = {FEWER_STEP: STRUCTURE_HEAVY, MORE_STEP: CONFORMER_HEAVY}


def verdict(comparison: DesignComparison, designs: list[VerifyDesign]) -> str:
    """One sentence from the numbers: does the advice beat each extreme?"""
    by_label = {d.label: d for d in designs}
    advised = by_label[ADVISED]
    parts = []
    for difference in comparison.differences:
        other = by_label[difference.versus]
        where = (f"the {difference.versus} design (M = {other.n_molecules}, C = "
                 f"{other.conformers_per_molecule:.3g})")
        if difference.versus in STAND_INS:
            where += f" (the advice is the {STAND_INS[difference.versus]} extreme itself, so " \
                     "it is compared with the nearest distinct design)"
        if difference.ci_high < 0:
            parts.append(f"the advice beat {where}: weighted error lower by "
                         f"{-difference.value:.4g} (95 % CI {-difference.ci_high:.4g}–"
                         f"{-difference.ci_low:.4g})")
        elif difference.ci_low > 0:
            parts.append(f"the advice did not beat {where}: its weighted error is higher by "
                         f"{difference.value:.4g} (95 % CI {difference.ci_low:.4g}–"
                         f"{difference.ci_high:.4g})")
        else:
            parts.append(f"the advice did not beat {where} beyond noise: difference "
                         f"{difference.value:.4g} (95 % CI {difference.ci_low:.4g}–"
                         f"{difference.ci_high:.4g})")
    n_replicates = int(np.min([v.n_replicates for v in comparison.designs]))
    tail = "" if n_replicates > 1 else (" (one replicate: the intervals ignore training "
                                        "variability)")
    return (f"At N = {round(advised.n_molecules * advised.conformers_per_molecule)}, advised "
            f"M = {advised.n_molecules}: " + "; ".join(parts) + tail + ".")


def load_verifications(study_dir: str | Path) -> list[VerifyResult]:
    """Every `verify.json` of a study, by budget."""
    root = StudyPaths(Path(study_dir)).verify_root
    found = sorted(root.glob(f"N*/{RESULT_FILE}")) if root.exists() else []
    results = []
    for path in found:
        with reading(path, "verification result", "rerun `mlipdiv verify` with its budget"):
            results.append(VerifyResult.model_validate_json(path.read_text()))
    return sorted(results, key=lambda v: v.budget)
