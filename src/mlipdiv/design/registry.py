"""Registering strategy classes by name: the experiments' and the selections' registries."""

from __future__ import annotations

from mlipdiv.errors import FieldError


def register(registry: dict, cls: type, what: str, declared: tuple[str, ...]) -> None:
    """Check a strategy class's declarations and add it to its registry by `name`."""
    if "name" not in cls.__dict__:  # an intermediate base
        return
    missing = [attribute for attribute in declared if not hasattr(cls, attribute)]
    if missing:
        raise TypeError(f"{what} {cls.__name__} must declare {', '.join(missing)}")
    if registry.setdefault(cls.name, cls) is not cls:
        raise TypeError(f"{what} {cls.name} is defined twice")


def choose(registry: dict, name: str, field: str):
    """`registry[name]`, else a FieldError on `field` naming the choices."""
    if name not in registry:
        raise FieldError(field, name, f"choose from {', '.join(registry)}")
    return registry[name]
