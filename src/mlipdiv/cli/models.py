"""Model and metric commands: train, evaluate, predict."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mlipdiv.cli.common import app, console, print_json
from mlipdiv.errors import MlipdivError


@app.command()
def train(
    out: Path = typer.Option(..., "--out", help="Run directory (resumed if it exists)."),
    # the help of the TrainingSpec fields, written out here (models imports torch, which
    # `mlipdiv --help` should not wait for); tests/test_options.py checks them equal
    model: str = typer.Option(
        "mace", "--model", help="The backend, e.g. mace or ani (an unknown name lists them all)."),
    size: str = typer.Option("fast", "--size", help="The backend's size (its hyperparameters "
                             "and training settings): dev, fast or standard."),
    design: Path | None = typer.Option(None, "--design", help="Design file (with --cell)."),
    cell: str | None = typer.Option(None, "--cell", help="Cell id of the design."),
    train_file: Path | None = typer.Option(None, "--train", help="Training store or extxyz."),
    valid_file: Path | None = typer.Option(None, "--valid", help="Validation store/extxyz."),
    ensemble: int = typer.Option(
        1, "--ensemble", help="Members of the committee, trained with seeds seed, seed+1, ..."),
    seed: int = typer.Option(
        0, "--seed", help="The first member's seed (the last member's below 2**32)."),
    float64: bool = typer.Option(False, "--float64", help="Train in float64."),
    device: str | None = typer.Option(
        None, "--device", help="cpu, cuda or cuda:N (default: CUDA when present)."),
    epochs: int | None = typer.Option(None, "--epochs", help="A cap on the epochs (one round "
                                      "each) replacing the size's; not with steps."),
    steps: int | None = typer.Option(None, "--steps", help="Optimiser steps to train, "
                                     "validated every steps_per_round (both or neither; "
                                     "default: epochs)."),
    steps_per_round: int | None = typer.Option(
        None, "--steps-per-round",
        help="With steps: validate, checkpoint and log every this many steps."),
    mask_missing_forces: bool = typer.Option(
        False, "--mask-missing-forces", help="Train conformers that have energies but no "
        "forces on their energy alone (force term masked)."),
    init_from: Path | None = typer.Option(
        None, "--init-from", help="Start from a pretrained model of the same backend: a "
        "mlipdiv run directory, its member-K/model.pt, or a MACE .model file saved by "
        "mace-torch."),
    e0: str = typer.Option(
        "refit", "--e0", help="With init_from, the E0s: refit (least squares on the new "
        "training labels), keep (the pretrained model's) or shift (the pretrained's plus a "
        "per-element fit of the new labels' residual)."),
    finetune_lr: float | None = typer.Option(
        None, "--finetune-lr", help="With init_from, the learning rate (default: the size's)."),
    freeze: list[str] | None = typer.Option(
        None, "--freeze", help="With init_from, parameter-name prefixes kept fixed, e.g. "
        "node_embedding."),
    stream: bool = typer.Option(
        False, "--stream", help="Read the training store in batches, their graphs built by "
        "loader processes, instead of holding every graph in memory (for a training set "
        "larger than memory; a store file only)."),
    loader_workers: int | None = typer.Option(
        None, "--loader-workers", help="With stream, the processes preparing batches (0: the "
        "training process itself; default: half the CPUs, 1 to 4)."),
) -> None:
    """Train a model of any backend (or an ensemble) on a design cell or on two files."""
    from mlipdiv.models import TrainingSpec, read_records, streamed_training_set
    from mlipdiv.models import train as train_run

    spec = TrainingSpec(model=model, size=size, ensemble=ensemble, seed=seed,
                        dtype="float64" if float64 else "float32", device=device,
                        epochs=epochs, steps=steps, steps_per_round=steps_per_round,
                        mask_missing_forces=mask_missing_forces, init_from=init_from, e0=e0,
                        finetune_lr=finetune_lr, freeze=tuple(freeze) if freeze else None,
                        stream=stream, loader_workers=loader_workers)
    if design is not None and cell is not None and train_file is None and valid_file is None:
        from mlipdiv.study.cells import train_cell  # the study's imports for a cell only

        path = train_cell(design, cell, spec, out)
    elif train_file is not None and valid_file is not None and design is None and cell is None:
        skipped_train, skipped_valid = Counter(), Counter()
        training = (streamed_training_set(train_file, spec) if stream
                    else read_records(train_file, skipped_train))
        path = train_run(training,
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
    frames = predict_frames(load_run(run, device), read_frames(input_file), copy=False)
    write_extxyz_atomic(out, frames)
    flagged = sum(bool(f.info["out_of_domain"]) for f in frames)
    invalid = sum(bool(f.info["invalid_positions"]) for f in frames)
    console.print(f"{len(frames)} frames written to {out} ({flagged} out of domain, {invalid} "
                  "with non-finite positions: no prediction)")
