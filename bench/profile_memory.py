"""Peak memory and speed of `mlipdiv profile` on a large SPICE-like store.

Writes a store of N conformers (default 1,000,000) directly with `StoreWriter`: molecules of
`--per-molecule` conformers (SPICE has ~50) that are perturbed copies of a few real molecules
(ETKDG conformers labelled once with GFN2-xTB; energies and forces jittered per copy), each copy
under its own key. Then profiles it in a child process and reports that process's peak RSS
(goal <= 2 GB) and conformers/s. The last line printed is one JSON object.

    .venv/bin/python bench/profile_memory.py                        # 1,000,000 conformers
    .venv/bin/python bench/profile_memory.py --n-conformers 50000   # quick
"""

from __future__ import annotations

import argparse
import json
import resource
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem
from threadpoolctl import threadpool_limits

from mlipdiv.data import MoleculeRecord, QMMethod, StoreWriter, perceive

TEMPLATES = ("CCO", "c1ccccc1O", "CC(=O)Nc1ccccc1", "CC(C)CC(=O)O", "OCC(O)CO",
             "CCN(CC)CC", "C1CCOC1", "CCCCc1ccncc1")
BASE_CONFORMERS = 5
NOISE_ANGSTROM = 0.05
GOAL_PEAK_RSS_MB = 2048


def base_records() -> list[MoleculeRecord]:
    """A few labelled ETKDG conformers of each template, in the store's canonical order."""
    records = []
    for smiles in TEMPLATES:
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        params = AllChem.ETKDGv3()
        params.randomSeed = 7
        AllChem.EmbedMultipleConfs(mol, BASE_CONFORMERS, params)
        numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
        positions = np.array([c.GetPositions() for c in mol.GetConformers()])
        ident = perceive(numbers, positions[0])
        numbers, positions = numbers[ident.canonical_order], positions[:, ident.canonical_order]
        with threadpool_limits(1):  # OpenMP spinning slows xTB badly on a shared machine
            energy, forces = QMMethod("gfn2-xtb").label_many(numbers, positions)
        records.append(MoleculeRecord(ident.inchikey, ident.smiles, ident.formula, numbers,
                                      positions, energy, forces))
    return records


def synthetic_key(index: int) -> str:
    """A unique InChIKey-shaped name for the index-th copy."""
    letters = []
    for _ in range(14):
        index, digit = divmod(index, 26)
        letters.append(string.ascii_uppercase[digit])
    return "".join(letters) + "-UHFFFAOYSA-N"


def write_store(path: Path, n_conformers: int, per_molecule: int, seed: int = 0) -> int:
    """Write the store molecule by molecule (bounded memory); returns the molecule count."""
    rng = np.random.default_rng(seed)
    bases = base_records()
    n_molecules = -(-n_conformers // per_molecule)
    with StoreWriter(path, "GFN2-xTB (tblite)", created_by="bench/profile_memory.py") as writer:
        for m in range(n_molecules):
            base = bases[m % len(bases)]
            n_conf = min(per_molecule, n_conformers - m * per_molecule)
            pick = rng.integers(0, base.n_conformers, n_conf)
            positions = base.positions[pick] + rng.normal(0, NOISE_ANGSTROM,
                                                          (n_conf, base.n_atoms, 3))
            writer.add(MoleculeRecord(
                synthetic_key(m), base.smiles, base.formula, base.atomic_numbers, positions,
                base.energy[pick] + rng.normal(0, 0.01, n_conf),
                base.forces[pick] + rng.normal(0, 0.05, (n_conf, base.n_atoms, 3))))
    return n_molecules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-conformers", type=int, default=1_000_000)
    parser.add_argument("--per-molecule", type=int, default=50)
    parser.add_argument("--store", type=Path, help="Reuse (or keep) the store at this path.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or Path(tmp) / "spice_like.h5"
        start = time.perf_counter()
        if not store.exists():
            write_store(store, args.n_conformers, args.per_molecule)
        write_s = time.perf_counter() - start
        start = time.perf_counter()
        completed = subprocess.run(
            [sys.executable, "-c", "from mlipdiv.cli import main; main()", "profile",
             str(store), "--json"],
            capture_output=True, text=True,
        )
        wall = time.perf_counter() - start
        if completed.returncode != 0:
            sys.exit(f"profile failed: {completed.stderr.strip()}")
        summary = json.loads(completed.stdout.strip().splitlines()[-1])
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(json.dumps({
            "benchmark": "profile_memory",
            "n_conformers": summary["n_conformers"],
            "n_molecules": summary["n_molecules"],
            "store_mb": round(store.stat().st_size / 2**20, 1),
            "store_write_s": round(write_s, 1),
            "profile_wall_s": round(wall, 1),
            "conformers_per_s": round(summary["n_conformers"] / wall, 1),
            "peak_rss_mb": round(peak_mb, 1),
            "goal_peak_rss_mb": GOAL_PEAK_RSS_MB,
            "meets_goal": peak_mb <= GOAL_PEAK_RSS_MB,
            "rmsd_pair_cap": summary["rmsd_pair_cap"],
            "quests_environments_used": summary["quests"]["environments_used"],
        }))


if __name__ == "__main__":
    main()
