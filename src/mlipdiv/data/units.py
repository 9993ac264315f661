"""Unit conversions, applied only at the boundaries (readers, QM labellers).

Inside mlipdiv everything is eV, Angstrom and eV/Angstrom.
"""

HARTREE_TO_EV = 27.211386245988
BOHR_TO_ANGSTROM = 0.529177210903
KCAL_PER_MOL_TO_EV = 0.0433641043
HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM = HARTREE_TO_EV / BOHR_TO_ANGSTROM

ENERGY_FACTORS = {"eV": 1.0, "hartree": HARTREE_TO_EV, "kcal/mol": KCAL_PER_MOL_TO_EV}
LENGTH_FACTORS = {"angstrom": 1.0, "bohr": BOHR_TO_ANGSTROM}


def energy_to_ev(unit: str) -> float:
    """Factor that converts an energy in `unit` to eV."""
    return ENERGY_FACTORS[unit]


def length_to_angstrom(unit: str) -> float:
    """Factor that converts a length in `unit` to Angstrom."""
    return LENGTH_FACTORS[unit]


def force_to_ev_per_angstrom(energy_unit: str, length_unit: str) -> float:
    """Factor that converts a force (or gradient) in energy_unit/length_unit to eV/Angstrom."""
    return energy_to_ev(energy_unit) / length_to_angstrom(length_unit)
