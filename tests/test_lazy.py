"""A library's package imported with its `__init__` deferred (`mlipdiv.lazy`)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run_python(code: str, cwd=None) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def write_files(root, files: dict[str, str]) -> None:
    """A toy library under `root`: {relative path: source}."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_deferred_init_runs_when_a_name_only_it_provides_is_asked_for(tmp_path):
    write_files(tmp_path, {
        "library/__init__.py": "",
        "library/tools/__init__.py": "from .light import small\nfrom .heavy import trainer\n",
        "library/tools/light.py": "def small():\n    return 'light'\n",
        "library/tools/heavy.py": "def trainer():\n    return 'heavy'\n"})
    out = run_python("""
        import sys
        from mlipdiv.lazy import without_package_init
        import library
        tools = without_package_init("library.tools", ("light",))
        print(tools.small(), "library.tools.heavy" in sys.modules, library.tools is tools)
        from library.tools import trainer   # a name only the __init__ binds: it runs now
        print(trainer(), "library.tools.heavy" in sys.modules)
        print(without_package_init("library.tools", ("light",)) is tools)
    """, cwd=tmp_path)
    assert out.splitlines() == ["light False True", "heavy True", "True"]


def test_mace_backend_skips_mace_tools_trainer_and_keeps_it_importable():
    out = run_python("""
        import sys
        from mlipdiv.models.backends.mace import _mace
        _mace()
        print(sorted(m for m in ("mace.tools.train", "torchmetrics", "pandas",
                                 "mace.data.lmdb_dataset") if m in sys.modules))
        from mace.tools import train, AtomicNumberTable
        import mace.data
        print(train.__name__, mace.data.LMDBDataset.__name__)
    """)
    assert out.splitlines()[-2:] == ["[]", "train LMDBDataset"]


def test_a_deferred_module_stands_in_until_another_name_is_asked_for(tmp_path):
    write_files(tmp_path, {
        "library/__init__.py": "print('package init ran')\n",
        "library/utils/rank.py": "print('costly rank code ran')\nRANK = 0\nSIZE = 1\n"})
    out = run_python("""
        import sys
        from mlipdiv.lazy import bind_to_package, deferred_module
        rank = deferred_module("library.utils.rank", {"RANK": 0})
        print("library" in sys.modules, rank.RANK)   # nothing of the library ran
        import library.utils   # the package's own imports would find the stand-in
        from library.utils.rank import RANK
        bind_to_package("library.utils.rank")
        print(RANK, library.utils.rank is rank)
        from library.utils.rank import SIZE   # a name only the real code binds: it runs now
        print(SIZE, deferred_module("library.utils.rank", {}) is rank)
    """, cwd=tmp_path)
    assert out.splitlines() == ["False 0", "package init ran", "0 True",
                                "costly rank code ran", "1 True"]


def test_graph_pes_backend_skips_lightning_with_the_rank_lightning_finds():
    """Outside a distributed launch, importing the graph-pes backend does not import PyTorch
    Lightning; the rank it stands in is the one Lightning's Trainer works out, and the real
    module's other names stay importable. Under a launcher (SLURM here) the real module runs."""
    code = """
        import sys
        from mlipdiv.models.backends.graphpes import _graph_pes
        _graph_pes()
        from graph_pes.utils import distributed
        given = (distributed.GLOBAL_RANK, distributed.IS_RANK_0)
        print("pytorch_lightning" in sys.modules)
        from graph_pes.utils.distributed import WORLD_SIZE   # the real module runs
        print(given == (distributed.GLOBAL_RANK, distributed.IS_RANK_0), WORLD_SIZE >= 1)
    """
    assert run_python(code).splitlines()[-2:] == ["False", "True True"]
    import os
    environ = {**os.environ, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300, env=environ)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-2:] == ["True", "True True"]
