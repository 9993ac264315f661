"""The training loop shared by every backend.

Loss = w_E * mean((dE / n_atoms)^2) + w_F * mean(dF^2) (MACE's weighted energy-forces loss);
Adam (AMSGrad), ReduceLROnPlateau on the validation loss, early stopping that keeps the best
validation weights. Compute is counted in optimiser steps (a `Schedule`): training draws
batches from a deterministic stream (pass p over the data in the order of (seed, p)), and
every `steps_per_round` steps a round ends with validation, the learning-rate scheduler
step, the early-stopping check, a checkpoint and a history entry. Because the stream
position follows from the number of steps done alone, a rerun resumes from the checkpoint
and ends where an uninterrupted run would. `Schedule.from_epochs` makes one round one epoch.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from mlipdiv.atomic import atomic_path
from mlipdiv.errors import MlipdivError
from mlipdiv.models.base import Batch, Potential, frozen_parameters, read_checkpoint
from mlipdiv.models.sizes import TrainingSettings

GRADIENT_CLIP = 10.0  # as mace_run_train's default
# a step-budget run whose best validation loss came in this final fraction of its steps
# was still improving when it stopped: not converged
UNCONVERGED_TAIL = 0.1


@dataclass(frozen=True)
class Schedule:
    """How much to train: `max_steps` optimiser steps, validated (and checkpointed) every
    `steps_per_round` steps; the last round is cut short to end at `max_steps`."""

    max_steps: int
    steps_per_round: int

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.steps_per_round < 1:
            raise MlipdivError(f"schedule of {self.max_steps} steps, {self.steps_per_round} "
                               f"per round: both must be at least 1")

    @classmethod
    def from_epochs(cls, max_epochs: int, n_train_items: int, batch_size: int) -> Schedule:
        """One round per epoch (ceil(n / batch) steps), `max_epochs` rounds."""
        per_epoch = math.ceil(n_train_items / batch_size)
        return cls(max_steps=max_epochs * per_epoch, steps_per_round=per_epoch)

    @property
    def max_rounds(self) -> int:
        """Rounds of a run that is not stopped early."""
        return math.ceil(self.max_steps / self.steps_per_round)

    def as_dict(self) -> dict:
        return {"max_steps": self.max_steps, "steps_per_round": self.steps_per_round}


@dataclass
class EpochStats:
    """One round's figures: `epoch` is the round number (an epoch under
    `Schedule.from_epochs`), `step` the optimiser steps done at its end."""

    epoch: int
    step: int
    train_loss: float
    valid_loss: float
    valid_energy_mae_mev_per_atom: float
    valid_forces_mae_mev_per_angstrom: float
    learning_rate: float
    seconds: float


@dataclass
class FitState:
    """Everything a resumed run needs: weights, optimiser, schedule, stopping and history.
    `epochs_done`, `best_epoch` and `epochs_since_best` count rounds."""

    epochs_done: int = 0
    steps_done: int = 0
    best_loss: float = float("inf")
    best_epoch: int = 0
    best_step: int = 0
    epochs_since_best: int = 0
    best_weights: dict | None = None
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    stopped_by: str = ""  # "early-stopping" or "step-budget", set when the run ends
    converged: bool = False


def weighted_loss(energy: torch.Tensor, forces: torch.Tensor, batch: Batch,
                  settings: TrainingSettings) -> torch.Tensor:
    """The weighted energy-forces loss; reference forces that are NaN (energy-only
    conformers, `mask_missing_forces`) are masked out of the force term."""
    energy_term = (((energy - batch.energy) / batch.n_atoms) ** 2).mean()
    # one expression for both cases: no `if known.all()`, which would stall a CUDA stream on
    # every batch (with every force known it is the plain mean)
    known = torch.isfinite(batch.forces)
    diff = torch.where(known, forces - torch.nan_to_num(batch.forces), 0.0)
    forces_term = (diff ** 2).sum() / known.sum().clamp(min=1)
    return settings.energy_weight * energy_term + settings.forces_weight * forces_term


def validate(potential: Potential, items: Sequence[Any],
             settings: TrainingSettings) -> tuple[float, float, float]:
    """Validation loss, energy MAE (meV/atom) and force MAE (meV/A)."""
    potential.module.eval()
    loss_sum = energy_abs = forces_abs = 0.0
    n_graphs = n_components = 0
    for batch in potential.batches(items, settings.valid_batch_size):
        with frozen_parameters(potential.module):  # no weight gradients in validation
            energy, forces = potential.energy_forces(batch, training=False)
        energy, forces = energy.detach(), forces.detach()
        loss_sum += float(weighted_loss(energy, forces, batch, settings)) * len(batch.n_atoms)
        energy_abs += float(((energy - batch.energy).abs() / batch.n_atoms).sum())
        known = torch.isfinite(batch.forces)  # NaN: energy-only conformer, masked
        forces_abs += float(torch.where(known, forces - torch.nan_to_num(batch.forces),
                                        0.0).abs().sum())
        n_graphs += len(batch.n_atoms)
        n_components += int(known.sum())
    return (loss_sum / n_graphs, 1000 * energy_abs / n_graphs,
            1000 * forces_abs / n_components if n_components else float("nan"))


def fit(
    potential: Potential,
    train_items: Sequence[Any] | StreamedItems,
    valid_items: Sequence[Any],
    settings: TrainingSettings,
    schedule: Schedule,
    checkpoint: Path,
    seed: int,
    fingerprint: str,
    report: Callable[[EpochStats], None] = lambda stats: None,
) -> FitState:
    """Train `potential` in place for `schedule`'s steps (fewer if early stopping ends it;
    `settings.max_epochs` is not read), ending with its best validation weights; resumes
    from `checkpoint` when it holds a run with the same `fingerprint`."""
    module = potential.module
    optimizer = torch.optim.Adam(module.parameters(), lr=settings.learning_rate,
                                 weight_decay=settings.weight_decay, amsgrad=True)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=settings.lr_factor, patience=settings.lr_patience)
    state = _resume(checkpoint, fingerprint, potential, optimizer, scheduler)
    # one stream for the whole call; a resumed call re-enters it from steps_done alone
    stream = batch_stream(potential, train_items, settings.batch_size, seed, state.steps_done)
    try:
        _fit_rounds(potential, stream, valid_items, settings, schedule, checkpoint,
                    fingerprint, report, state, optimizer, scheduler)
    finally:
        close = getattr(stream, "close", None)
        if close is not None:  # a streamed set's loader workers end here
            close()
    early = state.epochs_since_best >= settings.early_stopping_patience
    state.stopped_by = "early-stopping" if early else "step-budget"
    state.converged = is_converged(state.stopped_by, state.best_step, state.steps_done)
    if state.best_weights is not None:
        module.load_state_dict(state.best_weights)
    return state


def _fit_rounds(potential: Potential, stream: Iterator[Batch], valid_items: Sequence[Any],
                settings: TrainingSettings, schedule: Schedule, checkpoint: Path,
                fingerprint: str, report: Callable[[EpochStats], None], state: FitState,
                optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """The rounds of `fit` until the step budget or early stopping ends them."""
    module = potential.module
    while (state.steps_done < schedule.max_steps
           and state.epochs_since_best < settings.early_stopping_patience):
        started = time.perf_counter()
        n_steps = min(schedule.steps_per_round, schedule.max_steps - state.steps_done)
        train_loss = _train_round(potential, islice(stream, n_steps), settings, optimizer,
                                  state, checkpoint)
        state.epochs_done, state.steps_done = state.epochs_done + 1, state.steps_done + n_steps
        valid_loss, energy_mae, forces_mae = validate(potential, valid_items, settings)
        scheduler.step(valid_loss)
        if valid_loss < state.best_loss:
            state.best_loss, state.epochs_since_best = valid_loss, 0
            state.best_epoch, state.best_step = state.epochs_done, state.steps_done
            state.best_weights = copy.deepcopy(module.state_dict())
        else:
            state.epochs_since_best += 1
        stats = EpochStats(state.epochs_done, state.steps_done, train_loss, valid_loss,
                           energy_mae, forces_mae, optimizer.param_groups[0]["lr"],
                           time.perf_counter() - started)
        state.seconds += stats.seconds
        state.history.append(asdict(stats))
        _save(checkpoint, fingerprint, state, module, optimizer, scheduler)
        report(stats)


def is_converged(stopped_by: str, best_step: int, steps_done: int) -> bool:
    """False when the step budget ended the run while the validation loss was still
    falling, i.e. its best came within the last UNCONVERGED_TAIL (10 %) of the steps done;
    True otherwise (early stopping, or a best well before the end)."""
    still_falling = best_step > (1 - UNCONVERGED_TAIL) * steps_done
    return not (stopped_by == "step-budget" and still_falling)


@runtime_checkable
class StreamedItems(Protocol):
    """Training items that are not held in memory: they build each batch themselves, from
    the index arrays of `batch_orders` (`models.streaming.StoreTrainingSet`)."""

    def __len__(self) -> int: ...

    def stream(self, potential: Potential, orders: Iterator[np.ndarray]) -> Iterator[Batch]:
        """The batches of `orders` (one array of item indices each), in that order."""
        ...


def batch_orders(n_items: int, batch_size: int, seed: int,
                 steps_done: int) -> Iterator[np.ndarray]:
    """The endless sequence of training batches as item indices, from batch `steps_done`
    on: pass p (1, 2, ...) is the items in the order default_rng([seed, p]).permutation,
    cut into batches (the last of a pass may be short)."""
    per_pass = math.ceil(n_items / batch_size)
    pass_number, offset = steps_done // per_pass + 1, steps_done % per_pass
    while True:
        order = np.random.default_rng([seed, pass_number]).permutation(n_items)
        for start in range(offset * batch_size, n_items, batch_size):
            yield order[start:start + batch_size]
        pass_number, offset = pass_number + 1, 0


def batch_stream(potential: Potential, items: Sequence[Any] | StreamedItems, batch_size: int,
                 seed: int, steps_done: int) -> Iterator[Batch]:
    """The endless training batch stream, from batch `steps_done` on, in the order of
    `batch_orders`: of prepared `items` held in memory, or built by `StreamedItems`."""
    orders = batch_orders(len(items), batch_size, seed, steps_done)
    if isinstance(items, StreamedItems):
        return items.stream(potential, orders)
    return (batch for order in orders  # one batch per order
            for batch in potential.batches(items, batch_size, order))


def _train_round(potential: Potential, batches: Iterable[Batch], settings: TrainingSettings,
                 optimizer: torch.optim.Optimizer, state: FitState, checkpoint: Path) -> float:
    """One optimiser step per batch of the round (`state` is the one before it); mean
    training loss per graph."""
    potential.module.train()
    total, n_graphs = 0.0, 0
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        energy, forces = potential.energy_forces(batch, training=True)
        loss = weighted_loss(energy, forces, batch, settings)
        if not torch.isfinite(loss):
            raise MlipdivError(
                f"{checkpoint.parent}: training loss became {loss.item()} in round "
                f"{state.epochs_done + 1}; stopped, last good checkpoint (round "
                f"{state.epochs_done}, step {state.steps_done}) kept in {checkpoint.name} "
                f"-- lower the learning rate or check the training labels"
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(potential.module.parameters(), GRADIENT_CLIP)
        optimizer.step()
        total += float(loss.detach()) * len(batch.n_atoms)
        n_graphs += len(batch.n_atoms)
    return total / n_graphs


def _resume(checkpoint: Path, fingerprint: str, potential: Potential,
            optimizer: torch.optim.Optimizer, scheduler: Any) -> FitState:
    if not checkpoint.exists():
        return FitState()
    payload = read_checkpoint(checkpoint)
    if payload.get("fingerprint") != fingerprint:
        raise MlipdivError(
            f"{checkpoint}: incompatible checkpoint (made for other data or settings); "
            f"train into another directory or delete it"
        )
    potential.module.load_state_dict(payload["module"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    return FitState(**payload["state"])


def _save(checkpoint: Path, fingerprint: str, state: FitState, module: torch.nn.Module,
          optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    with atomic_path(checkpoint) as tmp:
        torch.save({"fingerprint": fingerprint, "module": module.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "state": asdict(state)}, tmp)
