"""The adaptive pilot: grow the study until its advice is determined.

After the grid, each round refits the learning curves and the advice at the study's budget.
When the advice is not determined, the round proposes the unmeasured (M, C) cells where the
fits' samples most often put the optimum (Thompson sampling over the curves' uncertainty
samples: cells are trained where the optimum plausibly lies, which is where a measurement
narrows its interval most), trains them with the study's models and schedule, and refits. The
loop stops when every model's advice is determined with an M interval spanning at most
`max_molecule_ratio` (the stated criterion), when its cell budget is spent, or when no
unmeasured cell is left to propose.

`adaptive.json` records every round (cells added, why, the optimum and its interval before and
after) and is written before a round trains (status "pending") and after it (status "done"),
so a killed study or `mlipdiv refine` resumes the pending round without redrawing it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from mlipdiv.atomic import write_json_atomic
from mlipdiv.design import make_design, write_design
from mlipdiv.design.experiments import budget_options
from mlipdiv.errors import MlipdivError
from mlipdiv.files import read_json, reading
from mlipdiv.study.advise import Advice, describe_cell
from mlipdiv.study.layout import RESTART_REMEDY

CELL_PREFIX = "adaptive"

log = logging.getLogger("mlipdiv.study")


class Optimum(BaseModel):
    """One model's advice in short: the optimum, its interval and whether it is determined."""

    model: str
    n_molecules: int
    conformers_per_molecule: int
    molecules_interval: tuple[int, int]
    determined: bool

    @classmethod
    def of(cls, advice: Advice) -> Optimum:
        return cls(model=advice.model, n_molecules=advice.n_molecules,
                   conformers_per_molecule=advice.conformers_per_molecule,
                   molecules_interval=advice.molecules_interval, determined=advice.determined)


class Round(BaseModel):
    """One round of the loop."""

    index: int
    cells: list[tuple[int, int]]  # (M, C) design points added
    why: str
    before: list[Optimum]
    after: list[Optimum] = []
    status: str = "pending"  # "pending" until its cells are trained and refitted, then "done"


class AdaptiveState(BaseModel):
    """What `adaptive.json` holds."""

    budget: float
    criterion: str
    rounds: list[Round] = []
    stopped: str | None = None
    final: list[Optimum] = []
    cell_limit: int | None = None  # the cells the running invocation may reach in all

    @property
    def interrupted(self) -> bool:
        return any(r.status == "pending" for r in self.rounds)

    @property
    def cells_added(self) -> int:
        return sum(len(r.cells) for r in self.rounds)


def criterion_text(max_ratio: float) -> str:
    return (f"every model's advice determined (curves accepted, the split matters) with an M "
            f"interval spanning at most {max_ratio:g}x")


def satisfied(advice: list[Advice], max_ratio: float) -> bool:
    """The stopping criterion."""
    return bool(advice) and all(a.determined and a.molecule_ratio <= max_ratio for a in advice)


def proposals(advice: list[Advice], count: int, exclude: set[tuple[int, int]] = frozenset()
              ) -> list[tuple[int, int, float, str]]:
    """Up to `count` distinct (M, C, share, model) cells not in `exclude` (cells proposed in
    earlier rounds), taking each model's Thompson cells in turn."""
    queues = [[(m, c, share, a.model) for m, c, share in a.next_cells]
              for a in advice if not a.determined]
    chosen: list[tuple[int, int, float, str]] = []
    while len(chosen) < count and any(queues):
        for queue in queues:
            while queue:
                m, c, share, model = queue.pop(0)
                if (m, c) not in exclude and all((m, c) != (x[0], x[1]) for x in chosen):
                    chosen.append((m, c, share, model))
                    break
            if len(chosen) == count:
                break
    return chosen


def why(picked: list[tuple[int, int, float, str]], advice: list[Advice]) -> str:
    """A sentence per round: what the samples said and where the optimum stood."""
    where = "; ".join(f"{a.model}: M* = {a.n_molecules} (interval {a.molecules_interval[0]}-"
                      f"{a.molecules_interval[1]}), "
                      f"{'determined' if a.determined else 'not determined'}" for a in advice)
    cells = ", ".join(f"{describe_cell(m, c, share)} for {model}"
                      for m, c, share, model in picked)
    return f"optimum before the round: {where}. Thompson sampling chose {cells}."


def run_loop(state: AdaptiveState, *, refit: Callable[[], list[Advice]],
             measure: Callable[[Round], None], save: Callable[[AdaptiveState], None],
             max_cells: int, per_round: int, max_ratio: float) -> AdaptiveState:
    """The loop: refit, stop or propose, measure, repeat. `refit` fits everything measured so
    far and returns each model's advice at the target budget; `measure` trains (or, in
    tests, computes) a round's cells; `save` writes the state. A pending round of an
    interrupted run is measured first."""
    pending = [r for r in state.rounds if r.status == "pending"]
    advice = refit() if not pending else []
    for current in pending:
        measure(current)
        advice = refit()
        current.after, current.status = [Optimum.of(a) for a in advice], "done"
        save(state)
    while True:
        if satisfied(advice, max_ratio):
            state.stopped = "criterion met: " + criterion_text(max_ratio)
            break
        remaining = max_cells - state.cells_added
        if remaining <= 0:
            state.stopped = f"cell budget spent ({state.cells_added} cells added)"
            break
        earlier = {tuple(cell) for r in state.rounds for cell in r.cells}
        picked = proposals(advice, min(per_round, remaining), earlier)
        if not picked:
            state.stopped = "no unmeasured cell left to propose"
            break
        current = Round(index=len(state.rounds) + 1, cells=[(m, c) for m, c, _, _ in picked],
                        why=why(picked, advice), before=[Optimum.of(a) for a in advice])
        state.rounds.append(current)
        save(state)
        log.info("adaptive round %d: %s", current.index, current.why)
        measure(current)
        advice = refit()
        current.after, current.status = [Optimum.of(a) for a in advice], "done"
        save(state)
    state.final = [Optimum.of(a) for a in advice]
    save(state)
    log.info("adaptive: stopped (%s)", state.stopped)
    return state


def load_state(path: Path) -> AdaptiveState | None:
    if not path.exists():
        return None
    read_json(path, "adaptive pilot record", RESTART_REMEDY)
    with reading(path, "adaptive pilot record", RESTART_REMEDY):
        return AdaptiveState.model_validate_json(path.read_text())


def save_state(state: AdaptiveState, path: Path) -> None:
    write_json_atomic(path, state.model_dump(mode="json"))


def round_design(splits: Path, common: dict, round_index: int, cell: tuple[int, int],
                 path: Path) -> Path:
    """The design of one proposed (M, C): a fixed-budget design at N = M·C with grid [M],
    drawn with the study's seed (so its molecules follow the same order as the grid's cells),
    cell ids prefixed `adaptive-r<round>/`. Written once; an existing file is kept."""
    if path.exists():
        return path
    m, c = cell
    design = make_design(splits, budget_options(common, m * c, (m,)))
    for item in design.cells:
        item.id = f"{CELL_PREFIX}-r{round_index}/{item.id}"
    if not design.cells:
        raise MlipdivError(f"adaptive round {round_index}: no cell for M = {m}, C = {c}")
    write_design(design, path)
    return path
