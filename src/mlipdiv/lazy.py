"""Packages whose public names are imported when first used (PEP 562), so that a command
needing one small module of a stage (the CLI's option declarations) does not wait for the
stage's heavy dependencies (pandas, pyarrow, RDKit) as well; and a library's package imported
with its `__init__` deferred until a name only that `__init__` provides is asked for."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
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


def without_package_init(package: str, submodules: Sequence[str]) -> ModuleType:
    """`package` imported with its `__init__` deferred: for a library whose `__init__`
    imports far more than a caller needs (mace-torch's `mace.tools` brings its trainer,
    torchmetrics and pandas, 1 s of a prediction command). The public names of `submodules`
    stand in the package's namespace; the first name asked for that they lack runs the real
    `__init__` (a PEP 562 `__getattr__`), so `from package import anything` keeps working
    for any later caller. A package already imported is returned as it is."""
    if package in sys.modules:
        return sys.modules[package]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return importlib.import_module(package)  # not a package on disk: the usual import
    module = importlib.util.module_from_spec(spec)
    parent, _, name = package.rpartition(".")
    sys.modules[package] = module
    try:
        for submodule in submodules:
            for key, value in vars(importlib.import_module(f"{package}.{submodule}")).items():
                if not key.startswith("_"):
                    module.__dict__.setdefault(key, value)
    except BaseException:
        del sys.modules[package]
        raise
    if parent:
        setattr(sys.modules[parent], name, module)

    completing = threading.Lock()

    def __getattr__(attribute: str) -> Any:
        # the real __init__, run once (a second thread waits for it) in the same namespace
        # (the submodules imported already are reused), then the name looked up as usual
        with completing:
            if module.__dict__.pop("__getattr__", None) is not None:
                spec.loader.exec_module(module)
        return getattr(module, attribute)

    module.__getattr__ = __getattr__
    return module
