"""The fixed-molecules experiment: the same M molecules; for each C of the grid, C conformers
per molecule (the learning curve in conformational diversity at fixed structures)."""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from mlipdiv.design.experiments.base import Experiment, check_grid, log_grid, values_text
from mlipdiv.design.options import StrictSection
from mlipdiv.errors import FieldError


class FixedMoleculesConfig(StrictSection):
    """M fixed molecules, C conformers per molecule varied."""

    molecules: int = Field(..., ge=1)
    conformers: list[int]

    @model_validator(mode="after")
    def _grid(self) -> FixedMoleculesConfig:
        check_grid(self.conformers, "conformers")
        return self


class FixedMolecules(Experiment):
    """M molecules; for each C of the grid, C conformers per molecule."""

    name = "fixed-molecules"
    order = 1
    axis = "C"
    fixed_field = "molecules"
    fixed_words = "M"
    config_key = "fixed_molecules"
    Config = FixedMoleculesConfig

    @classmethod
    def largest_training_set(cls, section):
        return section.molecules * max(section.conformers)

    @classmethod
    def advice_cell(cls, section):
        return section.molecules, cls.largest_training_set(section)

    @classmethod
    def check_generated(cls, section, n_molecules, conformers):
        if section.molecules > n_molecules:
            raise ValueError(f"fixed_molecules.molecules = {section.molecules} exceeds "
                             f"data.n_molecules = {n_molecules}")
        if max(section.conformers) > conformers:
            raise ValueError(f"fixed_molecules.conformers up to {max(section.conformers)} "
                             f"exceeds data.conformers = {conformers}")

    @classmethod
    def describe(cls, section, results):
        return (f"{cls.name}: M = {section.molecules}, "
                f"C ∈ {values_text(section.conformers)}")

    @classmethod
    def check_sizes(cls, planner):
        n_pool = len(planner.keys)
        if planner.options.molecules > n_pool:
            raise FieldError(cls.field("molecules"), planner.options.molecules,
                             f"the pool has only {n_pool} molecules")

    @classmethod
    def largest_m(cls, planner):
        return planner.options.molecules

    @classmethod
    def automatic_grid(cls, planner):
        options, capacity = planner.options, planner.capacity()
        m = options.molecules
        cs = np.arange(1, int(capacity[m - 1]) + 1)  # C + validation fit the smallest of M
        fits = planner.fillable(cs)
        if not fits.any():
            raise FieldError(cls.field("molecules"), m, f"the first {m} molecules hold "
                             f"{int(capacity[m - 1])} conformer(s), too few for C = 1 plus "
                             "validation; use allow_short or a smaller M")
        planner.grid_note = (f"automatic grid: C from 1 to {int(cs[fits][-1])}, the most the "
                             f"first {m} molecules of every replicate's order hold")
        return log_grid(1, int(cs[fits][-1]), options.grid_points)

    @classmethod
    def what_fits(cls, planner, value):
        m = planner.options.molecules
        cs = np.arange(1, value)
        fitting = cs[planner.fillable(cs)]
        largest = int(fitting[-1]) if len(fitting) else None
        if largest is None:
            return f"no C fits M = {m}; use allow_short or a smaller M"
        return f"the largest C that fits M = {m} is {largest}"

    @classmethod
    def cell_size(cls, options, value):
        return options.molecules, options.molecules * value
