"""The design stage's options, declared once: `SplitOptions` (how `make_splits` carves the
test sets), `DesignOptions` (what `make_design` draws), and the strict base of the config
sections.

Each field's metadata carries its help text. The study config's `[split]` and `[design]`
sections take their defaults and descriptions from these fields and build the objects; the
CLI's `split` and `design` flags are checked against them (tests/test_options.py), so names,
defaults and help cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from mlipdiv.declare import option
from mlipdiv.errors import FieldError, MlipdivError, check_seed

CF_ALL = "all"  # every eligible pool molecule withholds CF conformers
CF_FIELD = "split.cf_molecules"  # the CF size as errors name it (flag --cf-molecules)


class StrictSection(BaseModel):
    """A config section: unknown keys, wrong types, NaN and infinities are refused.

    Strict: "yes" is not a bool, 1e12 and 2.0 are not counts (an int is still a float).
    NaN/inf never validate: a NaN weight is a silent wrong number, and a config holding NaN
    could never be resumed (NaN != NaN when the study compares configs)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


@dataclass(frozen=True)
class DesignOptions:
    """How one design is drawn. `experiment` says which quantity is held fixed (`budget` N,
    `molecules` M or `conformers` C per molecule) and which one `grid` varies (M or C);
    `grid` None = an automatic log-spaced grid of `grid_points` values."""

    experiment: str
    budget: int | None = option(None, "Training conformers N held fixed.")
    molecules: int | None = option(None, "Molecules M held fixed.")
    conformers: int | None = option(None, "Conformers per molecule C held fixed.")
    grid: tuple[int, ...] | None = option(None, "The varied M or C values (None: automatic).")
    grid_points: int = option(5, "Points of the automatic grid.")
    replicates: int = option(1, "Independent draws (molecule and conformer orders) per cell.")
    validation_fraction: float = option(0.1, "Validation conformers per cell / N.")
    molecule_selection: str = option(
        "random", "random or maxmin (RDKit MaxMinPicker on Morgan fingerprints).")
    conformer_selection: str = option(
        "random", "random or farthest (scikit-matter FPS on inverse distances).")
    allow_short: bool = option(False, "Fill cells from molecules with enough conformers.")
    seed: int = option(0, "Seed of the molecule and conformer orders.")

    def common(self) -> dict:
        """The options every experiment shares (all but the experiment, its fixed quantity
        and its grid): what a study or verify passes on to another design."""
        own = {"experiment", "budget", "molecules", "conformers", "grid"}
        return {k: v for k, v in self.__dict__.items() if k not in own}


@dataclass(frozen=True)
class SplitOptions:
    """How a store is carved into test sets and a training pool, declared once: the study
    config's `[split]` section builds it (`SplitConfig.options`) and the `split` command's
    flags are checked against it (tests/test_options.py).

    Sizes are fractions (0 < x < 1) or counts (>= 1) of the store's molecules; 0 = none.
    `cf_molecules="all"` (the default) withholds CF conformers from every pool molecule that
    has more than `cf_conformers`."""

    cf_molecules: float | str = option(
        CF_ALL, "CF molecules: 'all' (every pool molecule with enough conformers), a fraction "
        "(<1) or a count; 0 = none.")
    cf_conformers: int = option(2, "Conformers withheld per CF molecule.")
    st: float = option(0.15, "ST molecules (unseen molecules): fraction or count; 0 = none.")
    sf: float = option(0.15, "SF molecules (unseen scaffolds): fraction or count; 0 = none.")
    ood: str | None = option(None, "size:MIN_HEAVY, elements:S,Cl or cluster[:K].")
    ood_store: Path | None = option(None, "Second store as OOD set.")
    seed: int = option(0, "Seed of the carving.")

    def check(self) -> None:
        check_seed(self.seed)
        if isinstance(self.cf_molecules, str) and self.cf_molecules != CF_ALL:
            raise FieldError(CF_FIELD, self.cf_molecules, "expected 'all', a fraction or a count")
        sizes = (("cf_molecules", self.cf_molecules), ("st", self.st), ("sf", self.sf))
        fractions = {name: v for name, v in sizes if not isinstance(v, str) and 0 < v < 1}
        if sum(fractions.values()) > 1:
            raise MlipdivError(f"{' + '.join(fractions)}: fractions sum to "
                               f"{sum(fractions.values()):.3g}, above the limit 1")
        if self.ood and self.ood_store:
            raise MlipdivError("ood and ood_store: give one OOD shift, not both")
