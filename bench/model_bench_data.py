"""Shared by the model benchmarks: a GFN2-xTB store made with `mlipdiv generate`'s library
function (NCI molecules of H, C, N, O; ETKDG conformers), reused when present, and the common
command line (`--quick`, `--workdir`, `--models`)."""

from __future__ import annotations

import argparse
import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from mlipdiv.data import ConformerStore, MoleculeRecord
from mlipdiv.data.generate import GenerateOptions, generate
from mlipdiv.data.sources import MoleculeFilter
from mlipdiv.models import backend_names

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
             GenerateOptions(conformers=CONFORMERS_PER_MOLECULE, sampler="etkdg", seed=seed),
             MoleculeFilter(elements=frozenset({1, 6, 7, 8}), min_heavy_atoms=4,
                            max_heavy_atoms=12), progress=False)
    with ConformerStore(path) as store:
        total = store.total_conformers()
    if total < min_conformers:
        raise SystemExit(f"{path}: generated {total} conformers, fewer than {min_conformers}")
    return path


def bench_records(workdir: Path, min_conformers: int) -> tuple[Path, list[MoleculeRecord]]:
    """The workdir's store (made when missing or too small) and its molecules."""
    path = bench_store(workdir / "conformers.h5", min_conformers)
    with ConformerStore(path) as store:
        return path, list(store.molecules())


def parse_arguments(description: str, quick_help: str, default_models: Sequence[str],
                    extra: Callable[[argparse.ArgumentParser], None] | None = None
                    ) -> argparse.Namespace:
    """`--quick`, `--workdir` (where the store is kept between runs; created) and `--models`
    (comma-separated backends, checked against the registry; default `default_models`),
    plus what `extra` adds to the parser."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "mlipdiv-bench")
    parser.add_argument("--models", default=",".join(default_models),
                        help=f"comma-separated backends (default: {','.join(default_models)}; "
                             f"registered: {','.join(backend_names())})")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    args.models = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = sorted(set(args.models) - set(backend_names()))
    if unknown or not args.models:
        parser.error(f"--models: {', '.join(unknown) or 'none given'}; choose from "
                     f"{', '.join(backend_names())}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    return args


def reference_command(description: str, train: Callable[[argparse.Namespace], None],
                      predict: Callable[[argparse.Namespace], None]) -> None:
    """The command line of a library's own side of `training_throughput.py` (the
    `*_reference.py` scripts): `train --config --train --valid --epochs --out [--seed]` and
    `predict --config --model --configs --output`, each handed to its function."""
    parser = argparse.ArgumentParser(description=description)
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("train")
    fit.add_argument("--config", type=Path, required=True)
    fit.add_argument("--train", type=Path, required=True)
    fit.add_argument("--valid", type=Path, required=True)
    fit.add_argument("--epochs", type=int, required=True)
    fit.add_argument("--out", type=Path, required=True)
    fit.add_argument("--seed", type=int, default=0)
    infer = commands.add_parser("predict")
    infer.add_argument("--config", type=Path, required=True)
    infer.add_argument("--model", type=Path, required=True)
    infer.add_argument("--configs", type=Path, required=True)
    infer.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    train(args) if args.command == "train" else predict(args)
