"""The study report: one self-contained HTML file with the experiments, the fitted error
surface, public datasets on the molecules × conformers plane, diversity, parity plots and
findings computed from the results. Other steps add sections through `OPTIONAL_SECTIONS`."""

from mlipdiv.report.build import write_report
from mlipdiv.report.sections import OPTIONAL_SECTIONS, Section, optional_sections
from mlipdiv.report.tables import cell_summary, load_public_datasets

__all__ = [
    "OPTIONAL_SECTIONS",
    "Section",
    "cell_summary",
    "load_public_datasets",
    "optional_sections",
    "write_report",
]
