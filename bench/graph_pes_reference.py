"""graph-pes's own side of `training_throughput.py`: its trainer and its inference, as a command.

`train`: graph-pes's Python training entry point (`graph_pes.training.tasks.
train_with_lightning`, what `graph-pes-train` calls) with a PyTorch Lightning trainer built as
`graph-pes-train` builds it (best-weights and last checkpoints, gradient clipping), data read
by graph-pes's `file_dataset` from extxyz (neighbour lists cached once), graph-pes's MSE
per-atom energy + MSE force losses with mlipdiv's weights, AMSGrad Adam (`Optimizer`) and
ReduceLROnPlateau (`LRScheduler`) with the size's settings. Left out of `graph-pes-train`:
the CSV/W&B loggers, the per-improvement TorchScript (LAMMPS) deployment and the final test
pass, none of which mlipdiv's loop does. Data loading in the main process (`num_workers=0`,
graph-pes's default is 1 worker), so both sides run on the same threads.
The model is the one mlipdiv trains: graph-pes's `AdditionModel(FixedOffset(E0s), model)`
built from the same config (`pre_fit_model` off: offsets and scales come from the config).

`predict`: graph-pes's ASE calculator's batched `calculate_all` on every frame of an extxyz,
written back as extxyz (as `mace_eval_configs` does). No network: nothing is downloaded and
no W&B run is made.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402
from model_bench_data import reference_command  # noqa: E402

from mlipdiv.models import potential_class, run_size  # noqa: E402
from mlipdiv.models.base import PREDICT_BATCH  # noqa: E402

PROPERTY_MAP = {"REF_energy": "energy", "REF_forces": "forces"}  # to_mace_xyz's keys


def build(config_path: Path) -> tuple[str, torch.nn.Module]:
    """(backend, graph-pes module) of a config written by `training_throughput.py`."""
    spec = json.loads(config_path.read_text())
    return spec["backend"], potential_class(spec["backend"])(spec["config"]).module


def train(args: argparse.Namespace) -> None:
    import pytorch_lightning as pl
    from graph_pes.config.training import FittingOptions
    from graph_pes.data import file_dataset
    from graph_pes.data.datasets import DatasetCollection
    from graph_pes.training.loss import PerAtomEnergyLoss, PropertyLoss, TotalLoss
    from graph_pes.training.opt import LRScheduler, Optimizer
    from graph_pes.training.tasks import train_with_lightning
    from graph_pes.training.utils import VALIDATION_LOSS_KEY
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    torch.manual_seed(args.seed)  # as mlipdiv's member 0
    backend, model = build(args.config)
    settings = run_size(backend, "fast").training
    cutoff = float(model.cutoff)
    data = DatasetCollection(*(
        file_dataset(path, cutoff, shuffle=False, pre_transform=True,
                     property_map=PROPERTY_MAP) for path in (args.train, args.valid)))
    loss = TotalLoss([PerAtomEnergyLoss("MSE", weight=settings.energy_weight),
                      PropertyLoss("forces", "MSE", weight=settings.forces_weight)])
    fitting = FittingOptions(
        pre_fit_model=False, max_n_pre_fit=5000, early_stopping=None,
        loader_kwargs={"batch_size": settings.batch_size, "num_workers": 0},
        early_stopping_patience=None, auto_fit_reference_energies=False, keep="best")
    checkpoints = args.out / "checkpoints"
    trainer = pl.Trainer(
        max_epochs=args.epochs, accelerator="cpu", devices=1, inference_mode=False,
        gradient_clip_val=10.0, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=args.out,
        callbacks=[
            EarlyStopping(VALIDATION_LOSS_KEY, patience=settings.early_stopping_patience),
            ModelCheckpoint(dirpath=checkpoints, monitor=VALIDATION_LOSS_KEY, filename="best",
                            mode="min", save_top_k=1, save_weights_only=True),
            ModelCheckpoint(dirpath=checkpoints, filename="last", save_weights_only=False),
        ])
    model = train_with_lightning(
        trainer, model, data, loss=loss, fit_config=fitting,
        optimizer=Optimizer("Adam", lr=settings.learning_rate,
                            weight_decay=settings.weight_decay, amsgrad=True),
        scheduler=LRScheduler("ReduceLROnPlateau", factor=settings.lr_factor,
                              patience=settings.lr_patience))
    torch.save(model.state_dict(), args.out / "model.pt")
    (args.out / "threads.json").write_text(json.dumps(
        {"torch_threads": torch.get_num_threads(), "epochs": trainer.current_epoch}))


def predict(args: argparse.Namespace) -> None:
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import read, write
    from graph_pes.utils.calculator import GraphPESCalculator

    _, model = build(args.config)
    model.load_state_dict(torch.load(args.model, weights_only=True))
    frames = read(args.configs, index=":")
    results = GraphPESCalculator(model, skin=0.0).calculate_all(
        frames, ["energy", "forces"], batch_size=PREDICT_BATCH)
    for atoms, result in zip(frames, results, strict=True):
        atoms.calc = SinglePointCalculator(atoms, energy=float(result["energy"]),
                                           forces=result["forces"])
    write(args.output, frames, format="extxyz")


def main() -> None:
    reference_command(__doc__.splitlines()[0], train, predict)


if __name__ == "__main__":
    main()
