"""The run record (`RUN/run.json`): what a run is (its spec), how it trained and on what. It is
written and read only here, as one pydantic model; readers (metrics, domain, study) use its
fields, never the file's keys.

The file format is the one written so far: `meta` in the file is `source` here (where the
training data came from: a design cell or two files, plus what a caller adds).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mlipdiv.atomic import write_json_atomic
from mlipdiv.errors import MlipdivError
from mlipdiv.files import read_json, reading

RUN_FILE = "run.json"
RUN_REMEDY = "train it again (a study: rerun it; the damaged cell is redone with --force)"
TRAINING, COMPLETE = "training", "complete"


class DataSource(BaseModel):
    """Where a run's training data came from: a design cell (`design`, `cell`) or two files
    (`train`, `valid`, with conformers their import skipped); callers may add keys."""

    model_config = ConfigDict(extra="allow")

    design: str | None = None
    cell: str | None = None
    train: str | None = None
    valid: str | None = None
    skipped_train: dict[str, int] = Field(default_factory=dict)
    skipped_valid: dict[str, int] = Field(default_factory=dict)


class MemberRecord(BaseModel):
    """How one ensemble member trained; `epochs` / `best_epoch` count rounds."""

    member: int
    seed: int
    steps: int
    best_step: int
    rounds: int
    epochs: int
    best_epoch: int
    stopped_by: str
    converged: bool
    best_valid_loss: float
    training_seconds: float
    history: list[dict]


class RunRecord(BaseModel):
    """run.json. While training only `status` and `spec` are set; a complete run has all."""

    model_config = ConfigDict(populate_by_name=True)

    status: Literal["training", "complete"]
    spec: dict  # model, size, ensemble, seed, dtype, hyperparameters, schedule, data checksum
    model: str | None = None
    size: str | None = None
    hyperparameters: dict | None = None
    schedule: dict | None = None  # Schedule.as_dict() plus its policy ("steps" or "epochs")
    seed: int | None = None
    member_seeds: list[int] = Field(default_factory=list)
    ensemble: int | None = None
    dtype: str | None = None
    device: str | None = None
    device_name: str | None = None
    elements: list[int] = Field(default_factory=list)
    e0: dict | None = None
    n_train: int | None = None
    n_train_molecules: int | None = None
    train_molecules: list[str] = Field(default_factory=list)
    n_valid: int | None = None
    members: list[MemberRecord] = Field(default_factory=list)
    wall_time_s: float | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    source: DataSource = Field(default_factory=DataSource, alias="meta")

    @property
    def complete(self) -> bool:
        return self.status == COMPLETE

    def write(self, run_dir: str | os.PathLike) -> None:
        """Write RUN/run.json atomically."""
        write_json_atomic(Path(run_dir) / RUN_FILE, self.model_dump(mode="json", by_alias=True))

    @classmethod
    def read(cls, run_dir: str | os.PathLike, remedy: str = RUN_REMEDY) -> RunRecord:
        """RUN/run.json; one line naming the file when it is missing or damaged."""
        path = Path(run_dir) / RUN_FILE
        if not path.exists():
            raise MlipdivError(f"{run_dir}: not a run directory (no {RUN_FILE})")
        data = read_json(path, "run file", remedy)
        with reading(path, "run file", remedy):
            return cls.model_validate(data)

    @classmethod
    def read_complete(cls, run_dir: str | os.PathLike, remedy: str = RUN_REMEDY) -> RunRecord:
        """The record of a finished run; one line when training has not finished."""
        record = cls.read(run_dir, remedy)
        if not record.complete:
            raise MlipdivError(f"{run_dir}: training is not finished; rerun the same train "
                               "command")
        return record
