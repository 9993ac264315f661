"""`mlipdiv design`: an experiment's design over a SPLITS training pool.

An experiment (`design/experiments/`: fixed budget N, fixed molecules M, fixed conformers per
molecule C, ...) says what it holds fixed and which of M and C its grid varies; the `Planner`
here draws the cells. Within one replicate every cell draws from one molecule order and one
conformer order per molecule, so cells are nested: a cell's molecules are a prefix of the
order, and a molecule's conformers in a smaller cell are inside those of a larger one.
Differences between cells therefore come from diversity, not from which molecules were drawn.
Validation conformers come from the same molecules (the next conformers in each molecule's
order), never from a test set.

Selection: molecules `random` or `maxmin` (RDKit MaxMinPicker on Morgan fingerprints);
conformers `random` or `farthest` (scikit-matter FPS on sorted inverse interatomic distances).
The experiments and selections are registered classes (`experiments/`, `selections.py`).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from mlipdiv.atomic import write_text_atomic
from mlipdiv.data.store import ConformerStore
from mlipdiv.design.experiments import experiment, experiment_names
from mlipdiv.design.options import DesignOptions
from mlipdiv.design.selections import (
    conformer_selection,
    farthest_point_order,
    inverse_distance_descriptor,
    molecule_selection,
)
from mlipdiv.design.split_sets import ByMolecule, Splits
from mlipdiv.design.splits import load_splits
from mlipdiv.diversity.conformational import (
    DISTINCT_RMSD_ANGSTROM,
    DUPLICATE_RMSD_ANGSTROM,
    RMSD_PAIR_CAP,
    ConformerGeometry,
)
from mlipdiv.diversity.entropy import EnvironmentReservoir
from mlipdiv.diversity.profile import quartiles
from mlipdiv.diversity.structural import mean_tanimoto_distance, morgan_fingerprint
from mlipdiv.errors import FieldError, MlipdivError, check_seed
from mlipdiv.files import reading

__all__ = ["Cell", "Design", "DesignOptions", "Planner", "farthest_point_order",
           "inverse_distance_descriptor", "load_design", "make_design", "spread",
           "write_design"]
CELL_RMSD_MOLECULES = 200  # molecules per cell whose RMSD / entropy enter its diversity figures
CELL_ENVIRONMENTS = 2000


class Cell(BaseModel):
    """One training set of a design."""

    id: str
    experiment: str  # a registered experiment (`experiments.experiment_names()`)
    n_molecules: int
    conformers_per_molecule: int
    n_train: int
    replicate: int
    molecule_selection: str
    conformer_selection: str
    train: list[tuple[str, int]]
    valid: list[tuple[str, int]]
    diversity: dict[str, float | int | None]
    short: bool = False
    remainder: int = 0  # molecules holding one conformer more than C (N not a multiple of M)
    note: str = ""


class Design(BaseModel):
    """A design file: its options, the SPLITS it draws from, and its cells."""

    format: str = "mlipdiv-design"
    experiment: str
    splits_path: Path
    options: dict
    cells: list[Cell]
    grid_note: str = ""  # an automatic grid: which grid values the pool can fill

    def cell(self, cell_id: str) -> Cell:
        """The cell with this id (MlipdivError naming it if absent)."""
        for cell in self.cells:
            if cell.id == cell_id:
                return cell
        raise MlipdivError(f"design: no cell '{cell_id}' (cells: "
                           f"{', '.join(c.id for c in self.cells[:5])}...)")


def load_design(path: str | os.PathLike) -> Design:
    """Read a DESIGN file written by `write_design`."""
    path = Path(path)
    if not path.is_file():
        raise MlipdivError(f"{path}: no such design file")
    with reading(path, "design file", "rerun `mlipdiv design` (a study: rerun it with --force)"):
        return Design.model_validate_json(path.read_text())


def write_design(design: Design, path: str | os.PathLike) -> None:
    """Write the design as JSON atomically."""
    write_text_atomic(path, design.model_dump_json())


def make_design(splits_path: str | os.PathLike, options: DesignOptions) -> Design:
    """Draw every cell of the design (all replicates) from the SPLITS training pool."""
    _check_options(options)
    splits = load_splits(splits_path)
    pool = splits.pool_set.by_molecule
    if not pool:
        raise MlipdivError(f"{splits_path}: the training pool is empty")
    planner = Planner(splits, options)
    cells = [cell for replicate in range(options.replicates)
             for cell in planner.replicate_cells(replicate)]
    return Design(experiment=options.experiment, splits_path=Path(splits_path).resolve(),
                  options={**options.__dict__, "grid": list(planner.grid)}, cells=cells,
                  grid_note=planner.grid_note)


def spread(total: int, parts: int) -> np.ndarray:
    """`total` split into `parts` whole numbers differing by at most one, larger ones first."""
    counts = np.full(parts, total // parts, dtype=np.int64)
    counts[: total % parts] += 1
    return counts


def _check_options(options: DesignOptions) -> None:
    check_seed(options.seed)
    if options.experiment not in experiment_names():
        raise MlipdivError(f"design: unknown experiment '{options.experiment}' (choose from "
                           f"{', '.join(experiment_names())})")
    kind = experiment(options.experiment)
    molecule_selection(options.molecule_selection)
    conformer_selection(options.conformer_selection)
    if options.replicates < 1:
        raise FieldError("design.replicates", options.replicates, "must be at least 1")
    if not 0 <= options.validation_fraction < 1:
        raise FieldError("design.validation_fraction", options.validation_fraction,
                         "must be in [0, 1)")
    if options.grid_points < 1:
        raise FieldError("design.grid_points", options.grid_points, "must be at least 1")
    kind.check(options)
    if options.grid is not None:
        values = ",".join(map(str, options.grid))
        if not options.grid or min(options.grid) < 1:
            raise FieldError(kind.grid_field(), None, f"every {kind.axis} must be at least 1 "
                             f"(got {values})")
        if len(set(options.grid)) != len(options.grid):
            raise FieldError(kind.grid_field(), None, f"repeats a value ({values})")


class Planner:
    """Draws the molecule and conformer orders of each replicate and the cells from them
    (what an experiment may ask of it: `experiments.DesignPlanner`)."""

    def __init__(self, splits: Splits, options: DesignOptions):
        self.splits = splits
        self.options = options
        self.experiment = experiment(options.experiment)
        self.pool: ByMolecule = splits.pool_set.by_molecule
        self.keys = sorted(self.pool)
        self.available = np.array([len(self.pool[k]) for k in self.keys])
        table = splits.molecules.set_index("inchikey")
        self.scaffold = table["scaffold"].to_dict()
        self.smiles = table["smiles"].to_dict()
        self._fingerprints: dict[str, object] = {}
        self.experiment.check_sizes(self)
        self.orders = [self.molecule_order(r, self.experiment.largest_m(self)) for r in
                       range(options.replicates)]
        self.grid_note = ""
        self.grid = options.grid or self.experiment.automatic_grid(self)
        if options.grid:
            self.check_grid()

    # ------------------------------------------------------------ grid and cell sizes
    def n_valid(self, n_train: int) -> int:
        """Validation conformers of a cell with `n_train` training conformers."""
        fraction = self.options.validation_fraction
        return 0 if fraction == 0 else max(1, round(fraction * n_train))

    def capacity(self) -> np.ndarray:
        """capacity[p]: conformers every replicate's first p+1 molecules each hold at least
        (with --allow-short: the (p+1)-th largest molecule's count)."""
        if self.options.allow_short:
            return np.sort(self.available)[::-1]
        position = {k: i for i, k in enumerate(self.keys)}
        return np.min([np.minimum.accumulate(self.available[[position[k] for k in order]])
                       for order in self.orders], axis=0)

    def shortfall(self, value: int) -> str | None:
        """Why the cell at grid value `value` cannot be filled in some replicate (the
        first one), or None when every replicate can fill it; as `_fill` decides."""
        m, train, valid = self._cell_sizes(value)
        needed = train + valid
        if m > len(self.keys):
            return f"the pool has only {len(self.keys)} molecules"
        if self.options.allow_short:  # the largest molecules on the largest needs
            if (np.sort(self.available)[::-1][:m] >= np.sort(needed)[::-1]).all():
                return None
            return (f"cell {self._cell_id(m, train, 0)}: the pool's molecules hold too few "
                    "conformers to fill it, even with allow_short")
        for replicate, held in enumerate(self.held_in_order()):
            lacking = np.flatnonzero(held[:m] < needed)
            if len(lacking):
                p = lacking[0]
                return (f"cell {self._cell_id(m, train, replicate)}: molecule "
                        f"{self.orders[replicate][p]} has {held[p]} pool conformers, the cell "
                        f"needs {needed[p]} (train + validation)")
        return None

    def held_in_order(self) -> list[np.ndarray]:
        """Per replicate, the pool conformers of each molecule in its molecule order."""
        if not hasattr(self, "_held"):
            position = {k: i for i, k in enumerate(self.keys)}
            self._held = [self.available[[position[k] for k in order]] for order in self.orders]
        return self._held

    def fillable(self, values: np.ndarray) -> np.ndarray:
        """Whether the cell at each grid value can be filled in every replicate (as `_fill`
        decides): `capacity` settles most values at once (every molecule holds the most any
        position needs, or one holds fewer than the least), `shortfall` the rest."""
        capacity = self.capacity()
        sizes = np.array([self.experiment.cell_size(self.options, int(v)) for v in values],
                         dtype=np.int64).reshape(-1, 2)
        ms, n_train = sizes[:, 0], sizes[:, 1]
        n_valid = np.array([self.n_valid(int(n)) for n in n_train], dtype=np.int64)
        inside = ms <= len(capacity)
        held = np.where(inside, capacity[np.minimum(ms, len(capacity)) - 1], 0)
        result = inside & (held >= -(-n_train // ms) + -(-n_valid // ms))
        unsure = inside & ~result & (held >= n_train // ms + n_valid // ms)
        for i in np.flatnonzero(unsure):
            result[i] = self.shortfall(int(values[i])) is None
        return result

    def check_grid(self) -> None:
        """An explicit grid: every value can be filled, else one line naming the first that
        cannot and the nearest value that can."""
        for value in self.options.grid or ():
            reason = self.shortfall(value)
            if reason is not None:
                advice = "" if self.options.allow_short else "; or use allow_short"
                raise MlipdivError(f"{reason}; {self.experiment.what_fits(self, value)}"
                                   f"{advice}")

    def _cell_sizes(self, value: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(M, train per molecule, validation per molecule) for one grid value."""
        m, n_train = self.experiment.cell_size(self.options, value)
        train = spread(n_train, m)
        valid = spread(self.n_valid(n_train), m)[::-1]  # extras on molecules without them
        return m, train, valid

    # ------------------------------------------------------------ orders
    def fingerprint(self, key: str):
        if key not in self._fingerprints:
            self._fingerprints[key] = morgan_fingerprint(self.smiles[key])
        return self._fingerprints[key]

    def molecule_order(self, replicate: int, n_needed: int) -> list[str]:
        rng = np.random.default_rng([self.options.seed, replicate])
        shuffled = [self.keys[i] for i in rng.permutation(len(self.keys))]
        return molecule_selection(self.options.molecule_selection).order(
            self, shuffled, n_needed, replicate)

    def conformer_order(self, store: ConformerStore, replicate: int, key: str,
                        n_needed: int) -> np.ndarray:
        rng = np.random.default_rng([self.options.seed, replicate, zlib.crc32(key.encode())])
        return conformer_selection(self.options.conformer_selection).order(
            store, key, self.pool[key], rng, n_needed)

    # ------------------------------------------------------------ cells
    def replicate_cells(self, replicate: int) -> list[Cell]:
        sizes = {value: self._cell_sizes(value) for value in self.grid}
        order = self.orders[replicate]
        need = {}  # conformers each molecule position must provide, over all cells
        for m, train, valid in sizes.values():
            for position in range(m):
                need[position] = max(need.get(position, 0), int(train[position] + valid[position]))
        cells = []
        orders: dict[str, np.ndarray] = {}
        with ConformerStore(self.splits.store_path) as store:
            for m, train, valid in sizes.values():
                cell_id = self._cell_id(m, train, replicate)
                molecules, short, note = self._fill(order, m, train + valid, cell_id)
                for position, key in enumerate(molecules):
                    if key not in orders:
                        orders[key] = self.conformer_order(
                            store, replicate, key, max(need.get(position, 0),
                                                       int(train[position] + valid[position])))
                train_pairs = [(k, int(i)) for k, c in zip(molecules, train, strict=True)
                               for i in orders[k][:c]]
                valid_pairs = [(k, int(i)) for k, c, v in zip(molecules, train, valid, strict=True)
                               for i in orders[k][c:c + v]]
                cells.append(self._cell(cell_id, m, train, replicate, train_pairs, valid_pairs,
                                        short, note, store))
        return cells

    def _cell_id(self, m: int, train: np.ndarray, replicate: int) -> str:
        c = int(train.min())
        options = self.options
        return (f"{options.experiment}/M{m}-C{c}/r{replicate}/"
                f"{options.molecule_selection}-{options.conformer_selection}")

    def _fill(self, order: list[str], m: int, needed: np.ndarray,
              cell_id: str) -> tuple[list[str], bool, str]:
        """The cell's molecules: the first M of the order, or (with --allow-short) those of
        them holding enough conformers plus molecules further down the order, flagged short."""
        prefix = order[:m]
        lacking = [p for p, k in enumerate(prefix) if len(self.pool[k]) < needed[p]]
        if not lacking:
            return prefix, False, ""
        first = prefix[lacking[0]]
        if not self.options.allow_short:
            raise MlipdivError(
                f"cell {cell_id}: molecule {first} has {len(self.pool[first])} pool conformers, "
                f"the cell needs {int(needed[lacking[0]])} (train + validation); use "
                "allow_short or a smaller C")
        chosen, spares = list(prefix), iter(order[m:])
        while (molecules := self._match(chosen, needed)) is None:
            weakest = min(chosen, key=lambda k: len(self.pool[k]))
            better = next((k for k in spares if len(self.pool[k]) > len(self.pool[weakest])),
                          None)
            if better is None:
                raise MlipdivError(f"cell {cell_id}: the pool's molecules hold too few "
                                   "conformers to fill it, even with allow_short")
            chosen[chosen.index(weakest)] = better
        replaced = len(set(chosen) - set(prefix))
        return molecules, True, (f"short: {replaced} molecule(s) replaced by ones further down "
                                 "the order, conformer counts matched to molecule sizes")

    def _match(self, keys: list[str], needed: np.ndarray) -> list[str] | None:
        """Molecules per position, the largest on the positions needing the most conformers;
        None when even that assignment cannot fill the cell."""
        molecules = [""] * len(keys)
        by_size = sorted(keys, key=lambda k: -len(self.pool[k]))
        for position, key in zip(np.argsort(-needed, kind="stable"), by_size, strict=True):
            if len(self.pool[key]) < needed[position]:
                return None
            molecules[position] = key
        return molecules

    def _cell(self, cell_id, m, train, replicate, train_pairs, valid_pairs, short, note,
              store) -> Cell:
        remainder = int((train > train.min()).sum())
        if remainder:
            note = "; ".join(filter(None, [note, f"{remainder} molecule(s) hold C+1 conformers "
                                                  "so that M x C + remainder = N"]))
        return Cell(
            id=cell_id,
            experiment=self.options.experiment, n_molecules=m,
            conformers_per_molecule=int(train.min()), n_train=len(train_pairs),
            replicate=replicate, molecule_selection=self.options.molecule_selection,
            conformer_selection=self.options.conformer_selection,
            train=train_pairs, valid=valid_pairs,
            diversity=self.cell_diversity(train_pairs, store, replicate),
            short=short, remainder=remainder, note=note,
        )

    def cell_diversity(self, train_pairs: list[tuple[str, int]], store: ConformerStore,
                       replicate: int) -> dict:
        """The profile's figures for one cell: structure over all its molecules, RMSD and
        QUESTS entropy over up to CELL_RMSD_MOLECULES of them."""
        by_molecule: dict[str, list[int]] = {}
        for key, index in train_pairs:
            by_molecule.setdefault(key, []).append(index)
        keys = list(by_molecule)
        tanimoto = mean_tanimoto_distance([self.fingerprint(k) for k in keys],
                                          seed=self.options.seed + replicate)
        rng = np.random.default_rng([self.options.seed, replicate, len(train_pairs)])
        sampled = [keys[i] for i in np.sort(rng.choice(len(keys), min(len(keys),
                                                                      CELL_RMSD_MOLECULES),
                                                       replace=False))]
        reservoir = EnvironmentReservoir(CELL_ENVIRONMENTS, seed=self.options.seed + replicate)
        rmsds, effective = [], []
        for key in sampled:
            record = store.molecule(key, by_molecule[key])
            reservoir.add(record)
            if record.n_conformers > 1:
                geometry = ConformerGeometry(record)
                rmsds.append(geometry.mean_pairwise_rmsd(rng, RMSD_PAIR_CAP)[0])
                effective.append(geometry.effective_conformers(
                    (DUPLICATE_RMSD_ANGSTROM, DISTINCT_RMSD_ANGSTROM), rng))
            else:
                effective.append([1.0, 1.0])
        entropy, diversity = reservoir.entropy_and_diversity()
        effective_mean = np.mean(effective, axis=0) if effective else [None, None]
        return {
            "n_molecules": len(keys),
            "n_conformers": len(train_pairs),
            "n_scaffolds": len({self.scaffold[k] for k in keys} - {""}),
            "mean_tanimoto_distance": tanimoto.value,
            "tanimoto_pairs": tanimoto.n_pairs,
            "median_rmsd_angstrom": quartiles(rmsds)["median"],
            "rmsd_molecules": len(rmsds),
            # conformers per molecule after merging near-copies (0.05 A, the CF duplicate rule)
            # and after merging within 0.5 A (distinct minima, the ETKDG pruning rule)
            "effective_conformers_per_molecule": _float_or_none(effective_mean[0]),
            "distinct_geometries_per_molecule": _float_or_none(effective_mean[1]),
            "quests_entropy_nats": entropy,
            "quests_diversity_nats": diversity,
            "quests_molecules": len(sampled),
        }


def _float_or_none(value) -> float | None:
    return None if value is None else float(value)
