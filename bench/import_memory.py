"""Peak memory and speed of `mlipdiv import` on a large synthetic SPICE-layout file.

Writes N conformers (default 1,000,000) in the SPICE layout and native units (Bohr, Hartree,
Hartree/Bohr gradients): groups of perturbed copies of a few real molecules embedded with
RDKit, each group with its own atom order and one badly distorted conformer (flagged by the
import). Then runs `mlipdiv import` in a child process and reports that process's peak RSS
(goal <= 2 GB) and conformers/s. The last line printed is one JSON object.

    .venv/bin/python bench/import_memory.py                       # 1,000,000 conformers
    .venv/bin/python bench/import_memory.py --n-conformers 20000  # quick
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem

from mlipdiv.data.units import BOHR_TO_ANGSTROM

TEMPLATES = ("CCO", "c1ccccc1O", "CC(=O)Nc1ccccc1", "CC(C)CC(=O)O", "OCC(O)CO",
             "CCN(CC)CC", "C1CCOC1", "Cn1cnc2c1c(=O)n(C)c(=O)n2C")
NOISE_ANGSTROM = 0.03  # thermal-like jitter that keeps the bond graph
DISTORTED_NOISE_ANGSTROM = 0.4  # one conformer per group: graph changes, gets flagged
GOAL_PEAK_RSS_MB = 2048


def templates() -> list[tuple[np.ndarray, np.ndarray]]:
    """(atomic numbers, positions in Angstrom) of one ETKDG conformer per template SMILES."""
    out = []
    for smiles in TEMPLATES:
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        AllChem.EmbedMolecule(mol, randomSeed=7)
        numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
        out.append((numbers, mol.GetConformer().GetPositions()))
    return out


def write_spice(path: Path, n_conformers: int, per_group: int, seed: int = 0) -> int:
    """Write the synthetic file group by group (bounded memory); returns the group count."""
    rng = np.random.default_rng(seed)
    shapes = templates()
    n_groups = -(-n_conformers // per_group)
    with h5py.File(path, "w") as f:
        for g in range(n_groups):
            n_conf = min(per_group, n_conformers - g * per_group)
            numbers, base = shapes[g % len(shapes)]
            order = rng.permutation(len(numbers))
            noise = rng.normal(0.0, NOISE_ANGSTROM, (n_conf, len(numbers), 3))
            noise[0] *= DISTORTED_NOISE_ANGSTROM / NOISE_ANGSTROM
            positions = (base[order] + noise) / BOHR_TO_ANGSTROM
            group = f.create_group(f"mol{g:06d}")
            group["atomic_numbers"] = numbers[order].astype(np.int16)
            group["conformations"] = positions.astype(np.float32)
            group["dft_total_energy"] = -100.0 + rng.normal(0.0, 0.01, n_conf)
            group["dft_total_gradient"] = rng.normal(0.0, 0.02, positions.shape).astype(
                np.float32)
            group["smiles"] = np.array([TEMPLATES[g % len(TEMPLATES)].encode()])
    return n_groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-conformers", type=int, default=1_000_000)
    parser.add_argument("--per-group", type=int, default=500)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to write the files (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        source, store = Path(tmp) / "synthetic_spice.h5", Path(tmp) / "store.h5"
        start = time.perf_counter()
        n_groups = write_spice(source, args.n_conformers, args.per_group)
        write_seconds = time.perf_counter() - start
        mlipdiv = Path(sys.executable).with_name("mlipdiv")
        start = time.perf_counter()
        done = subprocess.run(
            [str(mlipdiv), "import", str(source), "--format", "spice", "--out", str(store),
             "--json"], capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"import failed: {done.stderr.strip()}")
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        figures = {
            "bench": "import_memory",
            "n_conformers": summary["n_conformers"],
            "n_groups": n_groups,
            "n_molecules": summary["n_molecules"],
            "n_flagged": summary["n_flagged"],
            "source_mb": round(source.stat().st_size / 2**20, 1),
            "write_source_s": round(write_seconds, 1),
            "import_s": round(seconds, 1),
            "conformers_per_s": round(summary["n_conformers"] / seconds),
            "peak_rss_mb": round(peak_mb),
            "goal_peak_rss_mb": GOAL_PEAK_RSS_MB,
            "meets_goal": peak_mb <= GOAL_PEAK_RSS_MB,
        }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
