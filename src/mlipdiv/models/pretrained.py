"""A pretrained start (`TrainingSpec.init_from`): read a pretrained model of the run's
backend, reconcile its E0s with the new labels, and put its weights into every member before
training (`train_run.train`).

A start is one of
  - a complete mlipdiv run directory of the same backend: member k of the new run starts
    from member k mod K of the K members it has;
  - a mlipdiv model file (`RUN/member-K/model.pt`): every member starts from it;
  - a model file of the backend's library saved whole by it (`torch.save(model)`): a
    mace-torch ScaleShiftMACE such as MACE-OFF (`MacePotential.library_start`). Such a file
    is a pickle, so loading it can run code: it is read only because the user named it as
    the start (mlipdiv's own files are read as weights only).
The architecture (model hyperparameters), elements and training statistics (force scale,
average number of neighbours) are the start's; the size gives only the training settings
(batch size, schedule; the learning rate unless `finetune_lr`). The training data may hold
only elements the start knows; the model keeps every element of the start.

E0s (eV per atom of element z; `e0`), for every element z of the start:
  refit  E0_z = the least-squares fit on the new training labels, as a run from scratch
         fits them (`models.e0.fit_e0`); elements absent from the training data keep the
         start's. The interaction energies the start learned on top of its own E0s are
         kept, so this suits labels of the same method.
  keep   E0_z = the start's.
  shift  E0_z = the start's + d_z, where d is the least-squares per-element fit (as fit_e0,
         regularised alike) of the residual E - E_start(x) of the new training labels E
         against the start's own predictions (committee mean): the labels' change of
         reference energy (another code or level of theory) goes into d, the interaction
         energies are kept. Labels equal to the start's predictions plus c_z per atom of
         element z give d = c exactly.
The run record keeps the start's checksum with `e0`, `finetune_lr` and `freeze` in its spec,
so a run directory is resumed only from the same start.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase.data import chemical_symbols

from mlipdiv.data.store import MoleculeRecord
from mlipdiv.errors import FieldError, first_line
from mlipdiv.models.base import Conformer, Potential, quiet_warnings
from mlipdiv.models.e0 import E0Fit, fit_e0
from mlipdiv.models.record import RUN_FILE, RunRecord
from mlipdiv.models.registry import potential_class

# the distribution a library model file's class comes from, by its top-level module
LIBRARIES = {"mace": "mace-torch", "graph_pes": "graph-pes", "torchani": "torchani"}
MODEL_FILE = "model.pt"


@dataclass(frozen=True)
class Start:
    """A pretrained model read for a start: its config (elements, E0s, model, stats; no
    dtype) and one state_dict per member, with the checksum of what was read."""

    path: Path
    backend: str
    config: dict
    states: list[dict]
    checksum: str

    def record(self, e0: str, finetune_lr: float | None, freeze: Sequence[str] | None) -> dict:
        """What the run's spec keeps of the start (a resumed run must have the same)."""
        return {"checksum": self.checksum, "e0": e0, "finetune_lr": finetune_lr,
                "freeze": list(freeze or ())}

    def potential(self, dtype: str, device: str | torch.device = "cpu",
                  e0: dict[int, float] | None = None, member: int = 0) -> Potential:
        """A potential of the start's member `member` (mod its members) in `dtype`, with the
        E0s `e0` (eV by atomic number; default: the start's) in place of its own."""
        elements = self.config["elements"]
        config = {**self.config, "dtype": dtype,
                  "e0": list(self.config["e0"]) if e0 is None else [e0[z] for z in elements]}
        potential = potential_class(self.backend)(config, device)
        state = dict(self.states[member % len(self.states)])
        state[potential.e0_key] = potential.module.state_dict()[potential.e0_key]
        try:
            potential.module.load_state_dict(state)
        except RuntimeError as exc:
            raise FieldError("init_from", self.path, "an architecture mlipdiv cannot rebuild "
                             f"({first_line(exc)})") from None
        return potential

    def check_elements(self, records: Sequence[MoleculeRecord]) -> None:
        """FieldError("init_from") when the data hold an element the start lacks."""
        missing = sorted({int(z) for r in records for z in r.atomic_numbers}
                         - set(self.config["elements"]))
        if missing:
            raise FieldError("init_from", self.path, "knows no "
                             + ", ".join(chemical_symbols[z] for z in missing)
                             + " of the training or validation data (it knows "
                             + ", ".join(chemical_symbols[z] for z in self.config["elements"])
                             + "); a start cannot learn a new element")

    def e0(self, mode: str, records: Sequence[MoleculeRecord], dtype: str,
           device: str | torch.device = "cpu") -> E0Fit:
        """The run's E0s for every element of the start, by `mode` (module docstring)."""
        old = dict(zip(self.config["elements"], map(float, self.config["e0"]), strict=True))
        if mode == "keep":
            return E0Fit(old, False, "kept the pretrained model's")
        if mode == "refit":
            fit = fit_e0(records)
            return E0Fit({**old, **fit.energies}, fit.regularised,
                         f"refit on the new labels: {fit.note}")
        items = [Conformer(r.atomic_numbers, xyz) for r in records for xyz in r.positions]
        predicted = np.mean([self.potential(dtype, device, member=k).predict_conformers(items)[0]
                             for k in range(len(self.states))], axis=0)
        labels = np.concatenate([r.energy for r in records])
        fit = fit_e0(records, labels - predicted)
        shifted = {z: e + fit.energies.get(z, 0.0) for z, e in old.items()}
        return E0Fit(shifted, fit.regularised, "pretrained plus a per-element shift of the "
                     f"residual to the new labels: {fit.note}")


def load_start(path: str | os.PathLike, backend: str, dtype: str = "float32",
               freeze: Sequence[str] | None = None) -> Start:
    """The start at `path` for a run of `backend` (module docstring), checked by building
    it (architecture) and its `freeze` prefixes; FieldError("init_from") for a missing or
    unreadable path, another backend's model or an architecture mlipdiv does not build."""
    path = Path(path)
    cls = potential_class(backend)
    if path.is_dir():
        if not (path / RUN_FILE).exists():
            raise FieldError("init_from", path, f"a directory without {RUN_FILE}: not a "
                             "mlipdiv run")
        record = RunRecord.read(path)
        if not record.complete:
            raise FieldError("init_from", path, "a run whose training has not finished")
        if record.model != backend:
            raise FieldError("init_from", path, f"a {record.model} run; this run trains "
                             f"{backend}")
        files = [path / f"member-{k}" / MODEL_FILE for k in range(record.ensemble)]
    elif path.is_file():
        files = [path]
    else:
        raise FieldError("init_from", path, "no such run directory or model file")
    read = [_read_model(file, cls) for file in files]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    start = Start(path, backend, read[0][0], [state for _, state in read], digest.hexdigest())
    freeze_parameters(start.potential(dtype).module, freeze)  # checks both, before training
    return start


def freeze_parameters(module: torch.nn.Module, prefixes: Sequence[str] | None) -> None:
    """Parameters whose name starts with one of `prefixes` kept fixed (no gradient, so the
    optimiser leaves them); FieldError("freeze") for a prefix that names none."""
    names = [name for name, _ in module.named_parameters()]
    for prefix in prefixes or ():
        if not any(name.startswith(prefix) for name in names):
            shown = sorted({".".join(name.split(".")[:2]) for name in names})
            raise FieldError("freeze", prefix, "matches no parameter (the model's begin "
                             f"{', '.join(shown)})")
    for name, parameter in module.named_parameters():
        if any(name.startswith(prefix) for prefix in prefixes or ()):
            parameter.requires_grad_(False)


def _read_model(path: Path, cls: type[Potential]) -> tuple[dict, dict]:
    """(config without dtype, state_dict) of a mlipdiv model file or a library's."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # not weights only: a library's whole-model pickle
        payload = _library_model(path)
    except Exception as exc:  # torch raises many exception types for a corrupt file
        raise FieldError("init_from", path, f"unreadable model file ({type(exc).__name__})"
                         ) from None
    if isinstance(payload, torch.nn.Module):
        root = type(payload).__module__.split(".")[0]
        library = LIBRARIES.get(root, root)
        if library != cls.library:
            raise FieldError("init_from", path, f"a {library} model ({type(payload).__name__})"
                             f"; this run trains {cls.backend} ({cls.library})")
        return cls.library_start(payload, path)
    if not isinstance(payload, dict) or not {"backend", "config", "state_dict"} <= set(payload):
        raise FieldError("init_from", path, "not a model file (a mlipdiv run's model.pt or a "
                         "model saved by its library)")
    if payload["backend"] != cls.backend:
        raise FieldError("init_from", path, f"a mlipdiv {payload['backend']} model; this run "
                         f"trains {cls.backend}")
    config = {key: value for key, value in payload["config"].items() if key != "dtype"}
    return config, payload["state_dict"]


def _library_model(path: Path) -> object:
    try:
        with quiet_warnings("Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY",
                            "The TorchScript type system", "`torch.jit.script` is deprecated",
                            "`torch.jit.load` is deprecated"):  # e3nn's compiled modules
            return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise FieldError("init_from", path, "unreadable model file "
                         f"({first_line(exc, with_type=True)})") from None
