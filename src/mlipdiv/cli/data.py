"""Data stage commands: info, import, formats, generate, label."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mlipdiv.cli.common import app, console, print_damaged, print_json
from mlipdiv.data.options import GenerateOptions
from mlipdiv.declare import declared_help
from mlipdiv.errors import MlipdivError

# a flag's help is its option's declaration (the options dataclass's field metadata)
GENERATE_HELP = declared_help(GenerateOptions)


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
    for name, labels in summary["label_sets"].items():
        unlabelled = labels["unlabelled_molecules"]
        table.add_row(f"label set {name}", f"{labels['level_of_theory']}: "
                      f"{labels['labelled_conformers']}/{labels['n_conformers']} conformers, "
                      f"{labels['labelled_molecules']}/{labels['n_molecules']} molecules"
                      + (f" (unlabelled: {', '.join(unlabelled[:3])}"
                         f"{', ...' if len(unlabelled) > 3 else ''})" if unlabelled else ""))
    Console().print(table)
    print_damaged(summary.get("damaged_molecules", {}))


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
    out: Path | None = typer.Option(None, "--out", help="Labelled store to write (.h5)."),
    as_set: str | None = typer.Option(
        None, "--as", help="Add the labels to STORE in place as this named label set (beside "
        "the default one) instead of writing --out."),
    n_molecules: int | None = typer.Option(
        None, "--molecules", help="With --as: label this many molecules (spread evenly over "
        "the store; default all)."),
    from_store: Path | None = typer.Option(
        None, "--from", help="With --as: take the set's labels from this store's default "
        "labels (the same conformers at another level: matched by molecule and positions) "
        "instead of computing them."),
    conformers_per_molecule: int | None = typer.Option(
        None, "--conformers-per-molecule", help="With --as: label this many conformers of "
        "each (spread evenly; default all)."),
    method: str = typer.Option("gfn2-xtb", "--method", help="gfn2-xtb, gfn1-xtb or dft."),
    dft_level: str = typer.Option("wb97x/6-31g*", "--dft-level", help="functional/basis."),
    workers: int = typer.Option(1, "--workers", help="Worker processes (one thread each)."),
    skip_damaged: bool = typer.Option(False, "--skip-damaged",
                                      help="Leave the input's damaged molecules out (counted)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Relabel every conformer of a store at another level of theory into --out, or add a
    named label set to the store in place with --as (a subset: --molecules,
    --conformers-per-molecule). Resumable: rerun the same command after an interruption."""
    from mlipdiv.data.generate import label_store

    if (out is None) == (as_set is None):
        raise MlipdivError("label: give --out (a relabelled copy) or --as NAME (a label set "
                           "added in place), not both or neither")
    if from_store is not None:
        if as_set is None:
            raise MlipdivError("label: --from goes with --as NAME (a label set added in place)")
        from mlipdiv.data.labelsets import import_label_set

        _print_summary(import_label_set(store_in, as_set, from_store), as_json)
        return
    if as_set is not None:
        from mlipdiv.data.labelsets import add_label_set

        summary = add_label_set(store_in, as_set, _qm_method(method, dft_level), n_molecules,
                                conformers_per_molecule, workers,
                                progress=console.is_terminal and not as_json,
                                skip_damaged=skip_damaged)
        _print_summary(summary, as_json)
        return
    if n_molecules is not None or conformers_per_molecule is not None:
        raise MlipdivError("label: --molecules and --conformers-per-molecule go with --as "
                           "(--out relabels every conformer)")
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
