"""The study report: one self-contained HTML file with the experiments, the fitted error
surface, public datasets on the molecules × conformers plane, diversity, the applicability
domain, parity plots and findings computed from the results. The sections are the explicit
list `mlipdiv.report.build.SECTIONS`."""

from mlipdiv.report.build import SECTIONS, write_report
from mlipdiv.report.sections import Section
from mlipdiv.report.tables import cell_summary, load_public_datasets

__all__ = [
    "SECTIONS",
    "Section",
    "cell_summary",
    "load_public_datasets",
    "write_report",
]
