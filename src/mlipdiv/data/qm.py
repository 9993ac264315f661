"""Real QM labels: GFN2-/GFN1-xTB through tblite, DFT through PySCF.

Both codes work in Hartree and Bohr; conversion to eV and eV/Angstrom happens here and nowhere
else. A gradient is minus the force.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading
import warnings
from dataclasses import dataclass

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from mlipdiv.data.units import BOHR_TO_ANGSTROM, HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM, HARTREE_TO_EV
from mlipdiv.errors import FieldError, first_line

XTB_METHODS = {"gfn2-xtb": "GFN2-xTB", "gfn1-xtb": "GFN1-xTB"}
DFT_DEFAULT = "wb97x/6-31g*"
METHODS = (*XTB_METHODS, "dft")


class LabelError(RuntimeError):
    """A QM calculation failed (no SCF convergence, non-finite result, unsupported input)."""


@dataclass(frozen=True)
class QMMethod:
    """A level of theory: `name` is 'gfn2-xtb', 'gfn1-xtb' or 'dft'; `functional_basis` is
    used for DFT ('functional/basis')."""

    name: str = "gfn2-xtb"
    charge: int = 0
    functional_basis: str = DFT_DEFAULT

    def check(self) -> None:
        """Refuse an unknown method, functional or basis set once, before any molecule is
        labelled (a FieldError naming `method` or `dft_level`)."""
        if self.name not in METHODS:
            raise FieldError("method", self.name, f"choose from {', '.join(METHODS)}")
        if self.name != "dft":
            return
        functional, _, basis = self.functional_basis.partition("/")
        if not functional or not basis:
            raise FieldError("dft_level", self.functional_basis,
                             "expected functional/basis, e.g. pbe/sto-3g")
        from pyscf import gto
        from pyscf.dft import libxc

        try:
            libxc.parse_xc(functional)
        except (KeyError, ValueError, RuntimeError):
            raise FieldError("dft_level", self.functional_basis,
                             f"unknown functional '{functional}' (PySCF/libxc names)") from None
        try:
            with warnings.catch_warnings():  # pyscf suggests installing a package on a miss
                warnings.simplefilter("ignore")
                gto.basis.load(basis, "H")
        except Exception:  # noqa: BLE001 - pyscf raises several types for an unknown name
            raise FieldError("dft_level", self.functional_basis,
                             f"unknown basis set '{basis}' (PySCF names)") from None

    @property
    def level_of_theory(self) -> str:
        if self.name == "dft":
            return f"{self.functional_basis} (PySCF, density fitting)"
        return f"{XTB_METHODS[self.name]} (tblite)"

    def label(self, atomic_numbers: np.ndarray, positions: np.ndarray) -> tuple[float, np.ndarray]:
        """Energy (eV) and forces (eV/Angstrom) of one conformer given in Angstrom."""
        with _one_thread(self._backend):
            return self._label(atomic_numbers, positions)

    def label_many(
        self, atomic_numbers: np.ndarray, positions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Label a (n_conf, n_atoms, 3) block; returns energies (n_conf,) and forces."""
        with _one_thread(self._backend):
            results = [self._label(atomic_numbers, xyz) for xyz in positions]
        return np.array([e for e, _ in results]), np.stack([f for _, f in results])

    @property
    def _backend(self) -> str:
        return "pyscf" if self.name == "dft" else "tblite"

    def _label(self, atomic_numbers: np.ndarray, positions: np.ndarray) -> tuple[float, np.ndarray]:
        if self.name in XTB_METHODS:
            energy, gradient = _xtb(XTB_METHODS[self.name], atomic_numbers, positions, self.charge)
        elif self.name == "dft":
            energy, gradient = _dft(self.functional_basis, atomic_numbers, positions, self.charge)
        else:
            raise LabelError(f"unknown method '{self.name}' (choose from {', '.join(METHODS)})")
        energy_ev = energy * HARTREE_TO_EV
        forces = -np.asarray(gradient) * HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM
        if not (np.isfinite(energy_ev) and np.isfinite(forces).all()):
            raise LabelError("non-finite energy or forces")
        return float(energy_ev), forces

    def calculator(self):
        """An ASE calculator (energy in eV, forces in eV/Angstrom) for optimisation and MD."""
        return QMCalculator(self)


class QMCalculator(Calculator):
    """ASE calculator around a QMMethod, so ASE optimisers and dynamics use mlipdiv's labels."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, method: QMMethod):
        super().__init__()
        self.method = method

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        energy, forces = self.method.label(self.atoms.numbers, self.atoms.positions)
        self.results = {"energy": energy, "forces": forces}


def _xtb(method: str, numbers: np.ndarray, positions: np.ndarray, charge: int):
    from tblite.interface import Calculator

    try:
        calc = Calculator(
            method, np.asarray(numbers), np.asarray(positions) / BOHR_TO_ANGSTROM, charge=charge
        )
        calc.set("verbosity", 0)
        result = calc.singlepoint()
    except RuntimeError as exc:
        raise LabelError(f"{method} failed: {first_line(exc)}") from None
    return result.get("energy"), result.get("gradient")


def _dft(functional_basis: str, numbers: np.ndarray, positions: np.ndarray, charge: int):
    from pyscf import dft, gto

    functional, basis = functional_basis.split("/")
    mol = gto.M(
        atom=[(int(z), tuple(xyz)) for z, xyz in zip(numbers, positions, strict=True)],
        unit="Angstrom", basis=basis, charge=charge,
        spin=int(sum(numbers) - charge) % 2, verbose=0,
    )
    mf = (dft.RKS(mol) if mol.spin == 0 else dft.UKS(mol)).density_fit()
    mf.xc = functional
    mf.max_memory = int(os.environ.get("MLIPDIV_PYSCF_MEMORY_MB", "4000"))
    energy = mf.kernel()
    if not mf.converged:
        raise LabelError("SCF did not converge")
    return energy, mf.nuc_grad_method().kernel()


_BACKEND_MODULES = {"tblite": "tblite.interface", "pyscf": "pyscf.dft"}
_limited = threading.local()


@functools.cache
def _thread_controller(backend: str):
    """A threadpoolctl controller made after `backend` is imported, so it sees its libraries."""
    from threadpoolctl import ThreadpoolController

    importlib.import_module(_BACKEND_MODULES[backend])
    return ThreadpoolController()


@contextlib.contextmanager
def _one_thread(backend: str):
    """Run a QM code with one OpenMP/BLAS thread (nested uses cost nothing). Molecules here are
    small, so threads buy little, and on a busy machine spinning OpenMP threads make a GFN2 call
    ~20x slower; parallelism comes from worker processes instead (`--workers`)."""
    if getattr(_limited, "active", False):
        yield
        return
    with _thread_controller(backend).limit(limits=1):
        _limited.active = True
        try:
            yield
        finally:
            _limited.active = False
