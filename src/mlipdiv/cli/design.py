"""Diversity and design commands: profile, split, check-leaks, design."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mlipdiv.cli.common import (
    app,
    console,
    print_damaged,
    print_json,
)
from mlipdiv.declare import declared_help
from mlipdiv.design.experiments import experiment_names
from mlipdiv.design.options import DesignOptions, SplitOptions
from mlipdiv.errors import MlipdivError, check_seed

# a flag's help is its option's declaration (the options dataclass's field metadata)
SPLIT_HELP = declared_help(SplitOptions)
DESIGN_HELP = declared_help(DesignOptions)


@app.command()
def profile(
    store: Path = typer.Argument(..., help="Conformer store (.h5)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    plot: Path | None = typer.Option(None, "--plot", help="PNG of per-molecule distributions."),
    max_rmsd_pairs: int = typer.Option(100, "--max-rmsd-pairs",
                                       help="Conformer pairs per molecule (sampled above)."),
    molecule_environments: int = typer.Option(300, "--molecule-environments",
                                              help="QUESTS environments per molecule (cap)."),
    dataset_environments: int = typer.Option(10000, "--dataset-environments",
                                             help="QUESTS environments for the whole set."),
    entropy: bool = typer.Option(True, "--entropy/--no-entropy", help="QUESTS entropy."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random sample."),
    skip_damaged: bool = typer.Option(False, "--skip-damaged",
                                      help="Profile the readable molecules only (named)."),
) -> None:
    """Structural, conformational and entropy diversity of a store (streamed)."""
    from mlipdiv.diversity.profile import ProfileOptions, plot_profile, profile_store

    for option, value in (("--max-rmsd-pairs", max_rmsd_pairs),
                          ("--molecule-environments", molecule_environments),
                          ("--dataset-environments", dataset_environments)):
        if value < 1:
            raise MlipdivError(f"{option} {value}: must be at least 1")
    check_seed(seed)
    result = profile_store(store, ProfileOptions(max_rmsd_pairs, molecule_environments,
                                                 dataset_environments, entropy=entropy,
                                                 seed=seed), skip_damaged=skip_damaged)
    if plot is not None:
        plot_profile(result, plot)
    if as_json:
        print_json(result.summary)
        return
    table = Table(title=f"{store}", show_header=False)
    for key, value in result.summary.items():
        if key not in ("options", "path", "damaged_molecules"):
            table.add_row(key, json.dumps(value, default=str))
    Console().print(table)
    print_damaged(result.summary.get("damaged_molecules", {}))


@app.command()
def split(
    store: Path = typer.Argument(..., help="Conformer store (.h5)."),
    out: Path = typer.Option(..., "--out", help="SPLITS directory to write."),
    cf_molecules: str = typer.Option("all", "--cf-molecules", "--cf",
                                     help=SPLIT_HELP["cf_molecules"]),
    cf_conformers: int = typer.Option(2, "--cf-conformers", help=SPLIT_HELP["cf_conformers"]),
    st: float = typer.Option(0.15, "--st", help=SPLIT_HELP["st"]),
    sf: float = typer.Option(0.15, "--sf", help=SPLIT_HELP["sf"]),
    ood: str | None = typer.Option(None, "--ood", help=SPLIT_HELP["ood"]),
    ood_store: Path | None = typer.Option(None, "--ood-store", help=SPLIT_HELP["ood_store"]),
    seed: int = typer.Option(0, "--seed", help=SPLIT_HELP["seed"]),
    skip_damaged: bool = typer.Option(False, "--skip-damaged",
                                      help="Leave the store's damaged molecules out (named)."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as one JSON object."),
) -> None:
    """Carve leak-free CF/ST/SF/OOD test sets; the rest is the training pool."""
    from mlipdiv.design.splits import make_splits

    options = SplitOptions(cf_molecules=_cf_size(cf_molecules), cf_conformers=cf_conformers,
                           st=st, sf=sf, ood=ood, ood_store=ood_store, seed=seed)
    splits, messages = make_splits(store, out, options,
                                   skip_damaged=skip_damaged)
    for message in messages:
        console.print(f"mlipdiv: {message}", soft_wrap=True)
    if as_json:
        print_json(splits.manifest)
        return
    for name, counts in splits.manifest["counts"].items():
        print(f"{name:5s} {counts['molecules']:8d} molecules {counts['conformers']:10d} conformers")
    print(f"leak check passed; written to {out}")


def _cf_size(text: str) -> float | str:
    """`--cf-molecules`: "all", or a fraction / count."""
    if text.strip().lower() == "all":
        return "all"
    try:
        return float(text)
    except ValueError:
        raise MlipdivError(f"--cf-molecules {text}: expected 'all', a fraction (<1) or a count"
                           ) from None


@app.command("check-leaks")
def check_leaks(
    splits: Path = typer.Argument(..., help="SPLITS directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """Re-run the leak check on a SPLITS directory (exit 2 on any leak)."""
    from mlipdiv.design.leaks import leak_report
    from mlipdiv.design.splits import load_splits

    report = leak_report(load_splits(splits))
    if as_json:
        print_json(report)
    elif report["ok"]:
        print(f"no leaks in {', '.join(report['sets_checked'])}")
    if not report["ok"]:
        first = report["leaks"][0]
        raise MlipdivError(f"{splits}: {report['n_leaks']} leak(s) {report['by_kind']}, first "
                           f"{first['test_set']}: {first['kind']}: {first['detail']}")


def _grid(text: str | None, option: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise MlipdivError(f"{option} {text}: expected whole numbers separated by commas") from None


@app.command()
def design(
    experiment: str = typer.Argument(..., help="The experiment: "
                                     f"{', '.join(experiment_names())}."),
    splits: Path = typer.Option(..., "--splits", help="SPLITS directory."),
    out: Path = typer.Option(..., "--out", help="DESIGN file (JSON) to write."),
    budget: int | None = typer.Option(None, "--budget", help=DESIGN_HELP["budget"]),
    molecules: int | None = typer.Option(None, "--molecules", help=DESIGN_HELP["molecules"]),
    conformers: int | None = typer.Option(None, "--conformers",
                                          help=DESIGN_HELP["conformers"]),
    molecules_grid: str | None = typer.Option(
        None, "--molecules-grid", help="M values, e.g. 4,16,64 (default: log grid)."),
    conformers_grid: str | None = typer.Option(
        None, "--conformers-grid", help="C values, e.g. 1,2,4,8 (default: log grid)."),
    grid_points: int = typer.Option(5, "--grid-points", help=DESIGN_HELP["grid_points"]),
    replicates: int = typer.Option(1, "--replicates", help=DESIGN_HELP["replicates"]),
    validation_fraction: float = typer.Option(
        0.1, "--validation-fraction", "--valid-fraction",
        help=DESIGN_HELP["validation_fraction"]),
    molecule_selection: str = typer.Option(
        "random", "--molecule-selection", help=DESIGN_HELP["molecule_selection"]),
    conformer_selection: str = typer.Option(
        "random", "--conformer-selection", help=DESIGN_HELP["conformer_selection"]),
    allow_short: bool = typer.Option(False, "--allow-short", help=DESIGN_HELP["allow_short"]),
    seed: int = typer.Option(0, "--seed", help=DESIGN_HELP["seed"]),
    as_json: bool = typer.Option(False, "--json", help="Print the cells as one JSON object."),
) -> None:
    """Training cells of one experiment: it holds N, M or C fixed and varies M or C over a
    grid; give its fixed quantity (--budget, --molecules or --conformers) and optionally its
    grid (--molecules-grid or --conformers-grid)."""
    from mlipdiv.design.designs import make_design, write_design
    from mlipdiv.design.experiments import experiment as find_experiment

    kind = find_experiment(experiment)
    given = {"budget": budget, "molecules": molecules, "conformers": conformers,
             "molecules_grid": molecules_grid, "conformers_grid": conformers_grid}
    for option, value in given.items():
        if value is not None and option not in (kind.fixed_field, kind.grid_option()):
            raise MlipdivError(f"--{option.replace('_', '-')}: not an option of design "
                               f"{experiment}")
    grid = _grid(given[kind.grid_option()], f"--{kind.grid_option().replace('_', '-')}")
    result = make_design(splits, DesignOptions(
        experiment, **{kind.fixed_field: given[kind.fixed_field]}, grid=grid,
        grid_points=grid_points, replicates=replicates,
        validation_fraction=validation_fraction, molecule_selection=molecule_selection,
        conformer_selection=conformer_selection, allow_short=allow_short, seed=seed))
    write_design(result, out)
    rows = [{"id": c.id, "n_molecules": c.n_molecules, "conformers_per_molecule":
             c.conformers_per_molecule, "remainder": c.remainder, "n_train": c.n_train,
             "n_valid": len(c.valid), "short": c.short, **c.diversity} for c in result.cells]
    if as_json:
        print_json({"design": str(out), "grid_note": result.grid_note, "cells": rows})
        return
    for row in rows:
        print(f"{row['id']:48s} N={row['n_train']:<7d} valid={row['n_valid']:<6d} "
              f"remainder={row['remainder']:<5d} tanimoto={row['mean_tanimoto_distance']:.3f} "
              f"rmsd={row['median_rmsd_angstrom']}{'  SHORT' if row['short'] else ''}")
    if result.grid_note:
        print(result.grid_note)
    print(f"{len(rows)} cells written to {out}")
