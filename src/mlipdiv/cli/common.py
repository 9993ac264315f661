"""The command line's shared parts: the typer `app` every command module registers on, the
stderr `console`, the console-script entry point `main()` (errors become one line on stderr and
exit code 2; it imports only the module of the command it runs) and JSON printing."""

from __future__ import annotations

import importlib
import json
import math
import sys

import typer
from rich.console import Console

from mlipdiv.allocator import keep_freed_memory
from mlipdiv.errors import FieldError, MlipdivError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Structural vs conformational diversity of QM data for MLIPs.",
)
console = Console(stderr=True)

# the modules that register commands, in the order `mlipdiv --help` lists them (typer lists the
# `domain` group after them all), and the module of each command
COMMAND_MODULES = ("data", "design", "domain", "models", "study")
MODULE_OF = {
    **dict.fromkeys(("info", "import", "formats", "generate", "label"), "data"),
    **dict.fromkeys(("profile", "split", "check-leaks", "design"), "design"),
    "domain": "domain",
    **dict.fromkeys(("train", "evaluate", "predict"), "models"),
    **dict.fromkeys(("study", "advise", "refine", "verify", "report", "demo"), "study"),
}


def register_commands(command: str | None = None) -> None:
    """Import the command modules, each registering its commands on `app`: only the module of
    `command` when it names one (a command's start-up pays for no other's imports), else all
    (`mlipdiv --help`, an unknown command)."""
    for module in [MODULE_OF[command]] if command in MODULE_OF else COMMAND_MODULES:
        importlib.import_module(f"mlipdiv.cli.{module}")


@app.callback()
def _root() -> None:
    """mlipdiv: should a QM budget buy more molecules or more conformers per molecule?"""


def main() -> None:
    """Console-script entry point: turns MlipdivError into a one-line message."""
    keep_freed_memory()  # batches reuse freed memory instead of faulting it in again
    register_commands(sys.argv[1] if len(sys.argv) > 1 else None)
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



def print_damaged(damaged: dict[str, str]) -> None:
    """Say on stderr which damaged molecules a command skipped (--skip-damaged)."""
    if damaged:
        console.print(f"{len(damaged)} damaged molecule(s) skipped: {', '.join(damaged)}",
                      highlight=False, soft_wrap=True)
