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

# ---------------------------------------------------------------- diversity / design
# (profile, split, check-leaks, design go here)

# ---------------------------------------------------------------- models / metrics
# (train, evaluate, predict go here)

# ---------------------------------------------------------------- domain
# (domain fit / evaluate / score go here)

# ---------------------------------------------------------------- study / report
# (study, advise, report, demo go here)
