"""The console script imports only the module of the command it runs: the table that says
which module registers which command (`cli.common.MODULE_OF`) is the modules' own, and
`mlipdiv predict` starts without the other stages' command modules."""

from __future__ import annotations

import json
import subprocess
import sys

from mlipdiv.cli.common import COMMAND_MODULES, MODULE_OF

REGISTERED_BY_MODULE = """
import importlib, json
from mlipdiv.cli.common import app

def names():
    commands = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
    return commands | {g.name for g in app.registered_groups}

seen, out = set(), {}
for module in json.loads(%r):
    importlib.import_module(f"mlipdiv.cli.{module}")
    out[module] = sorted(names() - seen)
    seen = names()
print(json.dumps(out))
"""

STARTS = """
import json, sys
sys.argv = ["mlipdiv", "predict", "--help"]
from mlipdiv.cli import main
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.startswith("mlipdiv.cli.")
                        or m in ("torch", "rdkit"))))
"""


def python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip().splitlines()[-1]


def test_each_command_is_registered_by_the_module_the_table_names():
    registered = json.loads(python(REGISTERED_BY_MODULE % json.dumps(COMMAND_MODULES)))
    assert all(registered.values())
    assert {command: module for module, commands in registered.items()
            for command in commands} == MODULE_OF


def test_a_command_starts_with_its_own_module_only():
    loaded = json.loads(python(STARTS))
    assert "mlipdiv.cli.models" in loaded
    assert not {"mlipdiv.cli.data", "mlipdiv.cli.design", "mlipdiv.cli.study",
                "mlipdiv.cli.domain", "torch", "rdkit"} & set(loaded), loaded
