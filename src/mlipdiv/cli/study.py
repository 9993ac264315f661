"""Study commands: study, advise, refine, verify, report, demo."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mlipdiv.cli.common import app, console, print_json
from mlipdiv.errors import MlipdivError


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
    plan: bool = typer.Option(False, "--plan", help="Print the plan (cells, trainings, steps, "
                              "conformers to label, estimated wall time and device hours); "
                              "train and generate nothing."),
    steps_per_second: float | None = typer.Option(
        None, "--steps-per-second", help="With --plan: the CPU throughput of one cell "
        "(optimiser steps per second) instead of a calibration run."),
    gpu_steps_per_second: float | None = typer.Option(
        None, "--gpu-steps-per-second", help="With --plan: the throughput of one cell on a GPU "
        "(default: unknown, not measurable on a CPU machine)."),
    gpus: int = typer.Option(4, "--gpus", help="With --plan: GPUs K of the multi-GPU layout."),
    as_json: bool = typer.Option(False, "--json", help="With --plan: print one JSON object."),
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
    if plan:
        _print_plan(config, out, steps_per_second, gpu_steps_per_second, gpus, as_json)
        return
    for flag, given in (("--steps-per-second", steps_per_second),
                        ("--gpu-steps-per-second", gpu_steps_per_second),
                        ("--json", as_json or None)):
        if given is not None:
            raise MlipdivError(f"{flag}: only read with --plan")
    print(_study_then_report(config, text, out, force, report=not no_report))


def _print_plan(config, out: Path | None, steps_per_second: float | None,
                gpu_steps_per_second: float | None, gpus: int, as_json: bool) -> None:
    """`study --plan`: the plan as text, or one JSON object."""
    from mlipdiv.study.plan import plan_study

    made = plan_study(config, out, steps_per_second=steps_per_second,
                      gpu_steps_per_second=gpu_steps_per_second, gpus=gpus)
    if as_json:
        print_json(made.model_dump(mode="json"))
    else:
        print(made.text())


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
