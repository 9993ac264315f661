"""The `Potential` interface every backend implements, and its ASE calculator.

A backend (MACE, ANI) only says how to turn conformers into its own precomputed inputs
(`prepare`), how to batch them (`collate`), and how its library's model gives energies, forces
and per-atom invariant features. Fitting, prediction, save/load and the ASE calculator are
shared here and in `training.py`.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import pickle
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.data import chemical_symbols

from mlipdiv.atomic import atomic_path
from mlipdiv.data.store import MoleculeRecord
from mlipdiv.errors import FieldError, MlipdivError, first_line
from mlipdiv.models.sizes import SIZES, RunSize

DTYPES = {"float32": torch.float32, "float64": torch.float64}
CHECKPOINT_FORMAT = 1
PREDICT_BATCH = 64


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Libraries build buffers and graphs in torch's default dtype; set it for a block."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@contextlib.contextmanager
def quiet_warnings(*messages: str) -> Iterator[None]:
    """Third-party warnings whose text starts with one of `messages` ignored for the block
    only (a backend's library import or model build), never for the caller's process."""
    with warnings.catch_warnings():
        for message in messages:
            warnings.filterwarnings("ignore", message=message)
        yield


@contextlib.contextmanager
def frozen_parameters(module: torch.nn.Module) -> Iterator[None]:
    """The module's parameters out of autograd for a block, their flags restored after (a
    fine-tuning run's frozen layers stay frozen). Forces still flow to the positions, but the
    backward pass of a prediction then computes no weight gradients (as mace_eval_configs
    does): MACE fast predicts ~20 % faster, SchNet ~13 %."""
    flags = [(parameter, parameter.requires_grad) for parameter in module.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


@dataclass
class Batch:
    """Backend inputs plus reference labels: energy (n_graphs,), forces (n_atoms_total, 3),
    atoms per graph (n_graphs,). Unlabelled conformers carry zeros."""

    inputs: Any
    energy: torch.Tensor
    forces: torch.Tensor
    n_atoms: torch.Tensor


@dataclass
class Conformer:
    """One conformer in mlipdiv units, the unit every backend prepares from."""

    numbers: np.ndarray
    positions: np.ndarray
    energy: float = 0.0
    forces: np.ndarray | None = None


def conformers(records: Sequence[MoleculeRecord]) -> list[Conformer]:
    """Flatten records into conformers (labels kept when present)."""
    out = []
    for record in records:
        for i in range(record.n_conformers):
            out.append(Conformer(
                record.atomic_numbers, record.positions[i],
                float(record.energy[i]) if record.labelled else 0.0,
                record.forces[i] if record.labelled else None,
            ))
    return out


@dataclass(frozen=True)
class Committee:
    """Members' predictions reduced in one place: axis 0 is the member; the mean is the
    prediction and the population standard deviation the committee's disagreement.
    energy (n_members, n_conf) in eV, forces (n_members, n_conf, n_atoms, 3) in eV/A."""

    energy: np.ndarray
    forces: np.ndarray

    @property
    def mean_energy(self) -> np.ndarray:
        return self.energy.mean(axis=0)

    @property
    def mean_forces(self) -> np.ndarray:
        return self.forces.mean(axis=0)

    @property
    def energy_std(self) -> np.ndarray:
        return self.energy.std(axis=0)

    @property
    def forces_std(self) -> np.ndarray:
        return self.forces.std(axis=0)

    def calculator_results(self, conformer: int = 0) -> dict:
        """What an ASE calculator reports for one conformer: mean energy and forces, and the
        spreads `energy_std` (eV) and `forces_std` (eV/A per component)."""
        energy = float(self.mean_energy[conformer])
        return {"energy": energy, "free_energy": energy,
                "forces": self.mean_forces[conformer],
                "energy_std": float(self.energy_std[conformer]),
                "forces_std": self.forces_std[conformer]}


# every concrete Potential subclass, by backend name (filled as each class is defined)
REGISTERED: dict[str, type[Potential]] = {}
DECLARED = ("backend", "library", "cutoff_key", "sizes", "e0_key")


class Potential(ABC):
    """One trained (or trainable) model of one backend.

    A backend subclass declares, as class attributes checked when the class is defined:
    `backend` (the name users give: `--model`, `models.architectures`), `library` (the
    distribution whose model it is; its version goes into run.json), `cutoff_key` (the model
    hyperparameter that is the cutoff radius, Å), `sizes` (a RunSize per name in SIZES) and
    `e0_key` (the module's state_dict entry holding the E0s, which a pretrained start
    replaces: `models.pretrained`).
    Defining it registers it (`mlipdiv.models.registry`).

    `config` holds everything needed to rebuild the module: elements, E0s (eV, in element
    order), the size's model hyperparameters, training-set statistics and the dtype.
    """

    backend: ClassVar[str]
    library: ClassVar[str]
    cutoff_key: ClassVar[str]
    sizes: ClassVar[dict[str, RunSize]]
    e0_key: ClassVar[str]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if inspect.isabstract(cls):
            return
        missing = [name for name in DECLARED if not hasattr(cls, name)]
        if missing:
            raise TypeError(f"backend {cls.__name__} must declare {', '.join(missing)}")
        if sorted(cls.sizes) != sorted(SIZES):
            raise TypeError(f"backend {cls.backend}: sizes must be exactly {', '.join(SIZES)}")
        for name, size in cls.sizes.items():
            if size.backend != cls.backend or size.name != name:
                raise TypeError(f"backend {cls.backend}: size {name} is labelled "
                                f"{size.backend}/{size.name}")
            if cls.cutoff_key not in size.model:
                raise TypeError(f"backend {cls.backend}: size {name} has no {cls.cutoff_key}")
        if REGISTERED.setdefault(cls.backend, cls) is not cls:
            raise TypeError(f"backend {cls.backend} is defined twice "
                            f"({REGISTERED[cls.backend].__name__}, {cls.__name__})")

    @classmethod
    def cutoff(cls, model: dict) -> float:
        """The cutoff radius (Å) of a size's model hyperparameters."""
        return float(model[cls.cutoff_key])

    def __init__(self, config: dict, device: str | torch.device = "cpu"):
        self.config = config
        self.elements: list[int] = [int(z) for z in config["elements"]]
        self.dtype = DTYPES[config["dtype"]]
        self.device = torch.device(device)
        with default_dtype(self.dtype):
            self.module = self.build_module().to(self.device)

    @classmethod
    def library_start(cls, module: torch.nn.Module, path: str | os.PathLike) -> tuple[dict,
                                                                                    dict]:
        """The `config` (elements, E0s, model hyperparameters, stats) and state_dict that
        rebuild a model saved by this backend's library (`torch.save(model)`), for a
        pretrained start; FieldError("init_from") when the backend reads no such file or the
        architecture is not one it builds. A backend that reads its library's files
        overrides this."""
        raise FieldError("init_from", path, f"a {cls.library} {type(module).__name__} file: a "
                         f"{cls.backend} start is a mlipdiv run or its member-K/model.pt")

    # ---- what a backend provides
    @classmethod
    @abstractmethod
    def import_library(cls) -> None:
        """Import what this backend's models need from its library, as a fresh worker's
        first model does (the study's plan times it; backends import their library inside
        functions, so that listing the backends stays cheap)."""

    @abstractmethod
    def build_module(self) -> torch.nn.Module:
        """The library's model, untrained, from `self.config`."""

    @abstractmethod
    def prepare(self, conformer: Conformer) -> Any:
        """Precomputed inputs of one conformer (graph, neighbour list...), kept on the CPU."""

    @abstractmethod
    def collate(self, items: Sequence[Any]) -> Batch:
        """A batch of prepared conformers on `self.device`."""

    @abstractmethod
    def energy_forces(self, batch: Batch, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies (n_graphs,) in eV and forces (n_atoms_total, 3) in eV/A; with
        `training` the graph is kept for a backward pass through the forces."""

    @abstractmethod
    def invariant_features(self, batch: Batch) -> torch.Tensor:
        """Per-atom invariant latent features (n_atoms_total, n_features)."""

    # ---- shared
    def prepare_all(self, items: Sequence[Conformer]) -> list[Any]:
        """Precompute every conformer once (graphs are not rebuilt per epoch)."""
        with default_dtype(self.dtype):
            return [self.prepare(c) for c in items]

    def batches(self, items: Sequence[Any], batch_size: int,
                order: Sequence[int] | None = None) -> Iterator[Batch]:
        """Batches of prepared items in `order` (default: as given)."""
        order = range(len(items)) if order is None else order
        order = list(order)
        for start in range(0, len(order), batch_size):
            yield self.collate([items[i] for i in order[start:start + batch_size]])

    def check_elements(self, numbers: np.ndarray) -> None:
        """MlipdivError naming the elements this model was not trained on."""
        unknown = sorted({int(z) for z in numbers} - set(self.elements))
        if unknown:
            names = ", ".join(chemical_symbols[z] for z in unknown)
            known = ", ".join(chemical_symbols[z] for z in self.elements)
            raise MlipdivError(
                f"element(s) {names} absent from the training set (model knows {known})"
            )

    def predict_conformers(self, items: Sequence[Conformer]) -> tuple[np.ndarray, list]:
        """Energies (n,) in eV and one (n_atoms, 3) force array (eV/A) per conformer; any
        molecules, batched together."""
        if not items:
            return np.zeros(0), []
        for numbers in {c.numbers.tobytes(): c.numbers for c in items}.values():
            self.check_elements(numbers)
        prepared = self.prepare_all(items)
        # batches of conformers of like size: a padded model (ANI) computes on padding atoms
        # too, and a batch of the input order mixes small and large molecules
        order = np.argsort([len(c.numbers) for c in items], kind="stable")
        energies, forces = [], []
        self.module.eval()
        with frozen_parameters(self.module):
            for batch in self.batches(prepared, PREDICT_BATCH, order):
                energy, force = self.energy_forces(batch, training=False)
                energies.append(energy.detach().cpu().double().numpy())
                sizes = batch.n_atoms.cpu().tolist()
                forces += np.split(force.detach().cpu().double().numpy(),
                                   np.cumsum(sizes)[:-1])
        back = np.argsort(order)  # the input order again
        return np.concatenate(energies)[back], [forces[k] for k in back]

    def predict_arrays(self, numbers: np.ndarray,
                       positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Energies (n_conf,) in eV and forces (n_conf, n_atoms, 3) in eV/A of conformers of
        one molecule given as atomic numbers and (n_conf, n_atoms, 3) positions."""
        energies, forces = self.predict_conformers([Conformer(numbers, p) for p in positions])
        return energies, np.stack(forces)

    def features_arrays(self, numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Invariant per-atom features (n_conf, n_atoms, n_features) of one molecule."""
        self.check_elements(numbers)
        items = self.prepare_all([Conformer(numbers, xyz) for xyz in positions])
        self.module.eval()
        blocks = [self.invariant_features(batch).detach().cpu().double().numpy()
                  for batch in self.batches(items, PREDICT_BATCH)]
        return np.concatenate(blocks).reshape(len(positions), len(numbers), -1)

    def calculator(self, **kwargs) -> Calculator:
        """An ASE calculator with this model alone."""
        return EnsembleCalculator([self], **kwargs)

    def save(self, path: str | os.PathLike) -> None:
        """Write config + weights atomically."""
        with atomic_path(path) as tmp:
            torch.save({"format": CHECKPOINT_FORMAT, "backend": self.backend,
                        "config": self.config, "state_dict": self.module.state_dict()}, tmp)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Potential:
        """Rebuild a saved model; MlipdivError if the file is not a compatible checkpoint."""
        payload = read_checkpoint(path)
        if payload.get("format") != CHECKPOINT_FORMAT or payload.get("backend") != cls.backend:
            raise MlipdivError(
                f"{path}: incompatible checkpoint (backend {payload.get('backend')!r}, format "
                f"{payload.get('format')!r}; expected {cls.backend!r}, {CHECKPOINT_FORMAT})"
            )
        potential = cls(payload["config"], device)
        try:
            potential.module.load_state_dict(payload["state_dict"])
        except RuntimeError as exc:
            raise MlipdivError(f"{path}: incompatible checkpoint ({first_line(exc)})"
                               ) from None
        return potential


def read_checkpoint(path: str | os.PathLike) -> dict:
    """torch.load a checkpoint onto the CPU, with a one-line error when it is unreadable.
    Only tensors and plain containers are loaded (`weights_only=True`): a pickle is code, and
    a crafted `model.pt` in a shared run directory must not run on the reader's machine."""
    try:
        # a pickle written by another tool (a crafted one) makes torch warn about its protocol
        # before refusing it: the refusal below says what matters
        with quiet_warnings("Detected pickle protocol"):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MlipdivError(f"{path}: no such checkpoint") from None
    except pickle.UnpicklingError:
        raise MlipdivError(f"{path}: refused: it holds objects other than weights (plain "
                           "tensors and containers only), so loading it could run code") from None
    except Exception as exc:  # torch raises many exception types for a corrupt file
        raise MlipdivError(f"{path}: unreadable checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict):
        raise MlipdivError(f"{path}: incompatible checkpoint (not an mlipdiv model)")
    return payload


class EnsembleCalculator(Calculator):
    """ASE calculator over one or more trained members: the mean energy and forces, and the
    committee's energy spread (`energy_std`, eV) and force spread (`forces_std`, eV/A)."""

    implemented_properties = ["energy", "free_energy", "forces", "energy_std", "forces_std"]

    def __init__(self, members: Sequence[Potential], **kwargs):
        super().__init__(**kwargs)
        self.members = list(members)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        numbers, positions = self.atoms.numbers, self.atoms.positions[None]
        results = [m.predict_arrays(numbers, positions) for m in self.members]
        committee = Committee(np.stack([e for e, _ in results]), np.stack([f for _, f in results]))
        self.results = committee.calculator_results()
