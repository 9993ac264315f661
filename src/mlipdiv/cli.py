"""Command line: a thin typer layer over the library. Each stage keeps its commands in its own
section below; errors become one line on stderr and exit code 2.

Each command imports the library it needs inside its body: `mlipdiv --help` or `mlipdiv info`
must not pay seconds for torch, mace-torch, ray or matplotlib."""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mlipdiv.data.generate import GenerateOptions
from mlipdiv.declare import declared_help
from mlipdiv.design.options import DesignOptions, SplitOptions
from mlipdiv.errors import FieldError, MlipdivError, check_seed

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Structural vs conformational diversity of QM data for MLIPs.",
)
console = Console(stderr=True)


# a flag's help is its option's declaration (the options dataclass's field metadata)
SPLIT_HELP = declared_help(SplitOptions)
DESIGN_HELP = declared_help(DesignOptions)
GENERATE_HELP = declared_help(GenerateOptions)


@app.callback()
def _root() -> None:
    """mlipdiv: should a QM budget buy more molecules or more conformers per molecule?"""


def main() -> None:
    """Console-script entry point: turns MlipdivError into a one-line message."""
    try:
        app()
    except FieldError as exc:  # the library names a parameter; here it is a flag
        print(f"mlipdiv: error: {exc.as_flag()}", file=sys.stderr)
        sys.exit(2)
    except MlipdivError as exc:
        print(f"mlipdiv: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("mlipdiv: interrupted", file=sys.stderr)
        sys.exit(130)


def print_json(obj) -> None:
    """One line of valid JSON: NaN and infinities (not JSON) are written as null."""
    print(json.dumps(_json_safe(obj), indent=None, default=str, allow_nan=False))


def _json_safe(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy scalars
        return _json_safe(obj.item())
    if hasattr(obj, "tolist"):  # numpy arrays
        return _json_safe(obj.tolist())
    return obj


# ---------------------------------------------------------------- data: info
@app.command()
def info(
    store: Path = typer.Argument(..., help="Conformer store (.h5)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    check: bool = typer.Option(False, "--check", help="Read every molecule and dataset and "
                               "list the damaged ones (exit 1 when any)."),
    skip_damaged: bool = typer.Option(False, "--skip-damaged",
                                      help="Summarise the readable molecules only."),
) -> None:
    """Summarise a store: molecules, conformers, elements, energy and force statistics."""
    from mlipdiv.data.store import ConformerStore
    from mlipdiv.data.summary import summarize

    if check:
        _check_store(store, as_json)
        return
    with ConformerStore(store, skip_damaged=skip_damaged) as opened:
        summary = summarize(opened)
    if as_json:
        print_json(summary)
        return
    table = Table(title=f"{store}", show_header=False)
    for key in ("level_of_theory", "n_molecules", "n_conformers", "flagged_conformers"):
        table.add_row(key, str(summary[key]))
    for key in ("conformers_per_molecule", "atoms_per_molecule", "energy_per_atom_ev",
                "force_norm_ev_per_angstrom"):
        stats = summary[key]
        if stats:
            table.add_row(key, "  ".join(f"{k}={v:.4g}" for k, v in stats.items()))
    table.add_row("elements", ", ".join(f"{k}:{v}" for k, v in summary["elements"].items()))
    Console().print(table)
    _print_damaged(summary.get("damaged_molecules", {}))


def _check_store(store: Path, as_json: bool) -> None:
    """`info --check`: every damaged molecule with what could not be read; exit 1 if any."""
    from mlipdiv.data.store import ConformerStore

    with ConformerStore(store) as opened:
        damaged = opened.check()
        total = len(opened)
    if as_json:
        print_json({"path": str(store), "n_molecules": total, "damaged": damaged})
    else:
        print(f"{store}: {total} molecules read, {len(damaged)} damaged")
        for reason in damaged.values():
            print(f"  {reason}")
    if damaged:
        raise typer.Exit(1)


def _print_damaged(damaged: dict[str, str]) -> None:
    """Say on stderr which damaged molecules a command skipped (--skip-damaged)."""
    if damaged:
        console.print(f"{len(damaged)} damaged molecule(s) skipped: {', '.join(damaged)}",
                      highlight=False, soft_wrap=True)


# ---------------------------------------------------------------- data: import / generate / label
# (data stage commands go here)
@app.command("import")
def import_(
    path: Path = typer.Argument(..., help="Dataset file (HDF5, extxyz, ASE db or .traj)."),
    format: str = typer.Option(
        "auto", "--format",
        help="auto (detect) or a registered format: see `mlipdiv formats`."),
    out: Path = typer.Option(..., "--out", help="Conformer store to write (.h5)."),
    energy_key: str | None = typer.Option(
        None, "--energy-key", help="Energy dataset/key (another level of theory)."),
    forces_key: str | None = typer.Option(
        None, "--forces-key", help="Forces (or SPICE gradient) dataset/key."),
    energy_unit: str | None = typer.Option(
        None, "--energy-unit", help="eV, hartree, kcal/mol or kJ/mol (formats whose layout "
        "does not fix units)."),
    length_unit: str | None = typer.Option(
        None, "--length-unit", help="angstrom, bohr or nm (as --energy-unit)."),
    forces_unit: str | None = typer.Option(
        None, "--forces-unit", help="<energy>/<length>, e.g. kcal/mol/angstrom (default: "
        "energy unit / length unit)."),
    skip_bad_frames: bool = typer.Option(
        False, "--skip-bad-frames", help="Skip (and count) frames no molecule can have (atoms "
        "closer than 0.3 A, an impossible energy) instead of refusing the file."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Import a public or own dataset into a store (identity from geometry); `mlipdiv
    formats` lists the layouts and which take unit flags."""
    from rich.progress import Progress

    from mlipdiv.data.importer import import_dataset

    show = console.is_terminal and not as_json
    with Progress(console=console, transient=True, disable=not show) as progress:
        task = progress.add_task("importing groups", total=None)
        summary = import_dataset(
            path, out, format, energy_key, forces_key,
            on_group=lambda done, total: progress.update(task, completed=done, total=total),
            energy_unit=energy_unit, length_unit=length_unit, forces_unit=forces_unit,
            skip_bad_frames=skip_bad_frames,
        )
    if as_json:
        print_json(summary.as_dict())
    else:
        print(summary.text())


@app.command()
def formats(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """The dataset layouts `import` reads, with their native units and default keys."""
    from mlipdiv.data.formats import format_table

    rows = format_table()
    if as_json:
        print_json(rows)
        return
    table = Table("format", "layout", "energy", "length", "forces", "unit flags", "energy key",
                  "forces key")
    for row in rows:
        table.add_row(row["name"], row["title"], row["energy_unit"], row["length_unit"],
                      row["forces_unit"], "yes" if row["unit_flags"] else
                      "--forces-unit" if row["forces_unit_flag"] else "fixed",
                      row["energy_key"] or "-", row["forces_key"] or "-")
    Console().print(table)


@app.command()
def generate(
    molecules: str = typer.Option(
        ..., "--molecules", help="A .smi/.csv file or a named set (nci: RDKit's NCI 5K)."),
    n_molecules: int = typer.Option(..., "--n-molecules", help="Molecules to generate."),
    conformers: int = typer.Option(..., "--conformers", help=GENERATE_HELP["conformers"]),
    out: Path = typer.Option(..., "--out", help="Conformer store to write (.h5)."),
    method: str = typer.Option("gfn2-xtb", "--method", help="gfn2-xtb, gfn1-xtb or dft."),
    dft_level: str = typer.Option("wb97x/6-31g*", "--dft-level", help="functional/basis."),
    sampler: str = typer.Option("etkdg+md", "--sampler", help=GENERATE_HELP["sampler"]),
    temperature: float = typer.Option(500.0, "--temperature",
                                      help=GENERATE_HELP["temperature"]),
    workers: int = typer.Option(1, "--workers", help="Worker processes (one thread each)."),
    seed: int = typer.Option(0, "--seed", help=GENERATE_HELP["seed"]),
    elements: str | None = typer.Option(
        None, "--elements", help="Allowed elements, e.g. C,H,N,O (default: all supported)."),
    heavy_atoms: str = typer.Option("1:1000", "--heavy-atoms", help="Heavy-atom range, e.g. 3:9."),
    neutral_only: bool = typer.Option(True, "--neutral-only/--charged",
                                      help="Keep only molecules with zero formal charge."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Generate a QM-labelled store: molecules from a source, sampled conformers, real labels.

    Resumable: rerun the same command after an interruption."""
    from mlipdiv.data.generate import generate as run_generate
    from mlipdiv.data.sources import MoleculeFilter, parse_elements, parse_heavy_atoms

    options = GenerateOptions(conformers, _qm_method(method, dft_level), sampler, temperature,
                              seed)
    molecule_filter = MoleculeFilter(parse_elements(elements), *parse_heavy_atoms(heavy_atoms),
                                     neutral_only=neutral_only)
    summary = run_generate(molecules, out, n_molecules, options, molecule_filter, workers,
                           progress=console.is_terminal and not as_json)
    _print_summary(summary, as_json)


@app.command()
def label(
    store_in: Path = typer.Argument(..., help="Store whose positions are (re)labelled."),
    out: Path = typer.Option(..., "--out", help="Labelled store to write (.h5)."),
    method: str = typer.Option("gfn2-xtb", "--method", help="gfn2-xtb, gfn1-xtb or dft."),
    dft_level: str = typer.Option("wb97x/6-31g*", "--dft-level", help="functional/basis."),
    workers: int = typer.Option(1, "--workers", help="Worker processes (one thread each)."),
    skip_damaged: bool = typer.Option(False, "--skip-damaged",
                                      help="Leave the input's damaged molecules out (counted)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Relabel every conformer of a store at another level of theory (resumable)."""
    from mlipdiv.data.generate import label_store

    summary = label_store(store_in, out, _qm_method(method, dft_level), workers,
                          progress=console.is_terminal and not as_json,
                          skip_damaged=skip_damaged)
    _print_summary(summary, as_json)


def _print_summary(summary, as_json: bool) -> None:
    if as_json:
        print_json(summary.as_dict())
    else:
        print(summary.text())


def _qm_method(name: str, dft_level: str):
    from mlipdiv.data.qm import METHODS, QMMethod

    if name not in METHODS:
        raise MlipdivError(f"--method {name}: choose from {', '.join(METHODS)}")
    functional, _, basis = dft_level.partition("/")
    if not functional or not basis:
        raise MlipdivError(f"--dft-level {dft_level}: expected functional/basis, e.g. pbe/sto-3g")
    return QMMethod(name, functional_basis=dft_level)


# ---------------------------------------------------------------- diversity / design
# (profile, split, check-leaks, design go here)
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
    _print_damaged(result.summary.get("damaged_molecules", {}))


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
    experiment: str = typer.Argument(..., help="The experiment (`mlipdiv design --help` lists "
                                     "them: fixed-budget, fixed-molecules, ...)."),
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
    grid (fixed-budget: M x N/M; fixed-molecules: the same M molecules, C each; ...)."""
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


# ---------------------------------------------------------------- models / metrics
@app.command()
def train(
    out: Path = typer.Option(..., "--out", help="Run directory (resumed if it exists)."),
    model: str = typer.Option("mace", "--model",
                              help="A backend, e.g. mace (an unknown name lists them all)."),
    size: str = typer.Option("fast", "--size", help="dev, fast or standard."),
    design: Path | None = typer.Option(None, "--design", help="Design file (with --cell)."),
    cell: str | None = typer.Option(None, "--cell", help="Cell id of the design."),
    train_file: Path | None = typer.Option(None, "--train", help="Training store or extxyz."),
    valid_file: Path | None = typer.Option(None, "--valid", help="Validation store/extxyz."),
    ensemble: int = typer.Option(1, "--ensemble", help="Members, seeds seed..seed+K-1."),
    seed: int = typer.Option(0, "--seed"),
    float64: bool = typer.Option(False, "--float64", help="Train in float64."),
    device: str | None = typer.Option(None, "--device", help="Default: cuda if present."),
    epochs: int | None = typer.Option(None, "--epochs", help="Override the size's epoch cap."),
    steps: int | None = typer.Option(None, "--steps",
                                     help="Train N optimiser steps instead of epochs."),
    steps_per_round: int | None = typer.Option(
        None, "--steps-per-round", help="With --steps: validate / checkpoint every K steps."),
    mask_missing_forces: bool = typer.Option(
        False, "--mask-missing-forces",
        help="Train conformers that have energies but no forces on their energy alone."),
) -> None:
    """Train a model of any backend (or an ensemble) on a design cell or on two files."""
    from mlipdiv.models import TrainingSpec, read_records
    from mlipdiv.models import train as train_run
    from mlipdiv.study.cells import train_cell

    spec = TrainingSpec(model=model, size=size, ensemble=ensemble, seed=seed,
                        dtype="float64" if float64 else "float32", device=device,
                        epochs=epochs, steps=steps, steps_per_round=steps_per_round,
                        mask_missing_forces=mask_missing_forces)
    if design is not None and cell is not None and train_file is None and valid_file is None:
        path = train_cell(design, cell, spec, out)
    elif train_file is not None and valid_file is not None and design is None and cell is None:
        skipped_train, skipped_valid = Counter(), Counter()
        path = train_run(read_records(train_file, skipped_train),
                         read_records(valid_file, skipped_valid), spec, out,
                         source={"train": str(train_file.resolve()),
                                 "valid": str(valid_file.resolve()),
                                 "skipped_train": dict(skipped_train),
                                 "skipped_valid": dict(skipped_valid)})
        for name, skipped in (("training", skipped_train), ("validation", skipped_valid)):
            if skipped:
                console.print(f"{sum(skipped.values())} {name} conformers skipped: "
                              + ", ".join(f"{k}: {v}" for k, v in skipped.items()))
    else:
        raise MlipdivError("train: give either --design and --cell, or --train and --valid")
    console.print(f"run written to {path}")


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="Run directory."),
    splits: Path | None = typer.Option(None, "--splits", help="SPLITS directory."),
    data: Path | None = typer.Option(None, "--data", help="Or one store / extxyz file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON list of records."),
    device: str | None = typer.Option(None, "--device"),
) -> None:
    """Score a run on every test split (energy, force, conformational errors, 95 % CIs)."""
    from mlipdiv.metrics import evaluate_file, evaluate_run
    from mlipdiv.metrics.stats import METRIC_DECLARATIONS

    if (splits is None) == (data is None):
        raise MlipdivError("evaluate: give exactly one of --splits or --data")
    records = (evaluate_run(run, splits, device) if splits is not None
               else evaluate_file(run, data, device))
    if as_json:
        print_json([r.model_dump() for r in records])
        return
    shown = [metric for metric in METRIC_DECLARATIONS if metric.summary]
    table = Table(title=f"{run}")
    for column in ("split", "molecules", "conformers", "out of domain",
                   *(metric.summary for metric in shown)):
        table.add_column(column)
    for r in records:
        table.add_row(r.split, str(r.n_molecules), str(r.n_conformers),
                      str(r.out_of_domain_conformers),
                      *(_with_ci(r, metric.name) for metric in shown))
    Console().print(table)
    for r in records:
        if r.skipped_conformers:
            console.print(f"{r.split}: {r.skipped_conformers} conformers of the file skipped "
                          "(non-finite or missing labels), not scored")


def _with_ci(record, name: str) -> str:
    value = getattr(record, name)
    if value is None:
        return "-"
    return (f"{value:.3g} [{getattr(record, name + '_ci_low'):.3g}, "
            f"{getattr(record, name + '_ci_high'):.3g}]")


@app.command()
def predict(
    run: Path = typer.Argument(..., help="Run directory."),
    input_file: Path = typer.Argument(..., help="Store (.h5) or extxyz to predict."),
    out: Path = typer.Option(..., "--out", help="Output extxyz with energies and forces."),
    device: str | None = typer.Option(None, "--device"),
) -> None:
    """Write the run's energies and forces (ensemble mean, spread in info) into extxyz."""
    from mlipdiv.atomic import check_writable, write_extxyz_atomic
    from mlipdiv.models import load_run, predict_frames, read_frames

    check_writable(out)  # before the model runs
    frames = predict_frames(load_run(run, device), read_frames(input_file))
    write_extxyz_atomic(out, frames)
    flagged = sum(bool(f.info["out_of_domain"]) for f in frames)
    invalid = sum(bool(f.info["invalid_positions"]) for f in frames)
    console.print(f"{len(frames)} frames written to {out} ({flagged} out of domain, {invalid} "
                  "with non-finite positions: no prediction)")

# ---------------------------------------------------------------- domain
domain_app = typer.Typer(no_args_is_help=True,
                         help="Applicability domain: trust scores, thresholds, OOD checks.")
app.add_typer(domain_app, name="domain")


@domain_app.command("fit")
def domain_fit(
    run: Path = typer.Argument(..., help="Run directory."),
    train_file: Path | None = typer.Option(None, "--train", help="Default: the run's data."),
    valid_file: Path | None = typer.Option(None, "--valid", help="Default: the run's data."),
    coverage: float = typer.Option(0.95, "--coverage",
                                   help="Fraction of validation conformers kept in domain."),
    score: str | None = typer.Option(None, "--score", help="Score deciding in/out "
                                     "(default: latent_distance_max)."),
    neighbours: int = typer.Option(5, "--neighbours", help="k of the latent kNN distance."),
) -> None:
    """Build the training reference and choose per-score thresholds on validation data."""
    from mlipdiv.domain import SCORE_DESCRIPTIONS, fit_run

    fitted = fit_run(run, train_file, valid_file, coverage, score, neighbours)
    table = Table(title=f"{run}/domain: thresholds at {coverage:.0%} validation coverage")
    for column in ("score", "threshold", "meaning"):
        table.add_column(column)
    for name, value in fitted.thresholds.items():
        mark = " (decides)" if name == fitted.primary else ""
        table.add_row(name + mark, f"{value:.4g}", SCORE_DESCRIPTIONS[name])
    Console().print(table)
    for key, cal in fitted.calibration.items():
        console.print(f"{key} sigma x {cal.scale:.3g}: miscalibration area "
                      f"{cal.miscalibration_area_before:.3f} -> "
                      f"{cal.miscalibration_area_after:.3f}")


@domain_app.command("evaluate")
def domain_evaluate(
    run: Path = typer.Argument(..., help="Run directory with a fitted domain."),
    splits: Path = typer.Option(..., "--splits", help="SPLITS directory."),
    high_energy: float | None = typer.Option(
        None, "--high-error-energy", help="meV/atom; default: validation 90th percentile."),
    high_forces: float | None = typer.Option(
        None, "--high-error-forces", help="meV/A; default: validation 90th percentile."),
    out: Path | None = typer.Option(None, "--out", help="Default: RUN/domain/evaluation.json."),
    as_json: bool = typer.Option(False, "--json", help="Print the evaluation as JSON."),
) -> None:
    """Spearman, high-error AUROC, OOD-vs-ID AUROC and error-retention area per score/split."""
    from mlipdiv.domain import evaluate_run, load_domain

    high = None
    if high_energy is not None or high_forces is not None:
        default = load_domain(run).validation_error_p90
        high = {"energy": default["energy"] if high_energy is None else high_energy,
                "forces": default["forces"] if high_forces is None else high_forces}
    evaluation = evaluate_run(run, splits, high, out)
    if as_json:
        print(evaluation.model_dump_json())
        return
    table = Table(title=f"{run}: trust scores (in-distribution split: "
                        f"{evaluation.in_distribution_split})")
    for column in ("split", "score", "in domain", "Spearman |F err|", "AUROC high F err",
                   "AUROC vs ID", "retention area F"):
        table.add_column(column, no_wrap=column in ("split", "score"))
    for row in evaluation.scores:
        table.add_row(row.split, row.score, f"{row.in_domain_fraction:.2f}",
                      *(_fmt(v) for v in (row.spearman_forces, row.auroc_high_error_forces,
                                          row.auroc_vs_in_distribution,
                                          row.retention_area_forces)))
    Console().print(table)


@domain_app.command("score")
def domain_score(
    run: Path = typer.Argument(..., help="Run directory with a fitted domain."),
    input_path: Path = typer.Argument(..., help="Store (.h5) or extxyz to score."),
    out: Path = typer.Option(..., "--out", help="Output extxyz with scores and in/out flags."),
    score: str | None = typer.Option(None, "--score", help="Score deciding in/out."),
) -> None:
    """Write every conformer with its trust scores and in-domain flag to extxyz."""
    from mlipdiv.domain import score_file

    total, inside, skipped = score_file(run, input_path, out, score)
    console.print(f"{out}: {total} conformers, {inside} in domain, {total - inside} outside"
                  + (f"; {skipped} of the file skipped (non-finite or missing values)"
                     if skipped else ""))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


# ---------------------------------------------------------------- study / report
# (study, advise, report, demo go here)
@app.command()
def study(
    config_file: Path | None = typer.Argument(None, help="Study config (TOML)."),
    preset: str | None = typer.Option(None, "--preset", help="quick or standard."),
    print_config: str | None = typer.Option(None, "--print-config",
                                            help="Print a preset's TOML (quick, standard)."),
    out: Path | None = typer.Option(None, "--out", help="Study directory (default: config)."),
    executor: str | None = typer.Option(None, "--executor", help="local or ray."),
    address: str | None = typer.Option(None, "--address", help="Ray cluster address."),
    workers: int | None = typer.Option(None, "--workers", help="Parallel cells (0 = cores)."),
    force: bool = typer.Option(False, "--force", help="Redo the steps a changed config hits."),
    no_report: bool = typer.Option(False, "--no-report",
                                   help="Stop after the advice (`mlipdiv report` later)."),
) -> None:
    """Run (or resume) a whole study: data, splits, both experiments, fit, advice, report."""
    from mlipdiv.study import parse_config, preset_text
    from mlipdiv.study.config import read_config_text

    if print_config is not None:
        print(preset_text(print_config), end="")
        return
    if (config_file is None) == (preset is None):
        raise MlipdivError("study: give a CONFIG.toml or --preset (not both)")
    if config_file is not None:
        text, origin = read_config_text(config_file), str(config_file)
    else:
        text, origin = preset_text(preset), f"preset {preset}"
    config = parse_config(text, origin)
    overrides = {k: v for k, v in (("kind", executor), ("address", address),
                                   ("workers", workers)) if v is not None}
    if overrides:
        raw = config.model_dump(mode="json")
        raw["executor"].update(overrides)
        config = parse_config_dict(raw, origin)
    print(_study_then_report(config, text, out, force, report=not no_report))


def _study_then_report(config, text: str, out: Path | None, force: bool,
                       report: bool = True) -> Path:
    """Run the study, then build its report, under one hold of the study's lock; returns the
    report's path (the study directory without a report)."""
    from mlipdiv.locking import output_lock
    from mlipdiv.report import write_report
    from mlipdiv.study import run_study

    with output_lock(out or config.out):
        root = run_study(config, text, out, force=force, progress=console.is_terminal)
        return write_report(root) if report else root


def parse_config_dict(raw: dict, origin: str):
    """Re-validate a config after command-line overrides (errors name the option)."""
    from pydantic import ValidationError

    from mlipdiv.study import StudyConfig
    from mlipdiv.study.config import first_error

    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as exc:
        raise MlipdivError(f"{origin}: {first_error(exc)}") from None


@app.command()
def advise(
    study_dir: Path = typer.Argument(..., help="Study directory."),
    budget: float = typer.Option(..., "--budget", help="Budget (conformers, or cost units); "
                                 "up to 10x the study's largest training set."),
    weights: str | None = typer.Option(
        None, "--weights", help="Split weights, e.g. cf=1,st=2,sf=1 (default: 1 for each "
        "fitted one of cf, st, sf)."),
    cost_per_molecule: float = typer.Option(0.0, "--cost-per-molecule"),
    cost_per_conformer: float = typer.Option(1.0, "--cost-per-conformer"),
    max_molecules: int | None = typer.Option(
        None, "--max-molecules", help="Molecules the team can obtain (default: the data "
        "source's usable molecules when the study generated its data, else the pool)."),
    max_conformers: int | None = typer.Option(
        None, "--max-conformers", help="Conformers per molecule the team can obtain (default: "
        "unbounded for generated data, else the pool's)."),
    model: str | None = typer.Option(None, "--model", help="Model (default: the first)."),
    selection: str = typer.Option("random-random", "--selection",
                                  help="<molecule>-<conformer> selection of the cells."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """The (M, C) minimising the weighted predicted error under a budget, with intervals."""
    from mlipdiv.design.kinds import default_advice_weights
    from mlipdiv.files import read_parquet
    from mlipdiv.study import StudyPaths, advise, load_config, load_fits, parse_weights
    from mlipdiv.study.advise import describe_cell
    from mlipdiv.study.layout import RESULTS_REMEDY
    from mlipdiv.study.runner import obtainable_limits

    if not math.isfinite(budget) or budget <= 0:
        raise MlipdivError(f"--budget {budget}: must be a positive finite number")
    for flag, value in (("--max-molecules", max_molecules), ("--max-conformers", max_conformers)):
        if value is not None and value < 1:
            raise MlipdivError(f"{flag} {value}: must be >= 1")
    paths = StudyPaths(study_dir)
    fits, _ = load_fits(paths.fit)
    results = (read_parquet(paths.results_parquet, "study results", RESULTS_REMEDY)
               if paths.results_parquet.exists() else None)
    chosen = (parse_weights(weights) if weights is not None else
              {split: weight for split, weight in default_advice_weights().items()
               if any(f.split == split for f in fits)})
    limits = (obtainable_limits(load_config(paths.config, this_machine=False), paths,
                                max_molecules, max_conformers)
              if (paths.splits / "manifest.json").exists() else None)
    advice = advise(fits, budget, model=model, selection=selection,
                    weights=chosen, cost_per_molecule=cost_per_molecule,
                    cost_per_conformer=cost_per_conformer, results=results, limits=limits)
    if as_json:
        print_json(advice.model_dump(mode="json"))
        return
    table = Table(title=f"advice for {advice.model} ({advice.selection}), budget {budget:g}",
                  show_header=False)
    table.add_row("molecules M", f"{advice.n_molecules}  (95 % interval "
                  f"{advice.molecules_interval[0]}-{advice.molecules_interval[1]})")
    table.add_row("conformers per molecule C", f"{advice.conformers_per_molecule}  (95 % "
                  f"interval {advice.conformers_interval[0]}-{advice.conformers_interval[1]})")
    table.add_row("determined", "yes" if advice.determined else "no")
    if limits is not None:
        table.add_row("M bounded by", limits.source)
    for split, estimate in advice.predicted.items():
        table.add_row(f"predicted {split} {advice.metric}", f"{estimate.value:.4g} "
                      f"[{estimate.ci_low:.4g}, {estimate.ci_high:.4g}]")
    for cell in advice.neighbours:
        table.add_row(f"measured M={cell.n_molecules} C={cell.conformers_per_molecule:g}",
                      "  ".join(f"{s} {v:.4g} (fit {cell.predicted[s]:.4g})"
                                for s, v in cell.measured.items()))
    if advice.next_cells:
        table.add_row("run next", "; ".join(describe_cell(*cell) for cell in advice.next_cells))
    Console().print(table)
    for warning in advice.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")


@app.command()
def refine(
    study_dir: Path = typer.Argument(..., help="A finished study directory."),
    cells: int = typer.Option(..., "--cells", help="Design points to add at most."),
    per_round: int | None = typer.Option(None, "--per-round",
                                         help="Design points trained between two refits "
                                         "(default: the config's adaptive.per_round)."),
    no_report: bool = typer.Option(False, "--no-report", help="Do not rebuild the report."),
) -> None:
    """Grow a study until its advice is determined: Thompson-sampled cells, trained, refitted."""
    from mlipdiv.locking import output_lock
    from mlipdiv.report import write_report
    from mlipdiv.study.runner import run_refine

    with output_lock(study_dir):
        state = run_refine(study_dir, cells, per_round=per_round,
                           progress=console.is_terminal)
        for item in state.rounds:
            print(f"round {item.index}: added {', '.join(f'M={m} C={c}' for m, c in item.cells)}")
        for optimum in state.final:
            print(f"{optimum.model}: M* = {optimum.n_molecules} (interval "
                  f"{optimum.molecules_interval[0]}-{optimum.molecules_interval[1]}), "
                  f"{'determined' if optimum.determined else 'not determined'}")
        print(f"stopped: {state.stopped}")
        if not no_report:
            print(write_report(study_dir))


@app.command()
def verify(
    study_dir: Path = typer.Argument(..., help="Study directory."),
    budget: int = typer.Option(..., "--budget", help="Training conformers N of every design."),
    replicates: int = typer.Option(3, "--replicates", help="Training draws per design."),
    weights: str | None = typer.Option(None, "--weights",
                                       help="Split weights (default: the study's advice)."),
    model: str | None = typer.Option(None, "--model", help="Model (default: the first)."),
    force: bool = typer.Option(False, "--force", help="Redo a verification of other settings."),
    as_json: bool = typer.Option(False, "--json", help="Print verify.json."),
) -> None:
    """Train the advised (M*, C*) and both extremes of budget N anew and compare them."""
    from mlipdiv.study import parse_weights
    from mlipdiv.study.verify import run_verify, verify_directory

    result = run_verify(study_dir, budget, replicates=replicates,
                        weights=parse_weights(weights) if weights else None, model=model,
                        force=force, progress=not as_json)
    if as_json:
        print_json(result.model_dump(mode="json"))
        return
    table = Table(title=f"verify {result.model}, N = {budget}, weighted {result.metric}")
    for column in ("design", "M", "C", "weighted error (95 % CI)", "replicates"):
        table.add_column(column)
    by_label = {d.label: d for d in result.designs}
    for value in result.comparison.designs:
        design = by_label[value.label]
        table.add_row(value.label, str(design.n_molecules), f"{design.conformers_per_molecule:.3g}",
                      f"{value.value:.4g} [{value.ci_low:.4g}, {value.ci_high:.4g}]",
                      str(value.n_replicates))
    Console().print(table)
    print(result.sentence)
    print(f"written to {verify_directory(study_dir, budget) / 'verify.json'}")


@app.command()
def report(
    study_dir: Path = typer.Argument(..., help="Study directory."),
    out: Path | None = typer.Option(None, "--out", help="HTML file (default STUDY/report.html)."),
) -> None:
    """Write the study's self-contained HTML report (figures also as PNG beside it)."""
    from mlipdiv.report import write_report

    print(write_report(study_dir, out))

@app.command()
def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", help="Study directory."),
) -> None:
    """Run the quick study preset (real GFN2-xTB data, both experiments, MACE, fit, advice,
    report) into OUT and print the report's path; reruns resume."""
    from mlipdiv.report.build import summary_lines
    from mlipdiv.study import parse_config, preset_text

    text = preset_text("quick")
    report_path = _study_then_report(parse_config(text, "preset quick"), text, out, force=True)
    for line in summary_lines(out):
        print(f"- {line}")
    print(report_path)
