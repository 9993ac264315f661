"""`mlipdiv info`: what a store holds, computed by streaming it once."""

from __future__ import annotations

from collections import Counter

import numpy as np
from ase.data import chemical_symbols

from mlipdiv.data.store import ConformerStore


def _stats(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {}
    q = np.percentile(values, [0, 25, 50, 75, 100])
    return {
        "mean": float(np.mean(values)), "std": float(np.std(values)),
        "min": float(q[0]), "q25": float(q[1]), "median": float(q[2]),
        "q75": float(q[3]), "max": float(q[4]),
    }


def summarize(store: ConformerStore) -> dict:
    """Molecules, conformers, conformers-per-molecule and atoms distributions, elements,
    energy (eV/atom) and force (eV/Angstrom) statistics, level of theory, flagged conformers,
    and which conformers carry which labels (`labels`: energy+forces, energy only, none;
    `label_sets`: each label set's provenance and labelled conformers and molecules)."""
    counts = store.conformer_counts()
    per_mol = np.array(list(counts.values()), dtype=float)
    atoms_per_mol, energies_per_atom, force_norms = [], [], []
    elements: Counter = Counter()
    flagged = 0
    labels: Counter = Counter({"energy+forces": 0, "energy": 0, "none": 0})
    for record in store.molecules():
        labels[record.label_kind] += record.n_conformers
        atoms_per_mol.append(record.n_atoms)
        for z in record.atomic_numbers:
            elements[chemical_symbols[int(z)]] += record.n_conformers
        flagged += int(sum(1 for f in record.flags if f))
        if record.labelled:
            energies_per_atom.append(record.energy / record.n_atoms)
        if record.has_forces:
            force_norms.append(np.linalg.norm(record.forces, axis=-1).ravel())
    return {
        "path": str(store.path),
        "level_of_theory": store.level_of_theory,
        "n_molecules": len(counts),
        "n_conformers": int(per_mol.sum()),
        "conformers_per_molecule": _stats(per_mol),
        "atoms_per_molecule": _stats(np.array(atoms_per_mol, dtype=float)),
        "elements": dict(sorted(elements.items())),
        "energy_per_atom_ev": _stats(np.concatenate(energies_per_atom))
        if energies_per_atom else {},
        "force_norm_ev_per_angstrom": _stats(np.concatenate(force_norms)) if force_norms else {},
        "flagged_conformers": flagged,
        "labels": dict(labels),
        "label_sets": {name: {**provenance, **store.label_counts(name)}
                       for name, provenance in store.label_sets().items()},
        "source_units": {k[len("source_"):-len("_unit")]: v for k, v in store.attrs.items()
                         if k.startswith("source_") and k.endswith("_unit")},
        "created_by": store.attrs.get("created_by", ""),
        **({"damaged_molecules": dict(store.damaged)} if store.damaged else {}),
    }
