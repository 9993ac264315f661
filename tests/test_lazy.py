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


def test_a_deferred_init_runs_when_a_name_only_it_provides_is_asked_for(tmp_path):
    package = tmp_path / "library"
    (package / "tools").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "tools" / "__init__.py").write_text(
        "from .light import small\nfrom .heavy import trainer\n")
    (package / "tools" / "light.py").write_text("def small():\n    return 'light'\n")
    (package / "tools" / "heavy.py").write_text("def trainer():\n    return 'heavy'\n")
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
