"""The model backends: every `Potential` subclass in `mlipdiv.models.backends` registers
itself when its module is imported; this module imports them all (cheaply: backends import
their library on first use) and answers by name. Config choices, CLI errors and run sizes
come from here, so a new backend is one module in `backends/`."""

from __future__ import annotations

import functools
import importlib
import math
import pkgutil

from mlipdiv.errors import FieldError, MlipdivError
from mlipdiv.models import backends
from mlipdiv.models.base import REGISTERED, Potential
from mlipdiv.models.sizes import SIZES, RunSize


@functools.cache
def _load_backends() -> None:
    for module in pkgutil.iter_modules(backends.__path__):
        importlib.import_module(f"{backends.__name__}.{module.name}")


def backend_names() -> tuple[str, ...]:
    """The registered backends, sorted."""
    _load_backends()
    return tuple(sorted(REGISTERED))


def potential_class(backend: str) -> type[Potential]:
    """The Potential subclass of a backend name; MlipdivError naming the choices."""
    _load_backends()
    if backend not in REGISTERED:
        raise FieldError("model", repr(backend),
                         f"not a backend (choose from {', '.join(backend_names())})")
    return REGISTERED[backend]


def run_size(backend: str, size: str) -> RunSize:
    """The hyperparameters of `backend` at `size`; MlipdivError naming the bad value."""
    cls = potential_class(backend)
    if size not in cls.sizes:
        raise FieldError("size", repr(size), f"choose from {', '.join(SIZES)}")
    return cls.sizes[size]


def study_schedule(backend: str, size: str, largest_n_train: int) -> tuple[int, int]:
    """The study-wide training policy: (max_steps, steps_per_round) that every cell of a
    study gets, namely what its largest cell (`largest_n_train` conformers) needs for the
    size's epochs at the size's batch size -- one round is one epoch of the largest cell."""
    if largest_n_train < 1:
        raise MlipdivError(f"largest cell has {largest_n_train} training conformers; "
                           f"at least 1 is needed")
    settings = run_size(backend, size).training
    per_round = math.ceil(largest_n_train / settings.batch_size)
    return settings.max_epochs * per_round, per_round
