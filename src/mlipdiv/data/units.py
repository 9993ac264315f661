"""Unit conversions, applied only at the boundaries (readers, QM labellers), and the
plausibility check every import runs on what it converted.

Inside mlipdiv everything is eV, Angstrom and eV/Angstrom. Units are named by the choices of
`mlipdiv import --energy-unit / --length-unit / --forces-unit` (`ENERGY_UNITS`,
`LENGTH_UNITS`; a force unit is "<energy unit>/<length unit>"); `parse_*` also accept the
spellings files use in their `units` attributes ("Hartree", "nanometers", "kcal/mol/A"...).
"""

from __future__ import annotations

import numpy as np

HARTREE_TO_EV = 27.211386245988
BOHR_TO_ANGSTROM = 0.529177210903
KCAL_PER_MOL_TO_EV = 0.0433641043
KJ_PER_MOL_TO_EV = KCAL_PER_MOL_TO_EV / 4.184
NM_TO_ANGSTROM = 10.0
HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM = HARTREE_TO_EV / BOHR_TO_ANGSTROM

ENERGY_FACTORS = {"eV": 1.0, "hartree": HARTREE_TO_EV, "kcal/mol": KCAL_PER_MOL_TO_EV,
                  "kJ/mol": KJ_PER_MOL_TO_EV}
LENGTH_FACTORS = {"angstrom": 1.0, "bohr": BOHR_TO_ANGSTROM, "nm": NM_TO_ANGSTROM}
ENERGY_UNITS = tuple(ENERGY_FACTORS)
LENGTH_UNITS = tuple(LENGTH_FACTORS)

_ENERGY_ALIASES = {"ev": "eV", "electronvolt": "eV", "electronvolts": "eV", "hartree": "hartree",
                   "hartrees": "hartree", "ha": "hartree", "eh": "hartree", "au": "hartree",
                   "kcal/mol": "kcal/mol", "kcal_per_mol": "kcal/mol",
                   "kilocalorie/mole": "kcal/mol", "kilocalories_per_mole": "kcal/mol",
                   "kj/mol": "kJ/mol", "kilojoule/mole": "kJ/mol",
                   "kilojoules_per_mole": "kJ/mol", "kj_per_mol": "kJ/mol"}
_LENGTH_ALIASES = {"angstrom": "angstrom", "angstroms": "angstrom", "ang": "angstrom",
                   "a": "angstrom", "å": "angstrom", "bohr": "bohr", "bohrs": "bohr",
                   "a0": "bohr", "nm": "nm", "nanometer": "nm", "nanometers": "nm",
                   "nanometre": "nm", "nanometres": "nm"}

# Approximate all-electron free-atom energies (Hartree, non-relativistic Hartree-Fock limit,
# rounded up in magnitude) of the elements mlipdiv imports. A molecule's total energy is
# close to the sum of its atoms' (binding and correlation energies are ~1 %), so no energy
# of a molecule in any method reaches PLAUSIBLE_ENERGY_FACTOR times that sum.
FREE_ATOM_HARTREE = {1: 0.5, 3: 7.5, 5: 24.6, 6: 37.7, 7: 54.4, 8: 74.8, 9: 99.4, 11: 161.9,
                     12: 199.6, 14: 288.9, 15: 340.7, 16: 397.5, 17: 459.5, 19: 599.2,
                     20: 676.8, 35: 2604.0, 53: 7116.0}
PLAUSIBLE_ENERGY_FACTOR = 1.5
# Median over conformers of the RMS force component: about 1 eV/A for molecules sampled at
# 300-500 K, a few eV/A for strongly distorted sets (ANI-2x's 99th percentile is ~5).
PLAUSIBLE_RMS_FORCE = 10.0  # eV/A
# Forces are judged only on frames whose closest pair is at least this fraction of the two
# atoms' covalent radius sum: a compressed bond (a scan to C-C 1.0 A) has genuinely large
# forces, tens of eV/A, that say nothing of the unit.
COMPRESSED_PAIR = 0.8
# Median nearest-neighbour distance: bonds are >= 0.74 A (H2).
PLAUSIBLE_NEAREST_NEIGHBOUR = 0.5  # A


def energy_to_ev(unit: str) -> float:
    """Factor that converts an energy in `unit` to eV."""
    return ENERGY_FACTORS[unit]


def length_to_angstrom(unit: str) -> float:
    """Factor that converts a length in `unit` to Angstrom."""
    return LENGTH_FACTORS[unit]


def force_to_ev_per_angstrom(energy_unit: str, length_unit: str) -> float:
    """Factor that converts a force (or gradient) in energy_unit/length_unit to eV/Angstrom."""
    return energy_to_ev(energy_unit) / length_to_angstrom(length_unit)


def parse_energy_unit(text: str) -> str | None:
    """The canonical name of an energy unit ("Hartree" -> "hartree"), None if unknown."""
    key = str(text).strip().lower().replace(" ", "")
    return _ENERGY_ALIASES.get(key)


def parse_length_unit(text: str) -> str | None:
    """The canonical name of a length unit ("nanometers" -> "nm"), None if unknown."""
    return _LENGTH_ALIASES.get(str(text).strip().lower().replace(" ", ""))


def parse_force_unit(text: str) -> tuple[str, str] | None:
    """(energy unit, length unit) of "kcal/mol/angstrom", "hartree/bohr"...; None if unknown."""
    energy, _, length = str(text).strip().rpartition("/")
    parsed = parse_energy_unit(energy), parse_length_unit(length)
    return None if None in parsed else parsed  # type: ignore[return-value]


def plausibility_problem(numbers: np.ndarray, positions: np.ndarray,
                         energy: np.ndarray | None, forces: np.ndarray | None,
                         stated: tuple[str, str, str, str]) -> str | None:
    """Why converted values (eV, Angstrom, eV/Angstrom) cannot be a molecule's in the stated
    units (energy, length, force energy, force length), naming the likely unit; None when
    they can. The rule: the median conformer's |energy| must stay below 1.5 x the sum of its
    atoms' free-atom energies (`FREE_ATOM_HARTREE`), its RMS force component below 10 eV/A,
    and the median nearest-neighbour distance above 0.5 A. It catches values too large for
    their unit (kcal/mol or kJ/mol read as eV, eV read as Hartree, nm read as Angstrom), not
    too small ones: Hartree read as eV looks like a referenced energy."""
    energy_unit, length_unit, force_energy, force_length = stated
    if len(positions) and len(numbers) > 1:
        diff = positions[..., :, None, :] - positions[..., None, :, :]
        distance = np.linalg.norm(diff, axis=-1) + np.diag(np.full(len(numbers), np.inf))
        nearest = float(np.median(distance.min(axis=-1)))
        if nearest < PLAUSIBLE_NEAREST_NEIGHBOUR:
            likely = _likely(nearest, LENGTH_FACTORS, length_unit, lambda v: v > 0.7)
            return (f"median nearest-neighbour distance {nearest:.3g} A is shorter than any "
                    f"bond: positions are not in {length_unit}"
                    + (f"; likely {likely}: pass --length-unit {likely}" if likely else ""))
    if energy is not None and len(energy):
        bound = PLAUSIBLE_ENERGY_FACTOR * HARTREE_TO_EV * sum(
            FREE_ATOM_HARTREE.get(int(z), 0.0) for z in numbers)
        median = float(np.median(energy))
        if abs(median) > bound:
            likely = _likely(median, ENERGY_FACTORS, energy_unit,
                             lambda v: abs(v) <= bound, target=bound / PLAUSIBLE_ENERGY_FACTOR)
            return (f"median energy {median / len(numbers):.6g} eV/atom is beyond what any "
                    f"molecule of these atoms has in {energy_unit} (|E| <= "
                    f"{bound / len(numbers):.4g} eV/atom)"
                    + (f"; likely {likely}: pass --energy-unit {likely}" if likely else ""))
    if forces is not None and len(forces):
        rms = float(np.median(np.sqrt((forces ** 2).mean(axis=(1, 2)))))
        if rms > PLAUSIBLE_RMS_FORCE:
            stated_factor = force_to_ev_per_angstrom(force_energy, force_length)
            candidates = {f"{e}/{force_length}": force_to_ev_per_angstrom(e, force_length)
                          for e in ENERGY_UNITS}
            likely = _likely(rms, candidates, f"{force_energy}/{force_length}",
                             lambda v: v <= PLAUSIBLE_RMS_FORCE, target=1.0,
                             stated_factor=stated_factor)
            return (f"median RMS force component {rms:.4g} eV/A is far beyond molecules' "
                    f"(<= {PLAUSIBLE_RMS_FORCE:g} eV/A): forces are not in "
                    f"{force_energy}/{force_length}"
                    + (f"; likely {likely}: pass --forces-unit {likely}" if likely else ""))
    return None


def uncompressed(numbers: np.ndarray, positions: np.ndarray, batch: int = 1024) -> np.ndarray:
    """(n_conf,) bool: frames (Angstrom) whose closest pair of atoms is at least
    `COMPRESSED_PAIR` x their covalent radius sum, the frames whose forces the plausibility
    check judges."""
    from ase.data import covalent_radii

    numbers = np.asarray(numbers)
    if len(numbers) < 2:
        return np.ones(len(positions), dtype=bool)
    radii = covalent_radii[numbers]
    limit = COMPRESSED_PAIR * (radii[:, None] + radii[None, :])
    np.fill_diagonal(limit, -np.inf)
    keep = np.empty(len(positions), dtype=bool)
    for start in range(0, len(positions), batch):
        part = positions[start:start + batch]
        diff = part[:, :, None, :] - part[:, None, :, :]
        distance = np.sqrt(np.einsum("cijk,cijk->cij", diff, diff))
        keep[start:start + batch] = (distance >= limit).all(axis=(1, 2))
    return keep


def _likely(value: float, factors: dict[str, float], stated: str, plausible,
            target: float | None = None, stated_factor: float | None = None) -> str | None:
    """The unit (other than `stated`) under which `value` (converted with the stated unit)
    becomes plausible, nearest to `target` in log scale when several do."""
    native = value / (factors[stated] if stated_factor is None else stated_factor)
    fits = [(unit, native * factor) for unit, factor in factors.items()
            if unit != stated and plausible(native * factor)]
    if not fits:
        return None
    if target is None:
        return min(fits, key=lambda f: abs(factors[f[0]] - factors[stated]))[0]
    return min(fits, key=lambda f: abs(np.log(abs(f[1]) / target)))[0]


# ---------------------------------------------------------------- per-frame checks
# Two atoms of a molecule are never closer than this: the shortest bond is H2's 0.74 A and
# the closest contacts of strongly compressed MD / normal-mode frames stay above ~0.5 A. Two
# atoms closer than it (the same position twice, a coordinate typed wrong) are a broken frame.
MIN_ATOM_DISTANCE = 0.3  # A
# No energy convention gives a molecule more than this per atom: total and atomization
# energies are negative, referenced (E - sum of E0) and shifted (E - E_min) ones stay within
# a fraction of an eV per atom of zero.
MAX_POSITIVE_ENERGY_PER_ATOM = 2.0  # eV/atom
# A total energy (the layouts of SPICE, ANI, QM7-X, QM9) is negative and of the order of its
# atoms' free-atom energies: the upper bound is the plausibility check's (1.5 x their sum,
# `FREE_ATOM_HARTREE`), the lower one is this many eV per atom. H2, the least bound molecule
# per atom, has -15.9 eV/atom all-electron and about -13 with valence-only methods (GFN2-xTB,
# effective core potentials, whose totals are far below the all-electron free-atom sum),
# while atomization, referenced and relative energies stay within ~6 eV/atom of zero.
MIN_TOTAL_ENERGY_PER_ATOM = 8.0  # eV/atom, magnitude
# conformers x atoms^2 per vectorised distance batch
_DISTANCE_BATCH = 2_000_000


def closest_distances(positions: np.ndarray) -> np.ndarray:
    """The shortest interatomic distance (Angstrom) of every conformer (n_conf, n_atoms, 3);
    infinity for one atom."""
    n_conf, n_atoms = positions.shape[:2]
    if n_atoms < 2:
        return np.full(n_conf, np.inf)
    batch = max(1, _DISTANCE_BATCH // n_atoms ** 2)
    upper = np.triu_indices(n_atoms, k=1)
    out = np.empty(n_conf)
    for start in range(0, n_conf, batch):
        part = positions[start:start + batch]
        diff = part[:, :, None, :] - part[:, None, :, :]
        out[start:start + batch] = np.linalg.norm(diff, axis=-1)[:, upper[0], upper[1]].min(
            axis=1)
    return out


def free_atom_energy_ev(numbers: np.ndarray) -> float:
    """Sum of the all-electron free-atom energies (eV, negative) of the atoms."""
    return -HARTREE_TO_EV * sum(FREE_ATOM_HARTREE.get(int(z), 0.0) for z in numbers)


def frame_problems(numbers: np.ndarray, positions: np.ndarray, energy: np.ndarray | None,
                   total_energy: bool) -> dict[int, tuple[str, str]]:
    """{conformer index: (reason to count it under, one-line detail)} of the conformers (eV,
    Angstrom) no molecule can have: two atoms closer than `MIN_ATOM_DISTANCE`; an energy
    above +`MAX_POSITIVE_ENERGY_PER_ATOM` per atom; and, where the layout says its energies
    are total (`total_energy`), one that is not negative or smaller in magnitude than
    `MIN_TOTAL_ENERGY_PER_ATOM` per atom (larger ones are the plausibility check's)."""
    problems: dict[int, tuple[str, str]] = {}
    n_atoms = len(numbers)
    for i in np.flatnonzero(closest_distances(positions) < MIN_ATOM_DISTANCE):
        d = np.linalg.norm(positions[i][:, None] - positions[i][None], axis=-1)
        d[np.diag_indices(n_atoms)] = np.inf
        a, b = np.unravel_index(np.argmin(d), d.shape)
        problems[int(i)] = (f"atoms closer than {MIN_ATOM_DISTANCE:g} A",
                            f"atoms {a} and {b} are {d[a, b]:.3g} A apart (closer than "
                            f"{MIN_ATOM_DISTANCE:g} A: no molecule has that)")
    if energy is None or not len(energy):
        return problems
    bound = -MIN_TOTAL_ENERGY_PER_ATOM * n_atoms
    for i, value in enumerate(np.asarray(energy, dtype=float)):
        if i in problems:
            continue
        if value > MAX_POSITIVE_ENERGY_PER_ATOM * n_atoms:
            problems[i] = ("positive energy", f"energy {value:.6g} eV is positive beyond any "
                           f"convention (> +{MAX_POSITIVE_ENERGY_PER_ATOM:g} eV/atom)")
        elif total_energy and (value >= 0 or value > bound):
            problems[i] = ("total energy not near the free-atom sum",
                           f"total energy {value:.6g} eV is not a total energy of these atoms "
                           f"(negative, below {bound:.6g} eV and of the order of their "
                           f"free-atom sum {free_atom_energy_ev(numbers):.6g} eV)")
    return problems
