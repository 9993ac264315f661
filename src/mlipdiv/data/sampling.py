"""Conformational samplers: make the conformers of a molecule differ in more than noise.

Every sampler starts from RDKit ETKDG embeddings, which give torsional diversity (different
rotamers and ring puckers), and optionally adds thermal diversity around them:

* ``etkdg`` -- ETKDGv3 embeddings pruned to be at least 0.5 A apart (heavy-atom RMSD) and
  relaxed with MMFF94 (UFF where MMFF lacks parameters): distinct local minima of a force field.
  Returns *at most* the requested number: a rigid molecule has only one or a few.
* ``md`` -- Langevin molecular dynamics with the QM method (through an ASE calculator) at the
  requested temperature, started from the ETKDG conformers in turn. Each trajectory equilibrates
  for 25 fs before its first snapshot and further snapshots are 25 fs apart, so snapshots are
  decorrelated in the bond and angle vibrations; torsional variety comes from the starts.
* ``nms`` -- normal-mode sampling around a QM minimum, in the spirit of ANI-1: the first ETKDG
  conformer is optimised, its Hessian computed by central finite differences of the QM forces,
  and each conformer displaces the minimum along all vibrational normal modes with amplitudes
  drawn from the classical harmonic Boltzmann distribution at the temperature
  (normal coordinate q_k ~ N(0, kT / omega_k^2)). Modes softer than 100 cm^-1 are treated as
  100 cm^-1 so that the linear picture does not tear soft torsions apart.
* ``etkdg+md`` (default) -- half the conformers (rounded up, at most the distinct ETKDG ones)
  from ``etkdg``, the rest from ``md``: force-field minima plus thermal QM snapshots.

Thermal sampling uses the labelling method when it is an xTB method; DFT-labelled sets are
sampled with GFN2-xTB, since DFT dynamics would cost far more than the labels themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from ase import Atoms, units
from ase.data import atomic_masses
from rdkit import Chem
from rdkit.Chem import AllChem
from rdkit.Chem.EnumerateStereoisomers import EnumerateStereoisomers, StereoEnumerationOptions

from mlipdiv.data.identity import quiet_rdkit
from mlipdiv.data.qm import XTB_METHODS, QMMethod

SAMPLERS = ("etkdg", "md", "nms", "etkdg+md")
PRUNE_RMSD = 0.5  # Angstrom, heavy atoms: ETKDG conformers closer than this are one conformer
SOFTEST_MODE_INVCM = 100.0


class SamplingError(RuntimeError):
    """A molecule could not be embedded or sampled."""


@dataclass(frozen=True)
class MDSettings:
    """Langevin dynamics used for thermal sampling (times in fs, friction in 1/fs)."""

    timestep_fs: float = 0.5
    friction_per_fs: float = 0.05
    equilibration_fs: float = 25.0
    interval_fs: float = 25.0

    def steps(self, duration_fs: float) -> int:
        return max(1, round(duration_fs / self.timestep_fs))


@dataclass
class Conformers:
    """Sampled geometries in the molecule's RDKit atom order, with per-conformer provenance."""

    positions: np.ndarray
    sampler: list[str]
    temperature: list[float]


@quiet_rdkit()
def prepare_molecule(smiles: str) -> Chem.Mol:
    """Parse a SMILES, fix unassigned stereocentres to their first embeddable assignment (so
    every conformer is the same stereoisomer), and add explicit hydrogens."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise SamplingError("unparsable SMILES")
    options = StereoEnumerationOptions(onlyUnassigned=True, unique=True, tryEmbedding=True)
    mol = next(iter(EnumerateStereoisomers(mol, options=options)), mol)
    return Chem.AddHs(mol)


@quiet_rdkit()
def etkdg_conformers(mol: Chem.Mol, n: int, seed: int) -> np.ndarray:
    """Up to `n` distinct ETKDGv3 conformers, force-field relaxed; (k, n_atoms, 3) Angstrom.

    The conformers are also left on `mol`.
    """
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed) % 2**31
    params.pruneRmsThresh = PRUNE_RMSD
    params.numThreads = 1
    ids = AllChem.EmbedMultipleConfs(mol, max(3 * n, 10), params)
    if not ids:
        params.useRandomCoords = True
        ids = AllChem.EmbedMultipleConfs(mol, max(3 * n, 10), params)
    if not ids:
        raise SamplingError("embedding failed")
    for conf_id in list(ids)[n:]:
        mol.RemoveConformer(conf_id)
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMoleculeConfs(mol, numThreads=1, maxIters=2000)
    elif AllChem.UFFHasAllMoleculeParams(mol):
        AllChem.UFFOptimizeMoleculeConfs(mol, numThreads=1, maxIters=2000)
    return np.array([conf.GetPositions() for conf in mol.GetConformers()])


def md_conformers(
    numbers: np.ndarray, starts: np.ndarray, n: int, temperature: float, method: QMMethod,
    rng: np.random.Generator, settings: MDSettings = MDSettings(),
) -> np.ndarray:
    """`n` Langevin-MD snapshots at `temperature`, trajectories started from `starts` in turn."""
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta

    per_start = math.ceil(n / len(starts))
    snapshots: list[np.ndarray] = []
    for start in starts[: math.ceil(n / per_start)]:
        atoms = Atoms(numbers=numbers, positions=start)
        atoms.calc = method.calculator()
        atoms.set_constraint(FixCom())
        thermalize_momenta(atoms, temperature, rng=rng)
        dynamics = Langevin(
            atoms, timestep=settings.timestep_fs * units.fs, temperature_K=temperature,
            friction=settings.friction_per_fs / units.fs, fixcm=False, rng=rng,
        )
        dynamics.run(settings.steps(settings.equilibration_fs))
        for k in range(min(per_start, n - len(snapshots))):
            if k:
                dynamics.run(settings.steps(settings.interval_fs))
            snapshots.append(atoms.get_positions())
    return np.array(snapshots)


def nms_conformers(
    numbers: np.ndarray, start: np.ndarray, n: int, temperature: float, method: QMMethod,
    rng: np.random.Generator,
) -> np.ndarray:
    """`n` normal-mode samples around the QM minimum reached from `start` (see module doc)."""
    minimum = optimise(numbers, start, method)
    inv_sqrt_mass = np.repeat(atomic_masses[numbers] ** -0.5, 3)
    mass_weighted = hessian(numbers, minimum, method) * np.outer(inv_sqrt_mass, inv_sqrt_mass)
    eigenvalues, modes = np.linalg.eigh(mass_weighted)
    n_rigid = 5 if _is_linear(numbers, minimum) else 6
    vibrational = np.argsort(np.abs(eigenvalues))[n_rigid:]
    # hbar*omega (eV) = scale * sqrt(eigenvalue in eV / (A^2 amu)), as in ase.vibrations
    scale = units._hbar * 1e10 / math.sqrt(units._e * units._amu)
    softest = (SOFTEST_MODE_INVCM * units.invcm / scale) ** 2
    omega_squared = np.maximum(np.abs(eigenvalues[vibrational]), softest)
    amplitudes = rng.standard_normal((n, len(vibrational))) * np.sqrt(
        units.kB * temperature / omega_squared
    )
    displacements = (amplitudes @ modes[:, vibrational].T) * inv_sqrt_mass
    return minimum + displacements.reshape(n, len(numbers), 3)


def optimise(numbers: np.ndarray, positions: np.ndarray, method: QMMethod,
             fmax: float = 0.01, steps: int = 300) -> np.ndarray:
    """A local QM minimum (BFGS, max force `fmax` eV/A) reached from `positions`."""
    from ase.optimize import BFGS

    atoms = Atoms(numbers=numbers, positions=positions)
    atoms.calc = method.calculator()
    BFGS(atoms, logfile=None).run(fmax=fmax, steps=steps)
    return atoms.get_positions()


def hessian(numbers: np.ndarray, positions: np.ndarray, method: QMMethod,
            step: float = 0.005) -> np.ndarray:
    """Cartesian Hessian (3N, 3N) in eV/A^2 from central differences of the QM forces."""
    flat = positions.reshape(-1)
    rows = []
    for i in range(flat.size):
        forces = []
        for sign in (1.0, -1.0):
            displaced = flat.copy()
            displaced[i] += sign * step
            forces.append(method.label(numbers, displaced.reshape(-1, 3))[1].reshape(-1))
        rows.append(-(forces[0] - forces[1]) / (2 * step))
    matrix = np.array(rows)
    return (matrix + matrix.T) / 2


def thermal_method(method: QMMethod) -> QMMethod:
    """The method that drives MD/NMS: the labelling method for xTB, GFN2-xTB for DFT."""
    return method if method.name in XTB_METHODS else replace(method, name="gfn2-xtb")


@quiet_rdkit()
def sample_conformers(
    mol: Chem.Mol, n: int, sampler: str, temperature: float, method: QMMethod, seed: int
) -> Conformers:
    """Sample `n` conformers (fewer for `etkdg` on rigid molecules) of a molecule with
    explicit hydrogens, in its RDKit atom order."""
    if sampler not in SAMPLERS:
        raise SamplingError(f"unknown sampler '{sampler}' (choose from {', '.join(SAMPLERS)})")
    rng = np.random.default_rng(seed)
    numbers = np.array([atom.GetAtomicNum() for atom in mol.GetAtoms()])
    distinct = etkdg_conformers(mol, n, seed)
    thermal = thermal_method(method)
    parts: list[tuple[str, np.ndarray]] = []
    if sampler in ("etkdg", "etkdg+md"):
        n_etkdg = len(distinct) if sampler == "etkdg" else min(math.ceil(n / 2), len(distinct))
        parts.append(("etkdg", distinct[:n_etkdg]))
    n_thermal = n - sum(len(p) for _, p in parts) if sampler != "etkdg" else 0
    if n_thermal and sampler == "nms":
        parts.append(("nms", nms_conformers(numbers, distinct[0], n_thermal, temperature,
                                            thermal, rng)))
    elif n_thermal:
        # Start trajectories from the ETKDG conformers not already returned as such first.
        starts = np.roll(distinct, -len(parts[0][1]) if parts else 0, axis=0)
        parts.append(("md", md_conformers(numbers, starts, n_thermal, temperature, thermal,
                                          rng)))
    return Conformers(
        positions=np.concatenate([p for _, p in parts]),
        sampler=[name for name, p in parts for _ in p],
        temperature=[math.nan if name == "etkdg" else temperature
                     for name, p in parts for _ in p],
    )


def _is_linear(numbers: np.ndarray, positions: np.ndarray) -> bool:
    moments = Atoms(numbers=numbers, positions=positions).get_moments_of_inertia()
    return bool(moments.min() < 1e-3 * moments.max())
