"""Packages whose public names are imported when first used (PEP 562), so that a command
needing one small module of a stage (the CLI's option declarations) does not wait for the
stage's heavy dependencies (pandas, pyarrow, RDKit) as well; and a library's package imported
with its `__init__` deferred until a name only that `__init__` provides is asked for, or a
library's module whose import-time work is stood in for by values known without it."""

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
    sys.modules[package] = module
    try:
        for submodule in submodules:
            for key, value in vars(importlib.import_module(f"{package}.{submodule}")).items():
                if not key.startswith("_"):
                    module.__dict__.setdefault(key, value)
    except BaseException:
        del sys.modules[package]
        raise
    bind_to_package(package)
    _run_on_first_missing_name(module, spec)
    return module


def deferred_module(name: str, values: dict[str, Any]) -> ModuleType:
    """Module `name` registered before its first import with `values` standing in for what
    its code computes when imported: for a library module whose import does costly work a
    caller can answer without it (graph-pes's `utils.distributed` builds a PyTorch Lightning
    `Trainer`, 3 s, to learn a process rank that is 0 outside a distributed launch). The
    first other name asked for runs the real module in the same namespace (which recomputes
    `values`); its package is not imported here: once it is, `bind_to_package(name)` makes
    the module an attribute of it, as an import would. A module already imported is
    returned as it is."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name) if "." not in name else _spec_without_parent(name)
    if spec is None or spec.loader is None:
        return importlib.import_module(name)  # not a module on disk: the usual import
    module = importlib.util.module_from_spec(spec)
    module.__dict__.update(values)
    sys.modules[name] = module
    _run_on_first_missing_name(module, spec)
    return module


def bind_to_package(name: str) -> None:
    """Set imported module `name` as an attribute of its (imported) package, as the import
    system does for a submodule it imports itself."""
    parent, _, leaf = name.rpartition(".")
    if parent in sys.modules and name in sys.modules:
        setattr(sys.modules[parent], leaf, sys.modules[name])


def _spec_without_parent(name: str):
    """The spec of submodule `name` found on its top-level package's path without importing
    any package on the way (`importlib.util.find_spec` would run their `__init__`s)."""
    import importlib.machinery

    top, *middle, _ = name.split(".")
    spec = importlib.util.find_spec(top) if top not in sys.modules else sys.modules[top].__spec__
    if spec is None or spec.submodule_search_locations is None:
        return None
    path = list(spec.submodule_search_locations)
    for part in middle:
        path = [f"{folder}/{part}" for folder in path]
    return importlib.machinery.PathFinder.find_spec(name, path)


def _run_on_first_missing_name(module: ModuleType, spec) -> None:
    """Give `module` a PEP 562 `__getattr__` that runs its real code once, in the same
    namespace (under a lock: a second thread waits for it), then looks the name up."""
    completing = threading.Lock()

    def __getattr__(attribute: str) -> Any:
        if attribute.startswith("__") and attribute != "__all__":
            # the import system's probes (`__path__`: is it a package?) are not names the
            # real code would bind
            raise AttributeError(f"module {module.__name__!r} has no attribute {attribute!r}")
        with completing:
            if module.__dict__.pop("__getattr__", None) is not None:
                spec.loader.exec_module(module)
        return getattr(module, attribute)

    module.__getattr__ = __getattr__
