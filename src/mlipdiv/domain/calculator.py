"""An ASE calculator over a trained run that reports the trust scores with every energy and
can warn or stop when a structure leaves the applicability domain (e.g. during MD)."""

from __future__ import annotations

import os
import warnings

from ase.calculators.calculator import Calculator, all_changes

from mlipdiv.data.identity import PerceptionError, perceive
from mlipdiv.data.store import MoleculeRecord
from mlipdiv.domain.model import Domain, load_domain
from mlipdiv.errors import MlipdivError
from mlipdiv.models import load_run
from mlipdiv.models.base import Committee

ON_EXIT = (None, "warn", "raise")


class DomainWarning(UserWarning):
    """A structure left the applicability domain (calculator with on_exit='warn')."""


class OutOfDomainError(MlipdivError):
    """A structure left the applicability domain (calculator with on_exit='raise')."""


class DomainCalculator(Calculator):
    """Ensemble-mean energy and forces of a trained run, plus in `results`: each member's
    prediction (`member_energies`, `member_forces`), the committee spread (`energy_std` eV,
    `forces_std` eV/A per component, and their recalibrated versions), every trust score
    (`domain_scores`, `domain_atom_scores`), the deciding score (`domain_score`) and
    `in_domain`. With on_exit='warn' or 'raise' a structure whose score exceeds its threshold
    triggers a DomainWarning or an OutOfDomainError."""

    implemented_properties = ["energy", "free_energy", "forces", "energy_std", "forces_std",
                              "domain_score", "in_domain"]

    def __init__(self, run, domain: Domain, on_exit: str | None = None,
                 score: str | None = None, smiles: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if on_exit not in ON_EXIT:
            raise MlipdivError(f"on_exit={on_exit!r}: choose from 'warn', 'raise' or None")
        self.run, self.domain, self.on_exit = run, domain, on_exit
        self.score_name = score or domain.primary
        if self.score_name not in domain.thresholds:
            raise MlipdivError(f"score {self.score_name!r}: choose from "
                               f"{', '.join(domain.thresholds)}")
        self.smiles = smiles

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        record = MoleculeRecord("", self._smiles(), "", self.atoms.numbers,
                                self.atoms.positions[None])
        scored = self.domain.score(self.run, [record])[0]
        committee = Committee(scored.member_energy, scored.member_forces)
        in_domain = bool(self.domain.in_domain(scored, self.score_name)[0])
        self.results = {
            **committee.calculator_results(),
            "member_energies": scored.member_energy[:, 0],
            "member_forces": scored.member_forces[:, 0],
            "domain_scores": {k: float(v[0]) for k, v in scored.scores.items()},
            "domain_atom_scores": {k: v[0] for k, v in scored.atom_scores.items()},
            "domain_score": float(scored.scores[self.score_name][0]),
            "in_domain": in_domain,
        }
        for key, sigma in self.domain.calibrated_sigma(scored).items():
            self.results[f"{key}_std_calibrated"] = sigma[0]
        if not in_domain and self.on_exit:
            self._exit(scored)

    def _exit(self, scored) -> None:
        unseen = int(scored.scores["unseen_elements"][0])
        if unseen:
            reason = f"{unseen} atom(s) of elements absent from training"
        else:
            reason = (f"{self.score_name} = {self.results['domain_score']:.4g} > threshold "
                      f"{self.domain.thresholds[self.score_name]:.4g}")
        message = f"structure left the applicability domain: {reason}"
        if self.on_exit == "raise":
            raise OutOfDomainError(message)
        warnings.warn(message, DomainWarning, stacklevel=3)

    def _smiles(self) -> str:
        """The molecule's SMILES for the Tanimoto score, perceived once from the first
        structure (bonds may break later in MD; the score then still refers to the start)."""
        if self.smiles is None:

            try:
                self.smiles = perceive(self.atoms.numbers, self.atoms.positions).smiles
            except PerceptionError:
                self.smiles = ""
        return self.smiles


def domain_calculator(run_path: str | os.PathLike, on_exit: str | None = None,
                      score: str | None = None, **kwargs) -> DomainCalculator:
    """The domain-aware ASE calculator of a run whose domain has been fitted."""

    return DomainCalculator(load_run(run_path), load_domain(run_path), on_exit, score, **kwargs)
