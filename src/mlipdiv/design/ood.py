"""OOD shifts: what `split.ood = "KIND[:ARGUMENT]"` selects as the out-of-distribution set.

Each shift is one `OodShift` subclass that declares its `kind` and `syntax`, parses its
argument and picks the OOD molecules from the molecule table: `SizeShift` (`size:MIN_HEAVY`),
`ElementShift` (`elements:S,Cl`), `ClusterShift` (`cluster[:K]`). Defining a subclass registers
it in `OOD_SHIFTS`; `parse_ood` and `ood_syntax` read the registry. The OOD test-set kind
(`mlipdiv.design.test_sets.OutOfDistribution`) carves what the shift selects.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
from ase.data import atomic_numbers as symbol_to_number

from mlipdiv.diversity.structural import morgan_fingerprint
from mlipdiv.errors import FieldError

OOD_SHIFTS: dict[str, type[OodShift]] = {}


class OodShift(ABC):
    """A distribution shift chosen by `split.ood = "KIND[:ARGUMENT]"`: declares its `kind`
    and `syntax`, parses its argument and picks the OOD molecules. Defining a subclass
    registers it."""

    kind: ClassVar[str]
    syntax: ClassVar[str]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not hasattr(cls, "kind") or not hasattr(cls, "syntax"):
            raise TypeError(f"OOD shift {cls.__name__} must declare kind and syntax")
        if OOD_SHIFTS.setdefault(cls.kind, cls) is not cls:
            raise TypeError(f"OOD shift {cls.kind} is defined twice")

    @classmethod
    @abstractmethod
    def parse(cls, argument: str) -> OodShift:
        """The shift for the text after `KIND:` (ValueError when it is malformed)."""

    @abstractmethod
    def withhold(self, table: pd.DataFrame, candidates: set[str],
                 rng: np.random.Generator) -> set[str]:
        """Keys of the candidate molecules outside the training distribution."""


@dataclass
class SizeShift(OodShift):
    """OOD `size:MIN_HEAVY`: molecules with at least MIN_HEAVY heavy atoms."""

    min_heavy_atoms: int
    kind: ClassVar[str] = "size"
    syntax: ClassVar[str] = "size:MIN_HEAVY"

    @classmethod
    def parse(cls, argument):
        if int(argument) < 1:
            raise ValueError(argument)
        return cls(int(argument))

    def withhold(self, table, candidates, rng):
        rows = table[table["inchikey"].isin(candidates)]
        return set(rows.loc[rows["n_heavy_atoms"] >= self.min_heavy_atoms, "inchikey"])


@dataclass
class ElementShift(OodShift):
    """OOD `elements:S,Cl`: molecules containing any of the elements."""

    elements: tuple[str, ...]
    kind: ClassVar[str] = "elements"
    syntax: ClassVar[str] = "elements:S,Cl"

    @classmethod
    def parse(cls, argument):
        elements = tuple(e.strip() for e in argument.split(",") if e.strip())
        if not elements or any(e not in symbol_to_number for e in elements):
            raise ValueError(argument)
        return cls(elements)

    def withhold(self, table, candidates, rng):
        rows = table[table["inchikey"].isin(candidates)]
        wanted = set(self.elements)
        has = rows["elements"].map(lambda e: bool(wanted & set(e.split(","))))
        return set(rows.loc[has, "inchikey"])


@dataclass
class ClusterShift(OodShift):
    """OOD `cluster[:K]`: k-means (K clusters) on Morgan fingerprints; the cluster whose centroid
    lies farthest from the centroid of all other molecules, among clusters holding at most half
    of the molecules."""

    n_clusters: int = 8
    kind: ClassVar[str] = "cluster"
    syntax: ClassVar[str] = "cluster[:K]"

    @classmethod
    def parse(cls, argument):
        if argument and int(argument) < 2:
            raise ValueError(argument)
        return cls(int(argument)) if argument else cls()

    def withhold(self, table, candidates, rng):
        from scipy.sparse import csr_matrix  # only this shift needs scipy.sparse / sklearn
        from sklearn.cluster import KMeans

        rows = table[table["inchikey"].isin(candidates)].reset_index(drop=True)
        n_clusters = min(self.n_clusters, len(rows))
        if n_clusters < 2:
            raise FieldError("split.ood", "cluster", "needs at least 2 molecules")
        bits = [list(morgan_fingerprint(s).GetOnBits()) for s in rows["smiles"]]
        matrix = csr_matrix(
            (np.ones(sum(map(len, bits)), np.float32),
             np.concatenate([np.asarray(b, np.int64) for b in bits]),
             np.cumsum([0, *map(len, bits)])),
            shape=(len(rows), 2048),
        )
        labels = KMeans(n_clusters, n_init=3, random_state=int(rng.integers(2**31))).fit_predict(
            matrix)
        total = np.asarray(matrix.sum(axis=0)).ravel()
        best, best_distance = None, -1.0
        for label in range(n_clusters):
            members = labels == label
            if not 0 < members.sum() <= len(rows) / 2:
                continue
            inside = np.asarray(matrix[members].sum(axis=0)).ravel()
            distance = np.linalg.norm(inside / members.sum()
                                      - (total - inside) / (len(rows) - members.sum()))
            if distance > best_distance:
                best, best_distance = label, distance
        return set(rows.loc[labels == best, "inchikey"])


def ood_syntax() -> str:
    """The accepted `split.ood` forms, e.g. "size:MIN_HEAVY, elements:S,Cl or cluster[:K]"."""
    forms = [cls.syntax for cls in OOD_SHIFTS.values()]
    return ", ".join(forms[:-1]) + f" or {forms[-1]}" if len(forms) > 1 else forms[0]


def parse_ood(spec: str) -> OodShift:
    """The registered shift `spec` names (`size:9`, `elements:S,Cl`, `cluster`...)."""
    kind, _, argument = spec.partition(":")
    if kind in OOD_SHIFTS:
        try:
            return OOD_SHIFTS[kind].parse(argument)
        except ValueError:
            pass
    raise FieldError("split.ood", spec, f"expected {ood_syntax()}")
