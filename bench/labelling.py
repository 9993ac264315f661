"""Labelling throughput: `mlipdiv label` with 2 workers versus a plain single-process loop.

Builds an unlabelled store of ETKDG conformers of NCI molecules (C, H, N, O; 6-12 heavy atoms),
then labels the same conformers in one run: (1) a plain loop calling tblite's GFN2-xTB
directly, one thread, as each worker uses; (2) `mlipdiv.data.generate.label_store` (the library
function behind `mlipdiv label`, checkpoints and final store included) in this process, which
gives the per-conformer overhead of the machinery (also in CPU time, which other jobs on the
machine disturb less than wall time); (3) `label_store` with 2 worker processes.
Prints conformers/s and the ratio time(1) / time(3) as one JSON line (goal: ratio >= 1.8 on
2 cores). The load average is printed too: other jobs on the same cores lower the ratio.

    .venv/bin/python bench/labelling.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem

from mlipdiv.data import ConformerStore, MoleculeRecord, QMMethod, write_store
from mlipdiv.data.generate import label_store
from mlipdiv.data.identity import identity_of
from mlipdiv.data.sampling import prepare_molecule
from mlipdiv.data.sources import MoleculeFilter, parse_elements, select_molecules
from mlipdiv.data.units import BOHR_TO_ANGSTROM, HARTREE_TO_EV


def build_store(path: Path, n_molecules: int, n_conformers: int) -> int:
    """Unlabelled store of ETKDG conformers; returns the number of conformers."""
    selection = select_molecules("nci", n_molecules, MoleculeFilter(
        parse_elements("C,H,N,O"), 6, 12), seed=0)
    records = []
    for entry in selection.entries:
        mol = prepare_molecule(entry.smiles)
        params = AllChem.ETKDGv3()
        params.randomSeed = 1  # RDKit's randomSeed 0 embeds every conformer identically
        AllChem.EmbedMultipleConfs(mol, n_conformers, params)
        if mol.GetNumConformers() < n_conformers:
            continue
        identity = identity_of(Chem.Mol(mol))
        order = identity.canonical_order
        numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])[order]
        positions = np.array([c.GetPositions() for c in mol.GetConformers()])[:, order]
        records.append(MoleculeRecord(identity.inchikey, identity.smiles, identity.formula,
                                      numbers, positions))
    return write_store(path, records, "unlabelled (ETKDG)", created_by="bench/labelling.py")


def plain_loop(path: Path) -> np.ndarray:
    """GFN2-xTB energies (eV) of every conformer, straight from tblite in this process."""
    from tblite.interface import Calculator
    from threadpoolctl import threadpool_limits

    energies = []
    with ConformerStore(path) as store, threadpool_limits(1):
        for record in store.molecules():
            for positions in record.positions:
                calc = Calculator("GFN2-xTB", record.atomic_numbers, positions / BOHR_TO_ANGSTROM)
                calc.set("verbosity", 0)
                energies.append(calc.singlepoint().get("energy") * HARTREE_TO_EV)
    return np.array(energies)


def timed(function, *args):
    """Result, wall-clock seconds and this process's CPU seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 instead of 600 conformers")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--molecules", type=int, default=50, help="molecules in the store")
    parser.add_argument("--conformers", type=int, default=12, help="conformers per molecule")
    args = parser.parse_args()
    n_molecules, n_conformers = (20, 10) if args.quick else (args.molecules, args.conformers)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "positions.h5"
        n_total = build_store(store, n_molecules, n_conformers)
        method = QMMethod("gfn2-xtb")
        with ConformerStore(store) as opened:  # warm-up: load tblite and its parameters once
            method.label(opened.atomic_numbers(opened.inchikeys[0]),
                         opened.molecule(opened.inchikeys[0]).positions[0])
        serial, serial_seconds, serial_cpu = timed(plain_loop, store)
        _, one_worker_seconds, one_worker_cpu = timed(
            label_store, store, Path(tmp) / "one-worker.h5", method, 1, False)
        _, parallel_seconds, _ = timed(
            label_store, store, Path(tmp) / "labelled.h5", method, args.workers, False)
        with ConformerStore(Path(tmp) / "labelled.h5") as labelled:
            parallel = np.concatenate([r.energy for r in labelled.molecules()])
            atoms = np.mean([len(labelled.atomic_numbers(k)) for k in labelled.inchikeys])
    print(json.dumps({
        "benchmark": "labelling", "method": "GFN2-xTB", "conformers": n_total,
        "mean_atoms": round(float(atoms), 1), "workers": args.workers,
        "serial_conformers_per_s": round(n_total / serial_seconds, 1),
        "parallel_conformers_per_s": round(n_total / parallel_seconds, 1),
        "ratio": round(serial_seconds / parallel_seconds, 3),
        "one_worker_conformers_per_s": round(n_total / one_worker_seconds, 1),
        "one_worker_overhead_fraction": round(one_worker_seconds / serial_seconds - 1, 3),
        "one_worker_cpu_overhead_fraction": round(one_worker_cpu / serial_cpu - 1, 3),
        "max_energy_difference_ev": float(np.abs(parallel - serial).max()),
        "cpu_count": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
    }))


if __name__ == "__main__":
    main()
