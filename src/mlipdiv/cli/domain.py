"""The `mlipdiv domain` command group: fit, evaluate, score (applicability domain)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mlipdiv.cli.common import app, console

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

