"""The fixed-conformers experiment: C conformers per molecule held fixed; for each M of the
grid, M molecules × C conformers each (N = M·C grows with M).

It measures the learning curve in structural diversity alone: the fixed-budget experiment
trades M against C at one N, and the fixed-molecules experiment grows N with C, so each
confounds a diversity with the training set's size. Holding C fixed and growing M isolates
what more molecules buy; set beside the fixed-molecules curve (M fixed, C grown) it gives the
two partial slopes the learning-curve fit needs, measured rather than inferred.
"""

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


class FixedConformersConfig(StrictSection):
    """C conformers per molecule held fixed, the number of molecules M varied."""

    conformers: int = Field(..., ge=1)
    # the M grid: explicit, since the largest cell (max M × C) sets every cell's steps
    molecules: list[int]

    @model_validator(mode="after")
    def _grid(self) -> FixedConformersConfig:
        check_grid(self.molecules, "molecules")
        return self


class FixedConformers(Experiment):
    """C conformers per molecule; for each M of the grid, M molecules × C conformers."""

    name = "fixed-conformers"
    order = 2
    axis = "M"
    fixed_field = "conformers"
    fixed_words = "C"
    config_key = "fixed_conformers"
    Config = FixedConformersConfig

    @classmethod
    def largest_training_set(cls, section):
        return max(section.molecules) * section.conformers

    @classmethod
    def advice_cell(cls, section):
        return max(section.molecules), cls.largest_training_set(section)

    @classmethod
    def check_generated(cls, section, n_molecules, conformers):
        if max(section.molecules) > n_molecules:
            raise ValueError(f"fixed_conformers.molecules up to {max(section.molecules)} "
                             f"exceeds data.n_molecules = {n_molecules}")
        if section.conformers > conformers:
            raise ValueError(f"fixed_conformers.conformers = {section.conformers} exceeds "
                             f"data.conformers = {conformers}")

    @classmethod
    def describe(cls, section, results):
        return (f"{cls.name}: C = {section.conformers} conformers per molecule, "
                f"M ∈ {values_text(section.molecules)}")

    @classmethod
    def check_sizes(cls, planner):
        n_pool = len(planner.keys)
        for m in planner.options.grid or ():
            if m > n_pool:
                raise FieldError(cls.grid_field(), f"M={m}", f"the pool has only {n_pool} "
                                 "molecules")

    @classmethod
    def largest_m(cls, planner):
        return max(planner.options.grid or [len(planner.keys)])

    @classmethod
    def automatic_grid(cls, planner):
        options = planner.options
        ms = np.arange(1, len(planner.keys) + 1)
        fits = planner.fillable(ms)
        if not fits.any():
            raise FieldError(cls.field("conformers"), options.conformers, "no molecule of the "
                             "pool holds C conformers plus validation; use allow_short or a "
                             "smaller C")
        fitting = ms[fits]
        planner.grid_note = (f"automatic grid: {fits.sum()} of the M from 1 to {ms[-1]} can "
                             f"be filled with C = {options.conformers} from every replicate's "
                             f"molecule order ({value_ranges(fitting)})")
        return log_grid_within(fitting, options.grid_points)

    @classmethod
    def what_fits(cls, planner, value):
        c = planner.options.conformers
        ms = np.arange(1, len(planner.keys) + 1)
        fitting = ms[planner.fillable(ms)]
        if not len(fitting):
            return f"no M fits C = {c}; use a smaller C"
        below = fitting[fitting < value]
        nearest = f"the largest M below {value} that fits is {below[-1]}; " if len(below) else ""
        return f"{nearest}M that fit C = {c}: {value_ranges(fitting)}"

    @classmethod
    def cell_size(cls, options, value):
        return value, value * options.conformers
