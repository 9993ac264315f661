"""What a training run is asked for: one typed spec (`TrainingSpec`) that the command line,
the study's cells and `train` share, and the device it names (`resolve_device`).

Its errors are `FieldError`s naming the spec's fields: the command line renders them as its
flags (`epochs` as `--epochs`), the study as its config keys.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from mlipdiv.declare import option
from mlipdiv.errors import FieldError, check_seed
from mlipdiv.models.base import DTYPES
from mlipdiv.models.registry import run_size
from mlipdiv.models.sizes import RunSize
from mlipdiv.models.training import Schedule

# how a pretrained start's E0s meet the new labels' (TrainingSpec.e0; models.pretrained)
E0_MODES = ("refit", "keep", "shift")


@dataclass(frozen=True)
class TrainingSpec:
    """The settings of one training run: what to train and how much, not on which data nor
    where it goes. A run directory remembers the spec it was trained with (with its
    hyperparameters, schedule and a data checksum); training it again with another is
    refused. Declared once: the `train` flags show each field's help, the study's `[models]`
    section takes its defaults from it (tests/test_options.py)."""

    model: str = option(help_text="The backend, e.g. mace or ani (an unknown name lists them all).")
    size: str = option(help_text="The backend's size (its hyperparameters and training "
                       "settings): dev, fast or standard.")
    ensemble: int = option(1, "Members of the committee, trained with seeds seed, seed+1, ...")
    seed: int = option(0, "The first member's seed (the last member's below 2**32).")
    dtype: str = option("float32", "The weights' precision: float32 or float64.")
    device: str | None = option(None, "cpu, cuda or cuda:N (default: CUDA when present).")
    epochs: int | None = option(None, "A cap on the epochs (one round each) replacing the "
                                "size's; not with steps.")
    steps: int | None = option(None, "Optimiser steps to train, validated every "
                               "steps_per_round (both or neither; default: epochs).")
    steps_per_round: int | None = option(None, "With steps: validate, checkpoint and log "
                                         "every this many steps.")
    mask_missing_forces: bool = option(False, "Train conformers that have energies but no "
                                       "forces on their energy alone (force term masked).")
    init_from: Path | None = option(None, "Start from a pretrained model of the same backend: "
                                    "a mlipdiv run directory, its member-K/model.pt, or a "
                                    "MACE .model file saved by mace-torch.")
    e0: str = option("refit", "With init_from, the E0s: refit (least squares on the new "
                     "training labels), keep (the pretrained model's) or shift (the "
                     "pretrained's plus a per-element fit of the new labels' residual).")
    finetune_lr: float | None = option(None, "With init_from, the learning rate (default: "
                                       "the size's).")
    freeze: tuple[str, ...] | None = option(None, "With init_from, parameter-name prefixes "
                                            "kept fixed, e.g. node_embedding.")
    stream: bool = option(False, "Read the training store in batches, their graphs built "
                          "by loader processes, instead of holding every graph in memory "
                          "(for a training set larger than memory; a store file only).")
    loader_workers: int | None = option(None, "With stream, the processes preparing batches "
                                        "(0: the training process itself; default: half the "
                                        "CPUs, 1 to 4).")

    def run_size(self) -> RunSize:
        """The backend's hyperparameters at `size`, with the `epochs` cap when given; a
        FieldError names a bad field (any of the spec's settings: the data are checked by
        `train`)."""
        chosen = run_size(self.model, self.size)
        if self.epochs is not None:
            if self.epochs < 1:
                raise FieldError("epochs", self.epochs, "must be at least 1")
            chosen = replace(chosen, training=replace(chosen.training, max_epochs=self.epochs))
        if self.dtype not in DTYPES:
            raise FieldError("dtype", repr(self.dtype), f"choose from {', '.join(DTYPES)}")
        if self.ensemble < 1:
            raise FieldError("ensemble", self.ensemble, "must be at least 1")
        check_seed(self.seed)
        check_seed(self.seed + self.ensemble - 1, "seed")  # the last member's
        if self.loader_workers is not None and not self.stream:
            raise FieldError("loader_workers", self.loader_workers, "only with stream")
        if self.loader_workers is not None and self.loader_workers < 0:
            raise FieldError("loader_workers", self.loader_workers, "must be 0 or more")
        if self.stream and self.init_from is not None:
            raise FieldError("stream", True, "cannot be combined with init_from (a pretrained "
                             "start reads its training set in memory)")
        return self._check_start(chosen)

    def _check_start(self, chosen: RunSize) -> RunSize:
        """`chosen` with the fine-tuning learning rate; FieldError for a start option that
        has no start or a bad value (the start itself is read by `models.pretrained`)."""
        if self.e0 not in E0_MODES:
            raise FieldError("e0", repr(self.e0), f"choose from {', '.join(E0_MODES)}")
        if self.init_from is None:
            given = [name for name, default in (("e0", "refit"), ("finetune_lr", None),
                                                ("freeze", None))
                     if getattr(self, name) != default]
            if given:
                raise FieldError(given[0], getattr(self, given[0]), "only with init_from "
                                 "(a pretrained start)")
            return chosen
        if self.finetune_lr is None:
            return chosen
        if not self.finetune_lr > 0:
            raise FieldError("finetune_lr", self.finetune_lr, "must be > 0")
        return replace(chosen, training=replace(chosen.training,
                                                learning_rate=self.finetune_lr))

    def schedule(self, chosen: RunSize, n_train: int) -> tuple[Schedule, str]:
        """The run's Schedule for `n_train` training conformers and its policy: "steps" when
        `steps` is given, else "epochs" (one round per epoch of the size's, or `epochs`)."""
        steps, per_round = self.steps, self.steps_per_round
        if steps is not None and per_round is None:
            raise FieldError("steps_per_round", None, "needed with steps (give both or neither)")
        if per_round is not None and steps is None:
            raise FieldError("steps", None, "needed with steps_per_round (give both or "
                             "neither)")
        if steps is None:
            settings = chosen.training
            return (Schedule.from_epochs(settings.max_epochs, n_train, settings.batch_size),
                    "epochs")
        if self.epochs is not None:
            raise FieldError("epochs", self.epochs, "cannot be combined with steps; give one "
                             "of them")
        for field, value in (("steps", steps), ("steps_per_round", per_round)):
            if value < 1:
                raise FieldError(field, value, "must be at least 1")
        return Schedule(steps, per_round), "steps"


def resolve_device(device: str | None) -> str:
    """CUDA when present, CPU otherwise, unless a device is named ("cpu", "cuda",
    "cuda:N"); FieldError("device") for another name or CUDA on a machine without it."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu"
                                                                         and index):
        raise FieldError("device", device, "expected cpu, cuda or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise FieldError("device", device, "CUDA is not available on this machine")
    if index and int(index) >= torch.cuda.device_count():
        raise FieldError("device", device, f"this machine has {torch.cuda.device_count()} "
                         "CUDA device(s)")
    return device
