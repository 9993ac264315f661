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
        """Label a (n_conf, n_atoms, 3) block of one molecule's conformers; returns energies
        (n_conf,) and forces. xTB runs them as one `XtbSeries` (one calculator); the labels
        equal those of single `label` calls."""
        with _one_thread(self._backend):
            if self.name in XTB_METHODS:
                series = XtbSeries(XTB_METHODS[self.name], atomic_numbers, self.charge)
                results = [self._converted(*series.singlepoint(xyz)) for xyz in positions]
            else:
                results = [self._label(atomic_numbers, xyz) for xyz in positions]
        return np.array([e for e, _ in results]), np.stack([f for _, f in results])

    @property
    def _backend(self) -> str:
        return "pyscf" if self.name == "dft" else "tblite"

    def _label(self, atomic_numbers: np.ndarray, positions: np.ndarray) -> tuple[float, np.ndarray]:
        if self.name in XTB_METHODS:
            energy, gradient = XtbSeries(XTB_METHODS[self.name], atomic_numbers,
                                         self.charge).singlepoint(positions)
        elif self.name == "dft":
            energy, gradient = _dft(self.functional_basis, atomic_numbers, positions, self.charge)
        else:
            raise LabelError(f"unknown method '{self.name}' (choose from {', '.join(METHODS)})")
        return self._converted(energy, gradient)

    @staticmethod
    def _converted(energy: float, gradient: np.ndarray) -> tuple[float, np.ndarray]:
        """Energy (eV) and forces (eV/Angstrom) from Hartree and a gradient in Hartree/Bohr."""
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


class XtbSeries:
    """GFN-xTB single points of conformers of one molecule (same atoms and charge), one after
    another with one tblite calculator whose positions are updated (results identical to a new
    calculator per conformer, ~1.5 % faster).

    With `restart`, each SCF starts from the previous conformer's converged charges instead
    of atomic densities: ~8 % less CPU on ETKDG conformers, energies within ~1e-7 eV of a
    fresh start, but forces differ by up to ~3e-3 eV/Angstrom. That is the SCF's own
    tolerance (a fresh start's forces are up to ~1.5e-3 eV/Angstrom off a tightly converged
    SCF, a restart's ~1.1e-3), yet it makes a label depend on the conformer labelled before,
    so it is off by default. A restart that fails (no convergence, non-finite result) is run
    again from a fresh start: it never fails a conformer that a fresh start labels."""

    def __init__(self, method: str, numbers: np.ndarray, charge: int = 0,
                 restart: bool = False):
        self.method = method
        self.numbers = np.asarray(numbers)
        self.charge = charge
        self.restart = restart
        self.n_restarts = 0  # SCFs started from the previous conformer, and of those
        self.n_fallbacks = 0  # the ones that failed and were run again from a fresh start
        self._calculator = None
        self._previous = None  # with `restart`: the last converged tblite Result

    def singlepoint(self, positions: np.ndarray) -> tuple[float, np.ndarray]:
        """Energy (Hartree) and gradient (Hartree/Bohr) of one conformer given in Angstrom;
        LabelError when the SCF fails from a fresh start."""
        bohr = np.asarray(positions, dtype=float) / BOHR_TO_ANGSTROM
        if self._previous is not None:
            self.n_restarts += 1
            try:
                self._calculator.update(bohr)
                return self._kept(self._calculator.singlepoint(self._previous))
            except RuntimeError:  # a LabelError too: the start may be at fault, go afresh
                self.n_fallbacks += 1
                self._calculator = self._previous = None
        try:
            if self._calculator is None:
                from tblite.interface import Calculator

                self._calculator = Calculator(self.method, self.numbers, bohr,
                                              charge=self.charge)
                self._calculator.set("verbosity", 0)
            else:
                self._calculator.update(bohr)
            return self._kept(self._calculator.singlepoint())
        except RuntimeError as exc:  # the next conformer gets a new calculator
            self._calculator = None
            if isinstance(exc, LabelError):
                raise
            raise LabelError(f"{self.method} failed: {first_line(exc)}") from None

    def _kept(self, result) -> tuple[float, np.ndarray]:
        """Energy and gradient of a converged result (with `restart`, the next SCF's start)."""
        energy, gradient = result.get("energy"), result.get("gradient")
        if not (np.isfinite(energy) and np.isfinite(gradient).all()):
            raise LabelError("non-finite energy or forces")
        if self.restart:
            self._previous = result
        return energy, gradient


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
