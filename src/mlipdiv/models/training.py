"""The training loop shared by every backend.

Loss = w_E * mean((dE / n_atoms)^2) + w_F * mean(dF^2) (MACE's weighted energy-forces loss);
Adam (AMSGrad), ReduceLROnPlateau on the validation loss, early stopping that keeps the best
validation weights. A checkpoint is written after every epoch; a rerun resumes from it and,
because the batch order of each epoch comes from (seed, epoch) alone, ends where an
uninterrupted run would.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlipdiv.atomic import atomic_path
from mlipdiv.errors import MlipdivError
from mlipdiv.models.base import Batch, Potential, read_checkpoint
from mlipdiv.models.sizes import TrainingSettings

GRADIENT_CLIP = 10.0  # as mace_run_train's default


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    valid_loss: float
    valid_energy_mae_mev_per_atom: float
    valid_forces_mae_mev_per_angstrom: float
    learning_rate: float
    seconds: float


@dataclass
class FitState:
    """Everything a resumed run needs: weights, optimiser, schedule, stopping and history."""

    epochs_done: int = 0
    best_loss: float = float("inf")
    best_epoch: int = 0
    epochs_since_best: int = 0
    best_weights: dict | None = None
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def weighted_loss(energy: torch.Tensor, forces: torch.Tensor, batch: Batch,
                  settings: TrainingSettings) -> torch.Tensor:
    energy_term = (((energy - batch.energy) / batch.n_atoms) ** 2).mean()
    forces_term = ((forces - batch.forces) ** 2).mean()
    return settings.energy_weight * energy_term + settings.forces_weight * forces_term


def validate(potential: Potential, items: Sequence[Any],
             settings: TrainingSettings) -> tuple[float, float, float]:
    """Validation loss, energy MAE (meV/atom) and force MAE (meV/A)."""
    potential.module.eval()
    loss_sum = energy_abs = forces_abs = 0.0
    n_graphs = n_components = 0
    for batch in potential.batches(items, settings.valid_batch_size):
        energy, forces = potential.energy_forces(batch, training=False)
        energy, forces = energy.detach(), forces.detach()
        loss_sum += float(weighted_loss(energy, forces, batch, settings)) * len(batch.n_atoms)
        energy_abs += float(((energy - batch.energy).abs() / batch.n_atoms).sum())
        forces_abs += float((forces - batch.forces).abs().sum())
        n_graphs += len(batch.n_atoms)
        n_components += forces.numel()
    return loss_sum / n_graphs, 1000 * energy_abs / n_graphs, 1000 * forces_abs / n_components


def fit(
    potential: Potential,
    train_items: Sequence[Any],
    valid_items: Sequence[Any],
    settings: TrainingSettings,
    checkpoint: Path,
    seed: int,
    fingerprint: str,
    report: Callable[[EpochStats], None] = lambda stats: None,
) -> FitState:
    """Train `potential` in place (ending with its best validation weights), resuming from
    `checkpoint` when it holds a run with the same `fingerprint`."""
    module = potential.module
    optimizer = torch.optim.Adam(module.parameters(), lr=settings.learning_rate,
                                 weight_decay=settings.weight_decay, amsgrad=True)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=settings.lr_factor, patience=settings.lr_patience)
    state = _resume(checkpoint, fingerprint, potential, optimizer, scheduler)
    while (state.epochs_done < settings.max_epochs
           and state.epochs_since_best < settings.early_stopping_patience):
        started = time.perf_counter()
        epoch = state.epochs_done + 1
        train_loss = _train_epoch(potential, train_items, settings, optimizer, seed, epoch,
                                  checkpoint)
        valid_loss, energy_mae, forces_mae = validate(potential, valid_items, settings)
        scheduler.step(valid_loss)
        if valid_loss < state.best_loss:
            state.best_loss, state.best_epoch, state.epochs_since_best = valid_loss, epoch, 0
            state.best_weights = copy.deepcopy(module.state_dict())
        else:
            state.epochs_since_best += 1
        stats = EpochStats(epoch, train_loss, valid_loss, energy_mae, forces_mae,
                           optimizer.param_groups[0]["lr"], time.perf_counter() - started)
        state.epochs_done, state.seconds = epoch, state.seconds + stats.seconds
        state.history.append(asdict(stats))
        _save(checkpoint, fingerprint, state, module, optimizer, scheduler)
        report(stats)
    if state.best_weights is not None:
        module.load_state_dict(state.best_weights)
    return state


def _train_epoch(potential: Potential, items: Sequence[Any], settings: TrainingSettings,
                 optimizer: torch.optim.Optimizer, seed: int, epoch: int,
                 checkpoint: Path) -> float:
    potential.module.train()
    order = np.random.default_rng([seed, epoch]).permutation(len(items))
    total, n_graphs = 0.0, 0
    for batch in potential.batches(items, settings.batch_size, order):
        optimizer.zero_grad(set_to_none=True)
        energy, forces = potential.energy_forces(batch, training=True)
        loss = weighted_loss(energy, forces, batch, settings)
        if not torch.isfinite(loss):
            raise MlipdivError(
                f"{checkpoint.parent}: training loss became {loss.item()} in epoch {epoch}; "
                f"stopped, last good checkpoint (epoch {epoch - 1}) kept in {checkpoint.name} "
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
            f"choose another --out or delete it"
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
