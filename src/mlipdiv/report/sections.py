"""Optional report sections contributed by other steps (the hook for applicability domain).

A contributor is a function `section(study_dir: Path) -> Section | None`, named in
`OPTIONAL_SECTIONS` as "module:function". It reads what its step wrote into the study
directory (the domain step writes under `STUDY/domain/`) and returns None when there is
nothing to show. A contributor whose module is not installed is skipped; one that fails is
shown as a one-line note in the report, never as a broken report.
"""

from __future__ import annotations

import html
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

OPTIONAL_SECTIONS = [
    "mlipdiv.domain.report:study_section",  # applicability domain: AUROC table, retention
]


@dataclass
class Section:
    """One report section: a title, body HTML (already escaped by its producer) and figures
    as (name, caption, matplotlib Figure or PNG bytes), drawn after the body."""

    title: str
    html: str
    figures: list[tuple[str, str, Figure | bytes]] = field(default_factory=list)


def load_contributor(target: str) -> Callable | None:
    """The function named "module:function", or None when it is not installed."""
    module_name, _, function_name = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError):
        return None


def optional_sections(study_dir: Path) -> list[Section]:
    """The sections every available contributor returns for this study."""
    sections = []
    for target in OPTIONAL_SECTIONS:
        contributor = load_contributor(target)
        if contributor is None:
            continue
        try:
            section = contributor(study_dir)
        except Exception as exc:  # noqa: BLE001 - a contributor must not break the report
            # exception text can carry file contents (a crafted evaluation.json): escape it
            section = Section(target, "<p>This section could not be drawn: "
                                      f"{html.escape(str(exc))}</p>")
        if section is not None:
            sections.append(section)
    return sections
