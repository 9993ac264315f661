"""Options declared once: a dataclass field carries its default and its help text, which the
config sections (defaults, descriptions) and the CLI flags (help) read, and which
tests/test_options.py compares with both."""

from __future__ import annotations

from dataclasses import MISSING, field
from typing import Any


def option(default: Any = MISSING, help_text: str = "") -> Any:
    """A dataclass field declaring one option: its default (none: required) and its help."""
    return field(default=default, metadata={"help": help_text})


def declared_help(options_class: type) -> dict[str, str]:
    """The help of each declared option of an options dataclass, by field name."""
    return {name: spec.metadata["help"] for name, spec in
            options_class.__dataclass_fields__.items() if "help" in spec.metadata}


def declared_default(options_class: type, name: str) -> Any:
    """The declared default of one option."""
    return options_class.__dataclass_fields__[name].default
