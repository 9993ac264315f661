"""A report section, and the guard every section is drawn under.

The report draws an explicit list of sections (`mlipdiv.report.build.SECTIONS`); each is a
function `section(view) -> Section | None` that returns None when its step wrote nothing. A
section that fails is shown as a one-line note in the report and logged, never a broken
report.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from matplotlib.figure import Figure

from mlipdiv.errors import first_line

log = logging.getLogger("mlipdiv.report")


@dataclass
class Section:
    """One report section: a title, body HTML (already escaped by its producer) and figures
    as (name, caption, matplotlib Figure or PNG bytes), drawn after the body."""

    title: str
    html: str
    figures: list[tuple[str, str, Figure | bytes]] = field(default_factory=list)


def drawn(section: Callable, view, title: str) -> Section | None:
    """`section(view)`, or a note under `title` saying why it could not be drawn."""
    try:
        return section(view)
    except Exception as exc:  # noqa: BLE001 - one section must not break the report
        reason = first_line(exc, with_type=True)
        log.error("report section %r not drawn: %s", title, reason)
        # exception text can carry file contents (a crafted evaluation.json): escape it
        return Section(title, f"<p>This section could not be drawn: {html.escape(reason)}</p>")
