"""Command line: a thin typer layer over the library. Each stage keeps its commands in its own
section below; errors become one line on stderr and exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mlipdiv.errors import MlipdivError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Structural vs conformational diversity of QM data for MLIPs.",
)
console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """mlipdiv: should a QM budget buy more molecules or more conformers per molecule?"""


def main() -> None:
    """Console-script entry point: turns MlipdivError into a one-line message."""
    try:
        app()
    except MlipdivError as exc:
        print(f"mlipdiv: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("mlipdiv: interrupted", file=sys.stderr)
        sys.exit(130)


def print_json(obj) -> None:
    print(json.dumps(obj, indent=None, default=str))


# ---------------------------------------------------------------- data: info
@app.command()
def info(
    store: Path = typer.Argument(..., help="Conformer store (.h5)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Summarise a store: molecules, conformers, elements, energy and force statistics."""
    from mlipdiv.data.store import ConformerStore
    from mlipdiv.data.summary import summarize

    with ConformerStore(store) as opened:
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


# ---------------------------------------------------------------- data: import / generate / label
# (data stage commands go here)
@app.command("import")
def import_(
    path: Path = typer.Argument(..., help="Dataset file (HDF5, extxyz or ASE db)."),
    format: str = typer.Option(
        "auto", "--format", help="auto, spice, qm7x, ani1x, extxyz or asedb."),
    out: Path = typer.Option(..., "--out", help="Conformer store to write (.h5)."),
    energy_key: str | None = typer.Option(
        None, "--energy-key", help="Energy dataset/key (another level of theory)."),
    forces_key: str | None = typer.Option(
        None, "--forces-key", help="Forces (or SPICE gradient) dataset/key."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Import SPICE / QM7-X / ANI-1x / extxyz / ASE db into a store (identity from geometry)."""
    from rich.progress import Progress

    from mlipdiv.data.importer import import_dataset

    show = console.is_terminal and not as_json
    with Progress(console=console, transient=True, disable=not show) as progress:
        task = progress.add_task("importing groups", total=None)
        summary = import_dataset(
            path, out, format, energy_key, forces_key,
            on_group=lambda done, total: progress.update(task, completed=done, total=total),
        )
    if as_json:
        print_json(summary.as_dict())
    else:
        print(summary.text())


@app.command()
def generate(
    molecules: str = typer.Option(
        ..., "--molecules", help="A .smi/.csv file or a named set (nci: RDKit's NCI 5K)."),
    n_molecules: int = typer.Option(..., "--n-molecules", help="Molecules to generate."),
    conformers: int = typer.Option(..., "--conformers", help="Conformers per molecule."),
    out: Path = typer.Option(..., "--out", help="Conformer store to write (.h5)."),
    method: str = typer.Option("gfn2-xtb", "--method", help="gfn2-xtb, gfn1-xtb or dft."),
    dft_level: str = typer.Option("wb97x/6-31g*", "--dft-level", help="functional/basis."),
    sampler: str = typer.Option("etkdg+md", "--sampler", help="etkdg, md, nms or etkdg+md."),
    temperature: float = typer.Option(500.0, "--temperature", help="K, for md and nms."),
    workers: int = typer.Option(1, "--workers", help="Worker processes (one thread each)."),
    seed: int = typer.Option(0, "--seed", help="Molecule choice and sampling seed."),
    elements: str | None = typer.Option(
        None, "--elements", help="Allowed elements, e.g. C,H,N,O (default: all supported)."),
    heavy_atoms: str = typer.Option("1:1000", "--heavy-atoms", help="Heavy-atom range, e.g. 3:9."),
    neutral_only: bool = typer.Option(True, "--neutral-only/--charged",
                                      help="Keep only molecules with zero formal charge."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Generate a QM-labelled store: molecules from a source, sampled conformers, real labels.

    Resumable: rerun the same command after an interruption."""
    from mlipdiv.data.generate import GenerateOptions
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
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Relabel every conformer of a store at another level of theory (resumable)."""
    from mlipdiv.data.generate import label_store

    summary = label_store(store_in, out, _qm_method(method, dft_level), workers,
                          progress=console.is_terminal and not as_json)
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

# ---------------------------------------------------------------- models / metrics
@app.command()
def train(
    out: Path = typer.Option(..., "--out", help="Run directory (resumed if it exists)."),
    model: str = typer.Option("mace", "--model", help="mace or ani."),
    size: str = typer.Option("fast", "--size", help="dev, fast or standard."),
    design: Path | None = typer.Option(None, "--design", help="Design file (with --cell)."),
    cell: str | None = typer.Option(None, "--cell", help="Cell id of the design."),
    train_file: Path | None = typer.Option(None, "--train", help="Training store or extxyz."),
    valid_file: Path | None = typer.Option(None, "--valid", help="Validation store/extxyz."),
    ensemble: int = typer.Option(1, "--ensemble", help="Members, seeds seed..seed+K-1."),
    seed: int = typer.Option(0, "--seed"),
    float64: bool = typer.Option(False, "--float64", help="Train in float64."),
    device: str | None = typer.Option(None, "--device", help="Default: cuda if present."),
) -> None:
    """Train a MACE or ANI model (or an ensemble) on a design cell or on two files."""
    from mlipdiv.models import read_records, train_cell
    from mlipdiv.models import train as train_run

    dtype = "float64" if float64 else "float32"
    options = dict(model=model, size=size, out=out, ensemble=ensemble, seed=seed,
                   dtype=dtype, device=device)
    if design is not None and cell is not None and train_file is None and valid_file is None:
        path = train_cell(design, cell, **options)
    elif train_file is not None and valid_file is not None and design is None and cell is None:
        path = train_run(read_records(train_file), read_records(valid_file),
                         meta={"train": str(train_file), "valid": str(valid_file)}, **options)
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

    if (splits is None) == (data is None):
        raise MlipdivError("evaluate: give exactly one of --splits or --data")
    records = (evaluate_run(run, splits, device) if splits is not None
               else evaluate_file(run, data, device))
    if as_json:
        print_json([r.model_dump() for r in records])
        return
    table = Table(title=f"{run}")
    for column in ("split", "molecules", "conformers", "out of domain", "E MAE meV/atom",
                   "F MAE meV/A", "conf. E MAE meV", "Spearman"):
        table.add_column(column)
    for r in records:
        table.add_row(r.split, str(r.n_molecules), str(r.n_conformers),
                      str(r.out_of_domain_conformers),
                      *(_with_ci(r, name) for name in (
                          "energy_mae_mev_per_atom", "forces_mae_mev_per_angstrom",
                          "conformational_energy_mae_mev", "spearman_mean")))
    Console().print(table)


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
    from mlipdiv.models import load_run
    from mlipdiv.models.run import predict_frames, read_frames, write_frames

    frames = predict_frames(load_run(run, device), read_frames(input_file))
    write_frames(frames, out)
    flagged = sum(bool(f.info["out_of_domain"]) for f in frames)
    console.print(f"{len(frames)} frames written to {out} ({flagged} out of domain)")

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
    score: str | None = typer.Option(None, "--score", help="Score deciding in/out (default: "
                                     "force_std_max for ensembles, else latent_distance_max)."),
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
        table.add_column(column)
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

    total, inside = score_file(run, input_path, out, score)
    console.print(f"{out}: {total} conformers, {inside} in domain, {total - inside} outside")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


# ---------------------------------------------------------------- study / report
# (study, advise, report, demo go here)
@app.command()
def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", help="Output directory."),
    workers: int = typer.Option(2, "--workers", help="Worker processes."),
) -> None:
    """Generate a small GFN2-xTB dataset (8 NCI molecules x 6 conformers) and summarise it."""
    from mlipdiv.data.generate import GenerateOptions
    from mlipdiv.data.generate import generate as run_generate
    from mlipdiv.data.sources import MoleculeFilter, parse_elements

    store = out / "data.h5"
    summary = run_generate("nci", store, 8, GenerateOptions(6),
                           MoleculeFilter(parse_elements("C,H,N,O"), 3, 9), workers,
                           progress=console.is_terminal)
    console.print(summary.text())
    info(store, as_json=False)
