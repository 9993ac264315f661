"""TorchANI's own side of `training_throughput.py` for the `ani` backend, as a command.

TorchANI ships no training command; its documented way to train (the training examples of
its docs) is a plain PyTorch loop over its own data pipeline, which this follows:
`train`: frames of an extxyz go into a TorchANI `ANIDataset` (HDF5, grouped by number of
atoms), batched in RAM by TorchANI's `batch_all_in_ram` (padded species/coordinates), served
by a `DataLoader` that shuffles the batches every epoch; element indices by TorchANI's
`SpeciesConverter`, forces by `torchani.grad.forces` (graph kept for the force loss). Loss,
optimiser and schedule are mlipdiv's, so both sides do the same work: weighted per-atom energy
+ force MSE, AMSGrad Adam, gradient clipping at 10, ReduceLROnPlateau on a validation pass
(energies and forces) after every epoch, best weights kept and saved.
`predict`: every frame of an extxyz, padded `PREDICT_BATCH` at a time by TorchANI's
`pad_atomic_properties`, the model called on the batch and forces by `torchani.grad.forces`,
written back as extxyz (as `mace_eval_configs` does).
The model is the one mlipdiv trains (`AniModule`: TorchANI's `AEVComputer` and `ANINetworks`)
built from the same config.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase.data import chemical_symbols  # noqa: E402
from model_bench_data import reference_command  # noqa: E402

from mlipdiv.models import potential_class, run_size  # noqa: E402
from mlipdiv.models.base import PREDICT_BATCH  # noqa: E402

GRADIENT_CLIP = 10.0  # mlipdiv's (and mace_run_train's)


def build(config_path: Path) -> tuple[torch.nn.Module, dict]:
    """The AniModule and config of a config file written by `training_throughput.py`."""
    config = json.loads(config_path.read_text())["config"]
    return potential_class("ani")(config).module, config


def read_xyz(path: Path) -> list:
    from ase.io import read

    return read(path, index=":")


def ani_dataset(frames: list, path: Path):
    """A TorchANI ANIDataset of the frames (eV, Å as given), grouped by number of atoms."""
    from torchani.datasets import ANIDataset

    groups: dict[int, list] = {}
    for atoms in frames:
        groups.setdefault(len(atoms), []).append(atoms)
    dataset = ANIDataset(path, grouping="by_num_atoms")
    for n_atoms, members in sorted(groups.items()):
        dataset.append_conformers(f"{n_atoms:03d}", {
            "species": np.stack([a.numbers for a in members]),
            "coordinates": np.stack([a.positions for a in members]),
            "energies": np.array([a.info["REF_energy"] for a in members]),
            "forces": np.stack([a.arrays["REF_forces"] for a in members])})
    return dataset


def batched(frames: list, path: Path, batch_size: int, seed: int):
    from torchani.datasets import batch_all_in_ram

    return batch_all_in_ram(ani_dataset(frames, path), batch_size, batch_seed=seed,
                            divs_seed=seed, verbose=False)


def losses(module, converter, batch: dict, settings, training: bool) -> torch.Tensor:
    """mlipdiv's weighted loss on a TorchANI batch (padding atoms have species -1)."""
    import torchani

    dtype = next(module.parameters()).dtype
    species = converter(batch["species"])
    coords = batch["coordinates"].to(dtype).requires_grad_(True)
    real = species >= 0
    with torch.enable_grad():
        energy = module(species, coords)
        forces = torchani.grad.forces(energy, coords, create_graph=training)
    n_atoms = real.sum(dim=1)
    energy_term = (((energy - batch["energies"].to(dtype)) / n_atoms) ** 2).mean()
    forces_term = ((forces - batch["forces"].to(dtype))[real] ** 2).mean()
    return settings.energy_weight * energy_term + settings.forces_weight * forces_term


def train(args: argparse.Namespace) -> None:
    from torchani.nn import SpeciesConverter

    torch.manual_seed(args.seed)  # as mlipdiv's member 0
    module, config = build(args.config)
    settings = run_size("ani", "fast").training
    converter = SpeciesConverter([chemical_symbols[z] for z in config["elements"]])
    with tempfile.TemporaryDirectory() as tmp:
        train_set = batched(read_xyz(args.train), Path(tmp) / "train.h5",
                            settings.batch_size, args.seed)
        valid_set = batched(read_xyz(args.valid), Path(tmp) / "valid.h5",
                            settings.valid_batch_size, args.seed)
    loader = torch.utils.data.DataLoader(train_set, batch_size=None, shuffle=True)
    optimizer = torch.optim.Adam(module.parameters(), lr=settings.learning_rate,
                                 weight_decay=settings.weight_decay, amsgrad=True)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=settings.lr_factor, patience=settings.lr_patience)
    best, best_state = float("inf"), None
    for _ in range(args.epochs):
        module.train()
        for batch in loader:
            optimizer.zero_grad(set_to_none=True)
            losses(module, converter, batch, settings, training=True).backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), GRADIENT_CLIP)
            optimizer.step()
        module.eval()
        valid = float(np.mean([float(losses(module, converter, batch, settings, False))
                               for batch in valid_set]))
        scheduler.step(valid)
        if valid < best:
            best, best_state = valid, copy.deepcopy(module.state_dict())
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(best_state, args.out / "model.pt")


def predict(args: argparse.Namespace) -> None:
    import torchani
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write
    from torchani.nn import SpeciesConverter
    from torchani.utils import pad_atomic_properties

    module, config = build(args.config)
    module.load_state_dict(torch.load(args.model, weights_only=True))
    module.eval()
    dtype = next(module.parameters()).dtype
    converter = SpeciesConverter([chemical_symbols[z] for z in config["elements"]])
    frames = read_xyz(args.configs)
    for start in range(0, len(frames), PREDICT_BATCH):
        chunk = frames[start:start + PREDICT_BATCH]
        batch = pad_atomic_properties([  # one conformer each: a leading axis of 1
            {"species": torch.tensor(a.numbers)[None],
             "coordinates": torch.tensor(a.positions, dtype=dtype)[None]} for a in chunk])
        coords = batch["coordinates"].requires_grad_(True)
        energy = module(converter(batch["species"]), coords)
        forces = torchani.grad.forces(energy, coords).detach().numpy()
        for k, atoms in enumerate(chunk):
            atoms.calc = SinglePointCalculator(atoms, energy=float(energy[k]),
                                               forces=forces[k, :len(atoms)])
    write(args.output, frames, format="extxyz")


def main() -> None:
    reference_command(__doc__.splitlines()[0], train, predict)


if __name__ == "__main__":
    main()
