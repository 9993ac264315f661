"""The package's shape: imports point down the pipeline only (import-linter's layers contract
in pyproject.toml) and no module imports itself through others (no import cycles)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import networkx as nx

ROOT = Path(__file__).resolve().parents[1]


def test_imports_point_down_the_pipeline():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "1 kept, 0 broken" in done.stdout


def test_no_import_cycles():
    # imports under `if TYPE_CHECKING:` never run, so they cannot form a cycle at run time
    graph = grimp.build_graph("mlipdiv", exclude_type_checking_imports=True)
    edges = nx.DiGraph((module, imported) for module in graph.modules
                       for imported in graph.find_modules_directly_imported_by(module))
    cycles = [sorted(c) for c in nx.strongly_connected_components(edges) if len(c) > 1]
    assert cycles == []
