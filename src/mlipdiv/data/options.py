"""The options of `mlipdiv generate` (`GenerateOptions`), in a module of their own: the
command line reads their declarations without importing the generation machinery (RDKit, the
readers)."""

from __future__ import annotations

from dataclasses import dataclass

from mlipdiv.data.qm import QMMethod
from mlipdiv.declare import option


@dataclass(frozen=True)
class GenerateOptions:
    """How each molecule is turned into labelled conformers (declared once: the study
    config's `[data]` section builds it, the `generate` flags show its help)."""

    conformers: int = option(help_text="Conformers per molecule.")
    method: QMMethod = option(QMMethod(), "The QM method labelling them.")
    sampler: str = option("etkdg+md", "etkdg, md, nms or etkdg+md.")
    temperature: float = option(500.0, "Sampling temperature in K, for md and nms.")
    seed: int = option(0, "Molecule choice and sampling seed.")
