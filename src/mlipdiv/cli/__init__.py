"""Command line: a thin typer layer over the library. `common.py` holds the typer `app`, the
console-script entry point `main()` and the shared helpers; each stage keeps its commands in a
module of its own, which registers them on `app` when imported (`common.register_commands`:
`main()` imports only the module of the command it runs, `mlipdiv --help` all of them, in the
order it lists them).

Each command imports the library it needs inside its body: `mlipdiv --help` or `mlipdiv info`
must not pay seconds for torch, mace-torch, ray or matplotlib."""

from mlipdiv.cli.common import console, main, print_json, register_commands

__all__ = ["app", "console", "main", "print_json"]


def __getattr__(name: str):
    """`app` with every command registered (PEP 562: the console script, which runs one
    command, does not import them all)."""
    if name == "app":
        from mlipdiv.cli.common import app

        register_commands()
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
