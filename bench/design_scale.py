"""Wall time and peak memory of `mlipdiv split` + both `mlipdiv design`s at SPICE scale.

Builds a synthetic store of M distinct small molecules (default 100,000) x 10 conformers once
and keeps it under bench-output/ (reused by later runs): molecules enumerated by putting three
substituents on a few ring cores, identity from RDKit (InChIKey), cheap positions (the RDKit 2D
depiction plus 0.1 Angstrom noise per conformer, no labels). Then runs the split (CF from every
pool molecule, ST/SF 10% each), a fixed-budget design (automatic 5-point grid) and a
fixed-molecules design (1,000 molecules, automatic grid of C) as child processes through the
CLI and reports their wall times and the largest peak RSS. Goal: split + both designs within
5 minutes and 2 GB on 2 cores. The last line printed is one JSON object.

    .venv/bin/python bench/design_scale.py                      # 100,000 molecules
    .venv/bin/python bench/design_scale.py --molecules 5000     # quick
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rdkit import Chem, RDLogger
from rdkit.Chem import rdDepictor

from mlipdiv.data import MoleculeRecord, StoreWriter

RDLogger.DisableLog("rdApp.*")
CORES = ("c1({a})cc({b})cc({c})c1", "c1({a})c({b})cc({c})cc1", "c1({a})c({b})c({c})ccc1",
         "c1({a})cc({b})nc({c})c1", "c1({a})c({b})ncc({c})c1", "C1({a})CC({b})CC({c})C1",
         "C1({a})C({b})CCC({c})C1", "c1({a})cc({b})c({c})s1", "C({a})C({b})C({c})")
SUBSTITUENTS = ("[H]", "C", "CC", "O", "N", "F", "Cl", "OC", "C(=O)O", "C#N", "CO", "CN",
                "C(C)C", "C=O", "NC", "S", "CCC", "OCC", "C(F)(F)F", "N(C)C", "C(N)=O", "Br",
                "CCO", "CCN", "SC", "OC(C)C", "C(=O)C", "NC(=O)C")
CONFORMERS = 10
NOISE_ANGSTROM = 0.1
OUTPUT = Path(__file__).resolve().parents[1] / "bench-output"
GOAL_S, GOAL_MB = 300, 2048


def molecules(n: int):
    """Yield (inchikey, smiles, atomic numbers, 2D positions) of n distinct molecules."""
    seen: set[str] = set()
    # cores vary fastest, so every prefix of the enumeration holds every scaffold
    for (a, b, c), core in itertools.product(itertools.product(SUBSTITUENTS, repeat=3), CORES):
        mol = Chem.MolFromSmiles(core.format(a=a, b=b, c=c))
        if mol is None:
            continue
        key = Chem.MolToInchiKey(mol)
        if not key or key in seen:
            continue
        seen.add(key)
        mol = Chem.AddHs(mol)
        rdDepictor.Compute2DCoords(mol)
        numbers = np.array([atom.GetAtomicNum() for atom in mol.GetAtoms()])
        yield key, Chem.MolToSmiles(Chem.RemoveHs(mol)), numbers, mol.GetConformer().GetPositions()
        if len(seen) == n:
            return
    raise SystemExit(f"only {len(seen)} distinct molecules can be enumerated")


def write_store(path: Path, n_molecules: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with StoreWriter(path, "none (synthetic)", created_by="bench/design_scale.py") as writer:
        for key, smiles, numbers, positions in molecules(n_molecules):
            noisy = positions + rng.normal(0, NOISE_ANGSTROM, (CONFORMERS, *positions.shape))
            writer.add(MoleculeRecord(key, smiles, "", numbers, noisy))


def run(arguments: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-c", "from mlipdiv.cli import main; main()", *arguments],
        capture_output=True, text=True,
    )
    if completed.returncode != 0:
        sys.exit(f"{arguments[0]} failed: {completed.stderr.strip()}")
    return time.perf_counter() - start, completed.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecules", type=int, default=100_000)
    parser.add_argument("--budget", type=int, default=100_000)
    parser.add_argument("--fixed-molecules", type=int, default=1000)
    parser.add_argument("--store", type=Path, help="The store (default: bench-output/"
                        "design_scale_<M>.h5, made once and reused).")
    args = parser.parse_args()
    store = args.store or OUTPUT / f"design_scale_{args.molecules}.h5"
    store.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if not store.exists():
        write_store(store, args.molecules)
    write_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        splits = Path(tmp) / "splits"
        budget_design, molecules_design = Path(tmp) / "budget.json", Path(tmp) / "molecules.json"
        split_s, split_out = run(["split", str(store), "--out", str(splits), "--json"])
        budget_s, budget_out = run(["design", "fixed-budget", "--splits", str(splits), "--out",
                                    str(budget_design), "--budget", str(args.budget), "--json"])
        molecules_s, molecules_out = run([
            "design", "fixed-molecules", "--splits", str(splits), "--out",
            str(molecules_design), "--molecules", str(args.fixed_molecules), "--json"])
        counts = json.loads(split_out.strip().splitlines()[-1])["counts"]
        budget_cells = json.loads(budget_out.strip().splitlines()[-1])["cells"]
        molecules_cells = json.loads(molecules_out.strip().splitlines()[-1])["cells"]
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        total = split_s + budget_s + molecules_s
        print(json.dumps({
            "benchmark": "design_scale",
            "n_molecules": sum(c["molecules"] for n, c in counts.items() if n != "cf"),
            "n_conformers_per_molecule": CONFORMERS,
            "store_write_s": round(write_s, 1),
            "split_wall_s": round(split_s, 1),
            "fixed_budget_design_wall_s": round(budget_s, 1),
            "fixed_molecules_design_wall_s": round(molecules_s, 1),
            "total_wall_s": round(total, 1), "goal_s": GOAL_S, "goal_mb": GOAL_MB,
            "peak_rss_mb": round(peak_mb, 1),
            "goal_met": total <= GOAL_S and peak_mb <= GOAL_MB,
            "split_counts": counts,
            "budget": args.budget,
            "grid_m": [c["n_molecules"] for c in budget_cells],
            "grid_c": [c["conformers_per_molecule"] for c in molecules_cells],
            "design_mb": round(budget_design.stat().st_size / 2**20, 1),
        }))


if __name__ == "__main__":
    main()
