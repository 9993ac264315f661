"""The package's shape: imports point down the pipeline only (import-linter's layers contract
in pyproject.toml), no package's modules import each other in a circle (its acyclic-siblings
contract), and no module imports itself through others (no import cycles, type-only imports
included)."""

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
    # the layers contract between stages and the acyclic-siblings one inside every package
    assert "2 kept, 0 broken" in done.stdout


def test_no_import_cycles():
    # type-only imports (under `if TYPE_CHECKING:`) count too: a circle of them is still a
    # circle a reader has to hold in their head, inside a stage as between stages
    graph = grimp.build_graph("mlipdiv", exclude_type_checking_imports=False, cache_dir=None)
    edges = nx.DiGraph((module, imported) for module in graph.modules
                       for imported in graph.find_modules_directly_imported_by(module))
    cycles = [sorted(c) for c in nx.strongly_connected_components(edges) if len(c) > 1]
    assert cycles == []


def test_models_know_nothing_of_designs():
    # a design cell's training is the study's (study/cells.py); models train on conformers
    graph = grimp.build_graph("mlipdiv", exclude_type_checking_imports=True)
    assert not graph.chain_exists("mlipdiv.models", "mlipdiv.design", as_packages=True)


IMPORT_EVERYTHING = """
import warnings
# third-party libraries add their own filters when imported: load them first
import numpy, scipy.sparse, scipy.special, scipy.stats, torch, pandas, sklearn, h5py, ase
import matplotlib.pyplot, pyarrow, rdkit.Chem
before = list(warnings.filters)
import pkgutil, importlib, mlipdiv
for module in pkgutil.walk_packages(mlipdiv.__path__, "mlipdiv."):
    importlib.import_module(module.name)
from mlipdiv.models.registry import backend_names
backend_names()
assert list(warnings.filters) == before, "importing mlipdiv changed the warning filters"
from rdkit import Chem
Chem.MolFromSmiles("C1CC")  # RDKit must still tell the caller about this
from mlipdiv.data.sources import _parse
assert _parse("C1CC") is None  # ... while mlipdiv's own parse of it stays quiet
"""


def test_importing_mlipdiv_leaves_process_wide_settings_alone():
    done = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("SMILES Parse Error") == 1, done.stderr[-2000:]


def test_thread_limit_restores_the_callers_settings():
    import os

    import torch
    from threadpoolctl import threadpool_info

    from mlipdiv.threads import thread_limit

    before = (torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"),
              [pool["num_threads"] for pool in threadpool_info()])
    with thread_limit(1, torch=True):
        assert torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == "1"
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
    assert (torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"),
            [pool["num_threads"] for pool in threadpool_info()]) == before
