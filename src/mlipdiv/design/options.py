"""The options of a design, declared once: `DesignOptions` (what `make_design` draws) and the
strict base of the experiments' config sections.

Each field's metadata carries its help text; the CLI's `design` flags and the study config's
`[design]` section are checked against these declarations (tests/test_options.py), so names,
defaults and help cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict


class StrictSection(BaseModel):
    """A config section: unknown keys, wrong types, NaN and infinities are refused.

    Strict: "yes" is not a bool, 1e12 and 2.0 are not counts (an int is still a float).
    NaN/inf never validate: a NaN weight is a silent wrong number, and a config holding NaN
    could never be resumed (NaN != NaN when the study compares configs)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


def _option(default, help_text: str, **extra):
    return field(default=default, metadata={"help": help_text, **extra})


@dataclass(frozen=True)
class DesignOptions:
    """How one design is drawn. `experiment` says which quantity is held fixed (`budget` N,
    `molecules` M or `conformers` C per molecule) and which one `grid` varies (M or C);
    `grid` None = an automatic log-spaced grid of `grid_points` values."""

    experiment: str
    budget: int | None = _option(None, "Training conformers N held fixed.")
    molecules: int | None = _option(None, "Molecules M held fixed.")
    conformers: int | None = _option(None, "Conformers per molecule C held fixed.")
    grid: tuple[int, ...] | None = _option(None, "The varied M or C values (None: automatic).")
    grid_points: int = _option(5, "Points of the automatic grid.")
    replicates: int = _option(1, "Independent draws (molecule and conformer orders) per cell.")
    validation_fraction: float = _option(0.1, "Validation conformers per cell / N.")
    molecule_selection: str = _option(
        "random", "random or maxmin (RDKit MaxMinPicker on Morgan fingerprints).")
    conformer_selection: str = _option(
        "random", "random or farthest (scikit-matter FPS on inverse distances).")
    allow_short: bool = _option(False, "Fill cells from molecules with enough conformers.")
    seed: int = _option(0, "Seed of the molecule and conformer orders.")

    def common(self) -> dict:
        """The options every experiment shares (all but the experiment, its fixed quantity
        and its grid): what a study or verify passes on to another design."""
        own = {"experiment", "budget", "molecules", "conformers", "grid"}
        return {k: v for k, v in self.__dict__.items() if k not in own}
