"""The fixed-budget experiment: N training conformers; for each M of the grid, M molecules ×
C = N / M conformers (the first N mod M molecules hold one more)."""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from mlipdiv.design.experiments.base import (
    Experiment,
    check_grid,
    log_grid_within,
    value_ranges,
    values_text,
)
from mlipdiv.design.options import StrictSection
from mlipdiv.errors import FieldError


class FixedBudgetConfig(StrictSection):
    """N training conformers split as M molecules × C conformers per molecule."""

    budget: int = Field(..., ge=2)
    molecules: list[int] | None = None  # the M grid; None = automatic log-spaced grid

    @model_validator(mode="after")
    def _grid(self) -> FixedBudgetConfig:
        if self.molecules is not None:
            check_grid(self.molecules, "molecules")
            if max(self.molecules) > self.budget:
                raise ValueError(f"M = {max(self.molecules)} exceeds the budget "
                                 f"{self.budget} (C would be below 1)")
        return self


class FixedBudget(Experiment):
    """N training conformers; for each M of the grid, M molecules × C = N / M conformers."""

    name = "fixed-budget"
    order = 0
    axis = "M"
    fixed_field = "budget"
    fixed_words = "a budget"
    config_key = "fixed_budget"
    Config = FixedBudgetConfig

    @classmethod
    def largest_training_set(cls, section):
        return section.budget

    @classmethod
    def advice_cell(cls, section):
        # the study's advice is for its own N, at the fewest molecules it measured
        return min(section.molecules or [1]), section.budget

    @classmethod
    def check_generated(cls, section, n_molecules, conformers):
        if section.budget > n_molecules * conformers:
            raise ValueError(f"fixed_budget.budget = {section.budget} exceeds the generated "
                             f"data ({n_molecules} molecules × {conformers} conformers = "
                             f"{n_molecules * conformers})")

    @classmethod
    def describe(cls, section, results):
        return (f"{cls.name}: N = {section.budget} conformers split as "
                f"M ∈ {values_text(results.M.unique())}")

    @classmethod
    def check_sizes(cls, planner):
        options, n_pool = planner.options, len(planner.keys)
        budget, total = options.budget, int(planner.available.sum())
        if budget + planner.n_valid(budget) > total:
            raise FieldError(cls.field("budget"), budget, f"with {planner.n_valid(budget)} "
                             f"validation conformers it exceeds the pool's {total} conformers")
        for m in options.grid or ():
            if m > budget:
                raise FieldError(cls.grid_field(), f"M={m}", f"larger than budget {budget} "
                                 "gives C = 0 conformers per molecule")
            if m > n_pool:
                raise FieldError(cls.grid_field(), f"M={m}", f"the pool has only {n_pool} "
                                 "molecules")

    @classmethod
    def largest_m(cls, planner):
        options = planner.options
        return max(options.grid or [min(options.budget, len(planner.keys))])

    @classmethod
    def automatic_grid(cls, planner):
        options, budget = planner.options, planner.options.budget
        ms = np.arange(1, min(budget, len(planner.keys)) + 1)
        fits = planner.fillable(ms)
        if not fits.any():
            raise FieldError(cls.field("budget"), budget, "no molecule count M lets the "
                             "pool's molecules hold it; use allow_short or a smaller budget")
        # capacity falls as M grows (a molecule short of conformers enters the order) while
        # the conformers each molecule needs fall too: the fitting M need not be one range
        fitting = ms[fits]
        inside = ms[(ms > fitting[0]) & (ms < fitting[-1])]
        left_out = np.setdiff1d(inside, fitting)
        planner.grid_note = (
            f"automatic grid: {fits.sum()} of the M from 1 to {ms[-1]} can be filled from "
            f"every replicate's molecule order ({value_ranges(fitting)})"
            + (f"; M = {value_ranges(left_out)} left out (a molecule among the first M holds "
               "too few conformers)" if len(left_out) else ""))
        return log_grid_within(fitting, options.grid_points)

    @classmethod
    def what_fits(cls, planner, value):
        ms = np.arange(1, min(planner.options.budget, len(planner.keys)) + 1)
        fitting = ms[planner.fillable(ms)]
        if not len(fitting):
            return (f"no M fills budget {planner.options.budget}; use allow_short or a "
                    "smaller budget")
        above = fitting[fitting > value]
        nearest = (f"the smallest M above {value} that fits is {above[0]}; " if len(above)
                   and above[0] != fitting[0] else "")
        return (f"{nearest}the smallest M that fits budget {planner.options.budget} is "
                f"{fitting[0]} (M that fit: {value_ranges(fitting)})")

    @classmethod
    def cell_size(cls, options, value):
        return value, options.budget
