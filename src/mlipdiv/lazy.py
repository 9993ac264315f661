"""Packages whose public names are imported when first used (PEP 562), so that a command
needing one small module of a stage (the CLI's option declarations) does not wait for the
stage's heavy dependencies (pandas, pyarrow, RDKit) as well."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]
                 ) -> tuple[Callable[[str], Any], list[str]]:
    """The module `__getattr__` and `__all__` of `package`, whose names `exports` lists per
    submodule ({"designs": ("Cell", "Design"), ...}); each submodule is imported when one of
    its names is first asked for."""
    home = {name: f"{package}.{module}" for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(home[name]), name)

    return __getattr__, sorted(home)
