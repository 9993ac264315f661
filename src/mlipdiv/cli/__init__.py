"""Command line: a thin typer layer over the library. `common.py` holds the typer `app`, the
console-script entry point `main()` and the shared helpers; each stage keeps its commands in a
module of its own, which registers them on `app` when imported below. The import order is the
order `mlipdiv --help` lists the commands in (typer lists the `domain` group after them all).

Each command imports the library it needs inside its body: `mlipdiv --help` or `mlipdiv info`
must not pay seconds for torch, mace-torch, ray or matplotlib."""

from mlipdiv.cli import data, design, domain, models, study  # noqa: F401  (register the commands)
from mlipdiv.cli.common import app, console, main, print_json

__all__ = ["app", "console", "main", "print_json"]
