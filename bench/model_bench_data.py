"""Shared data for the model benchmarks: a GFN2-xTB store made with `mlipdiv generate`'s
library function (NCI molecules of H, C, N, O; ETKDG conformers), reused when present."""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from mlipdiv.data import ConformerStore
from mlipdiv.data.generate import GenerateOptions, generate
from mlipdiv.data.sources import MoleculeFilter

CONFORMERS_PER_MOLECULE = 24  # asked; ETKDG pruning keeps about a third for small molecules
EXPECTED_YIELD = 6
FULL_CONFORMERS = 1350  # >= 1,000 for training throughput; CF test + 1,100 pool for the curve


def bench_store(path: Path, min_conformers: int, seed: int = 0) -> Path:
    """A store at `path` with at least `min_conformers` labelled conformers."""
    if path.exists():
        with ConformerStore(path) as store:
            if store.total_conformers() >= min_conformers:
                return path
        path.unlink()
    n_molecules = math.ceil(1.3 * min_conformers / EXPECTED_YIELD)
    generate("nci", path, n_molecules,
             GenerateOptions(n_conformers=CONFORMERS_PER_MOLECULE, sampler="etkdg", seed=seed),
             MoleculeFilter(elements=frozenset({1, 6, 7, 8}), min_heavy_atoms=4,
                            max_heavy_atoms=12), progress=False)
    with ConformerStore(path) as store:
        total = store.total_conformers()
    if total < min_conformers:
        raise SystemExit(f"{path}: generated {total} conformers, fewer than {min_conformers}")
    return path


def parse_arguments(description: str, quick_help: str) -> argparse.Namespace:
    """`--quick` and `--workdir` (where the store is kept between runs), workdir created."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "mlipdiv-bench")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    return args
