"""The study configuration: one TOML file, validated by pydantic.

Unknown keys, wrong types and impossible combinations are rejected with the key's dotted name
and the reason, in one line, when the config is parsed: types are strict (`true`, not "yes";
whole numbers for counts, not 1e12), every value that names something (metric, test-set kind,
OOD shift, sampler, selection, backend, size, device) is checked against its registry, and
the values that depend on the machine (device, workers, threads) against this machine unless
the config is only read back (`this_machine=False`: the report of a finished study).
Presets (`quick`, `standard`) are TOML files shipped in `mlipdiv/resources/` and can be
printed as a starting file (`mlipdiv study --print-config`).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    model_validator,
)

from mlipdiv.data.options import GenerateOptions
from mlipdiv.data.qm import QMMethod
from mlipdiv.data.sampling import SAMPLERS
from mlipdiv.data.sources import parse_elements
from mlipdiv.data.store import DEFAULT_LABELS, ConformerStore
from mlipdiv.declare import declared_default, declared_help
from mlipdiv.design.experiments import experiments
from mlipdiv.design.kinds import default_advice_weights, test_set_names
from mlipdiv.design.ood import parse_ood
from mlipdiv.design.options import DesignOptions, SplitOptions, StrictSection
from mlipdiv.design.selections import CONFORMER_SELECTIONS, MOLECULE_SELECTIONS
from mlipdiv.errors import SEED_LIMIT, FieldError, MlipdivError
from mlipdiv.metrics.stats import ERROR_METRICS
from mlipdiv.models.registry import backend_names, study_schedule
from mlipdiv.models.sizes import SIZES
from mlipdiv.models.spec import TrainingSpec, resolve_device

PRESETS = ("quick", "standard")
MAX_STEPS = 10**7  # optimiser steps of a cell: far above any study's (a typo guard)


class ConfigKeyError(ValueError):
    """A bad value found by a validator above its key (a section or the whole study):
    `key` is dotted from where the validator sits, so the message still names it."""

    def __init__(self, key: str, reason: str):
        self.key, self.reason = key, reason
        super().__init__(f"{key}: {reason}")

    def __reduce__(self):  # pickles as itself (an error crossing a process boundary)
        return type(self), (self.key, self.reason)


def _declared(options_class: type, name: str, **constraints: Any) -> Any:
    """A config field whose default and description are the declaration's: the field `name`
    of the options dataclass the section builds (so the two cannot drift)."""
    return Field(declared_default(options_class, name),
                 description=declared_help(options_class)[name], **constraints)


def _registered(choices: Callable[[], Iterable[str]]) -> Any:
    """A str that must be a name in a registry, read when a config is validated (not when
    this module is imported), so a class registered later is a valid entry too."""

    def check(value: str) -> str:
        *others, last = (repr(name) for name in choices())
        if value not in choices():
            allowed = f"{', '.join(others)} or {last}" if others else last
            raise ValueError(f"Input should be {allowed}")
        return value

    return Annotated[str, AfterValidator(check)]


def _ood_spec(value: str) -> str:
    """`split.ood` parsed by the OOD shift registry (the parser `make_splits` uses)."""
    try:
        parse_ood(value)
    except FieldError as exc:
        raise ValueError(f"{value!r} is not an OOD shift; {exc.reason}") from None
    return value


DEVICE_SYNTAX = re.compile(r"cpu|cuda(:\d+)?")


def _device_syntax(value: str) -> str:
    """A torch device name mlipdiv trains on; whether this machine has it is checked by
    StudyConfig (it depends on where the cells run)."""
    if not DEVICE_SYNTAX.fullmatch(value):
        raise ValueError(f"{value!r}: expected cpu, cuda or cuda:N")
    return value


# choices that come from the registries: a new backend is a valid `models.architectures` entry
BackendName = _registered(backend_names)
SizeName = Literal[SIZES]
TestSetName = _registered(test_set_names)
MoleculeSelectionName = _registered(lambda: MOLECULE_SELECTIONS)
ConformerSelectionName = _registered(lambda: CONFORMER_SELECTIONS)
MetricName = _registered(lambda: ERROR_METRICS)  # the result columns a surface is fitted to
SamplerName = _registered(lambda: SAMPLERS)
OodSpec = Annotated[str, AfterValidator(_ood_spec)]
DeviceName = Annotated[str, AfterValidator(_device_syntax)]
# paths are read from TOML strings (strict mode would want Path objects)
PathValue = Annotated[Path, Field(strict=False)]


_Strict = StrictSection


class DataConfig(_Strict):
    """Where the molecules × conformers come from: generated with real QM, or a store."""

    source: Literal["generate", "store"] = "generate"
    molecules: str = "nci"  # generate: named molecule set or a .smi/.csv file
    n_molecules: int = Field(24, ge=2)
    conformers: int = Field(12, ge=1)
    method: Literal["gfn2-xtb", "gfn1-xtb", "dft"] = declared_default(GenerateOptions,
                                                                      "method").name
    sampler: SamplerName | None = None  # None = the generator's default
    temperature: float | None = Field(None, gt=0)
    elements: str | None = None  # generate: allowed elements, e.g. "C,H,N,O" (None = all)
    min_heavy_atoms: int | None = Field(None, ge=1)
    max_heavy_atoms: int | None = Field(None, ge=1)
    store: PathValue | None = None  # source = "store": an existing conformer store
    # the label sets (levels of theory) every cell trains and is scored on, each a study axis
    # like models.start: "default" is the store's own labels (its level_of_theory), another
    # name a label set of the store (`mlipdiv label STORE --method dft --as dft`); with a set
    # that covers a subset of the conformers, every level's cells draw from the conformers
    # labelled at all the listed sets (the same cells on every level)
    labels: list[str] = [DEFAULT_LABELS]

    def label_sets(self) -> list[str]:
        """The label sets the cells run on, in config order."""
        return list(self.labels)

    def generate_options(self, seed: int) -> GenerateOptions:
        """The GenerateOptions of this section (sampler and temperature left out take the
        declared defaults)."""
        given = {"sampler": self.sampler, "temperature": self.temperature}
        return GenerateOptions(conformers=self.conformers, method=QMMethod(self.method),
                               seed=seed, **{k: v for k, v in given.items() if v is not None})

    @model_validator(mode="after")
    def _source_fields(self) -> DataConfig:
        if self.source == "store" and self.store is None:
            raise ValueError("source = 'store' needs data.store (a conformer store path)")
        if self.source == "generate" and self.store is not None:
            raise ValueError("data.store is only read with source = 'store'")
        try:
            parse_elements(self.elements)
        except FieldError as exc:
            raise ConfigKeyError("elements", exc.reason) from None
        if (self.min_heavy_atoms and self.max_heavy_atoms
                and self.min_heavy_atoms > self.max_heavy_atoms):
            raise ValueError("min_heavy_atoms is larger than max_heavy_atoms")
        return self

    @model_validator(mode="after")
    def _labels(self, info: ValidationInfo) -> DataConfig:
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ConfigKeyError("labels", "list distinct label sets (\"default\": the "
                                 "store's own labels)")
        if self.labels == [DEFAULT_LABELS]:
            return self
        if self.source == "generate":
            raise ConfigKeyError("labels", "a generated store holds its own labels only "
                                 "(\"default\"); add a level with `mlipdiv label STORE --as "
                                 "NAME` and use source = 'store'")
        # a finished study read back needs no store; a missing store is the data step's error
        if not (info.context or {}).get("this_machine", True) or not self.store.is_file():
            return self
        with ConformerStore(self.store) as store:
            known = store.label_sets()
        for name in self.labels:
            if name not in known:
                raise ConfigKeyError("labels", f"{self.store} has no label set '{name}' (it "
                                     f"has {', '.join(known)}); add it with `mlipdiv label "
                                     f"{self.store} --method METHOD --as {name}`")
        return self


class SplitConfig(_Strict):
    """Held-out test sets carved from the data (counts of molecules unless a fraction < 1);
    the fields, defaults and help are `SplitOptions`'s, which this section builds."""

    # pool molecules that lose conformers to CF: "all" (each cell is then scored on unseen
    # conformers of its own training molecules), or a fraction (< 1) / count
    cf_molecules: float | Literal["all"] = _declared(SplitOptions, "cf_molecules")
    cf_conformers: int = _declared(SplitOptions, "cf_conformers", ge=1)
    st: float = _declared(SplitOptions, "st", ge=0)  # unseen molecules (scaffold in the pool)
    sf: float = _declared(SplitOptions, "sf", ge=0)  # unseen scaffolds
    ood: OodSpec | None = _declared(SplitOptions, "ood")  # "size:9", "elements:S,Cl", ...

    def options(self, seed: int) -> SplitOptions:
        """The SplitOptions this section declares, with the study's seed."""
        return SplitOptions(**self.model_dump(), seed=seed)

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.cf_molecules != "all" and not self.cf_molecules > 0:
            raise ValueError("cf_molecules must be 'all' or a positive fraction or count")
        fractions = [v for v in (self.st, self.sf) if v < 1]
        if sum(fractions) >= 1:
            raise ValueError("split fractions st + sf leave no training pool")
        return self


class DesignConfig(_Strict):
    """Draws per cell and how molecules and conformers are selected (each experiment's
    section holds what it fixes and its grid); defaults and help are `DesignOptions`'s."""

    replicates: int = _declared(DesignOptions, "replicates", ge=1)
    molecule_selection: list[MoleculeSelectionName] = [
        declared_default(DesignOptions, "molecule_selection")]
    conformer_selection: list[ConformerSelectionName] = [
        declared_default(DesignOptions, "conformer_selection")]
    validation_fraction: float = _declared(DesignOptions, "validation_fraction", gt=0, lt=1)
    allow_short: bool = _declared(DesignOptions, "allow_short")

    @model_validator(mode="after")
    def _selections(self) -> DesignConfig:
        for name in ("molecule_selection", "conformer_selection"):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values):
                raise ValueError(f"{name} must list distinct strategies")
        return self


class ModelsConfig(_Strict):
    """Architectures trained on every cell, at one run size."""

    architectures: list[BackendName] = ["mace"]
    size: SizeName = "fast"
    ensemble: int = _declared(TrainingSpec, "ensemble", ge=1)
    dtype: Literal["float32", "float64"] = _declared(TrainingSpec, "dtype")
    device: DeviceName | None = _declared(TrainingSpec, "device")
    # optimiser steps of every cell (the same for all, so cells differ only in their data);
    # None = what the study's largest cell needs for the size's epochs at its batch size
    steps: int | None = _declared(TrainingSpec, "steps", ge=1, le=MAX_STEPS)
    # a pretrained start of every cell (models.pretrained); the path as the working directory
    # sees it
    init_from: PathValue | None = _declared(TrainingSpec, "init_from")
    e0: Literal["refit", "keep", "shift"] = _declared(TrainingSpec, "e0")
    finetune_lr: float | None = _declared(TrainingSpec, "finetune_lr", gt=0)
    freeze: list[str] | None = _declared(TrainingSpec, "freeze")
    # how cells read their training sets (not what they learn: streamed training equals
    # in-memory training, so neither key is part of comparable())
    stream: bool = _declared(TrainingSpec, "stream")
    loader_workers: int | None = _declared(TrainingSpec, "loader_workers", ge=0)
    # the starts every cell trains from, on the same cells with the same steps ("scratch"
    # ignores init_from); None = ["pretrained"] with init_from, else ["scratch"]
    start: list[Literal["scratch", "pretrained"]] | None = None

    @model_validator(mode="after")
    def _distinct(self) -> ModelsConfig:
        if not self.architectures or len(set(self.architectures)) != len(self.architectures):
            raise ValueError("architectures must list distinct models")
        return self

    @model_validator(mode="after")
    def _start(self, info: ValidationInfo) -> ModelsConfig:
        if self.init_from is None:
            given = [key for key, default in (("e0", "refit"), ("finetune_lr", None),
                                              ("freeze", None)) if getattr(self, key) != default]
            if given:
                raise ConfigKeyError(given[0], "only used with init_from (a pretrained start)")
        if self.start is not None:
            if not self.start or len(set(self.start)) != len(self.start):
                raise ConfigKeyError("start", "list distinct starts (scratch, pretrained)")
            if "pretrained" in self.start and self.init_from is None:
                raise ConfigKeyError("start", "\"pretrained\" needs init_from (the pretrained "
                                     "model)")
        if self.loader_workers is not None and not self.stream:
            raise ConfigKeyError("loader_workers", "only with stream")
        if self.init_from is None:
            return self
        if self.stream:
            raise ConfigKeyError("stream", "cannot be combined with init_from (a pretrained "
                                 "start trains in memory)")
        if len(self.architectures) > 1:
            raise ConfigKeyError("init_from", "a model of one backend: list one architecture")
        elif (info.context or {}).get("this_machine", True) and not self.init_from.exists():
            raise ConfigKeyError("init_from", f"{self.init_from}: no such run directory or "
                                 "model file")
        return self

    def starts(self) -> list[str]:
        """The starts the cells train from (`start`, or its default)."""
        return list(self.start) if self.start is not None else self.default_starts()

    def default_starts(self) -> list[str]:
        """The start of a config that does not list `start` (today's single start)."""
        return ["scratch"] if self.init_from is None else ["pretrained"]

    def start_options(self, start: str = "pretrained") -> dict:
        """The TrainingSpec fields of a start (the pretrained one's path made absolute:
        workers need not share the working directory); "scratch" ignores init_from."""
        if start == "scratch" or self.init_from is None:
            return {"init_from": None, "e0": "refit", "finetune_lr": None, "freeze": None}
        return {"init_from": None if self.init_from is None else self.init_from.resolve(),
                "e0": self.e0, "finetune_lr": self.finetune_lr,
                "freeze": tuple(self.freeze) if self.freeze else None}


class ExecutorConfig(_Strict):
    """How cells run: a local process pool, or Ray tasks (a local instance or a cluster)."""

    kind: Literal["local", "ray"] = "local"
    workers: int = Field(0, ge=0)  # 0 = one per core (local) / cluster CPUs (ray)
    threads_per_worker: int = Field(0, ge=0)  # 0 = cores // workers
    address: str | None = None  # ray: cluster address; None = start a local instance
    max_retries: int = Field(2, ge=0)  # ray: retries of a cell on worker failure
    # GPUs each cell reserves: a fraction in (0, 1] packs small models, or a whole number;
    # None = 1 when the study's device is CUDA (models.device, or CUDA present), else 0
    gpus_per_cell: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _address(self) -> ExecutorConfig:
        if self.address is not None and self.kind != "ray":
            raise ValueError("address is only used with kind = 'ray'")
        gpus = self.gpus_per_cell
        if gpus is not None and gpus > 1 and not float(gpus).is_integer():
            raise ConfigKeyError("gpus_per_cell", f"{gpus}: a fraction in (0, 1] or a whole "
                                 "number of GPUs")
        return self


class AdviceConfig(_Strict):
    """Defaults for the budget advice written with the study."""

    weights: dict[TestSetName, float] = Field(default_factory=default_advice_weights)
    metric: MetricName = "energy_mae_mev_per_atom"
    cost_per_molecule: float = Field(0.0, ge=0)
    cost_per_conformer: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _weights(self) -> AdviceConfig:
        if any(w < 0 for w in self.weights.values()) or not any(self.weights.values()):
            raise ValueError("weights must be non-negative with at least one positive")
        return self


class AdaptiveConfig(_Strict):
    """The adaptive pilot: after the grid, add cells where the learning curves' samples put
    the optimum (Thompson sampling), train them, refit, and stop once the advice is determined
    with an M interval spanning at most `max_molecule_ratio`, or when `cells` are spent."""

    enabled: bool = False
    cells: int = Field(10, ge=1, le=200)  # extra (M, C) design points at most (all replicates)
    per_round: int = Field(2, ge=1, le=20)  # design points trained between two refits
    max_molecule_ratio: float = Field(4.0, gt=1)


class StudyBase(_Strict):
    """A whole study but its experiments: data, splits, design, models, executor, advice.
    `StudyConfig` adds one optional section per registered experiment."""

    name: str = "study"
    seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    out: PathValue = Path("study-output")
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    design: DesignConfig = DesignConfig()
    models: ModelsConfig = ModelsConfig()
    executor: ExecutorConfig = ExecutorConfig()
    advice: AdviceConfig = AdviceConfig()
    adaptive: AdaptiveConfig = AdaptiveConfig()

    @model_validator(mode="after")
    def _combinations(self) -> StudyBase:
        if not self.experiment_sections():
            keys = " or ".join(f"[{kind.config_key}]" for kind in experiments())
            raise ValueError(f"give at least one experiment: {keys}")
        if self.split.ood is None and "ood" in self.advice.weights:
            raise ValueError("advice.weights names 'ood' but split.ood makes no OOD set")
        if self.executor.gpus_per_cell is not None and self.models.device == "cpu":
            raise ConfigKeyError("executor.gpus_per_cell", f"{self.executor.gpus_per_cell:g} "
                                 "asks for GPUs but models.device is 'cpu'")
        if self.models.stream and self.data.labels != [DEFAULT_LABELS]:
            raise ConfigKeyError("models.stream", "streams the store's default labels only; "
                                 f"data.labels lists {self.data.labels}")
        if self.data.source == "generate":
            for kind, section in self.experiment_sections().items():
                kind.check_generated(section, self.data.n_molecules, self.data.conformers)
        return self

    @model_validator(mode="after")
    def _on_this_machine(self, info: ValidationInfo) -> StudyBase:
        # skipped when a finished study's config is only read back (report, advice)
        if (info.context or {}).get("this_machine", True):
            check_machine(self)
        return self

    def experiment_sections(self) -> dict:
        """{experiment class: its config section} of the experiments this study runs, in
        report order."""
        sections = {kind: getattr(self, kind.config_key, None) for kind in experiments()}
        return {kind: section for kind, section in sections.items() if section is not None}

    def experiments(self) -> list[str]:
        """The experiments this study runs, in report order."""
        return [kind.name for kind in self.experiment_sections()]

    def largest_training_set(self) -> int:
        """Training conformers of the study's largest cell, over its experiments."""
        return max(kind.largest_training_set(section)
                   for kind, section in self.experiment_sections().items())

    def advice_cell(self) -> tuple[int, int]:
        """(M, training conformers) whose cost is the study's own advice budget: the first
        experiment's (in report order) own cell for it."""
        kind, section = next(iter(self.experiment_sections().items()))
        return kind.advice_cell(section)

    def selection_pairs(self) -> list[tuple[str, str]]:
        """Every (molecule selection, conformer selection) pair the study compares."""
        return [(m, c) for m in self.design.molecule_selection
                for c in self.design.conformer_selection]

    def design_common(self, selection: tuple[str, str]) -> dict:
        """The options every experiment's design shares (`DesignOptions.common()`), for one
        (molecule selection, conformer selection) pair."""
        design = self.design
        return dict(replicates=design.replicates, validation_fraction=design.validation_fraction,
                    molecule_selection=selection[0], conformer_selection=selection[1],
                    allow_short=design.allow_short, seed=self.seed)

    def design_options(self, kind, selection: tuple[str, str]):
        """The DesignOptions of experiment `kind` for one selection pair."""
        return kind.options(getattr(self, kind.config_key), self.design_common(selection))

    def training_schedule(self) -> dict[str, dict]:
        """Per model, the study-wide schedule every cell trains with: the same number of
        optimiser steps for all cells, validation / early stopping every `steps_per_round`."""
        largest = self.largest_training_set()
        schedule = {}
        for model in self.models.architectures:
            steps, per_round = study_schedule(model, self.models.size, largest)
            schedule[model] = {
                "policy": "equal optimiser steps for every cell; early stopping on the cell's "
                          "validation set may end a run earlier",
                "steps": self.models.steps or steps, "steps_per_round": per_round,
                "largest_cell_conformers": largest}
        return schedule

    def comparable(self) -> dict:
        """The settings that define the study's results (not where or how it runs), with the
        training schedule they imply."""
        settings = self.model_dump(mode="json", exclude={"out": True, "executor": True})
        if not self.adaptive.enabled:  # studies made before the adaptive pilot compare equal
            settings.pop("adaptive")
        if self.models.init_from is None:  # nor do those made before pretrained starts
            for key in self.models.start_options():
                settings["models"].pop(key)
        if self.models.starts() == self.models.default_starts():  # nor those before `start`
            settings["models"].pop("start")
        if self.data.labels == [DEFAULT_LABELS]:  # nor those before `data.labels`
            settings["data"].pop("labels")
        for key in ("stream", "loader_workers"):  # how cells read data, not what they learn
            settings["models"].pop(key)
        for kind in experiments():  # nor do studies made before an experiment was added
            if settings.get(kind.config_key, 0) is None:
                settings.pop(kind.config_key)
        return {**settings, "training_schedule": self.training_schedule()}


# one optional section per registered experiment ([fixed_budget], [fixed_molecules], ...)
StudyConfig = create_model(
    "StudyConfig", __base__=StudyBase, __module__=__name__,
    __doc__="A whole study: data, splits, the experiments' designs, models, executor, advice.",
    **{kind.config_key: (kind.Config | None, None) for kind in experiments()})


def runs_elsewhere(executor: ExecutorConfig) -> bool:
    """Whether the cells run on another machine (a Ray cluster at an address)."""
    return executor.kind == "ray" and executor.address is not None


def check_machine(config: StudyBase) -> None:
    """The values that depend on the machine fit this one: `models.device` exists here, GPUs
    per cell of the local executor are GPUs here, and `executor.workers`,
    `executor.threads_per_worker` and their product are at most its
    cores. Skipped for cells on a Ray cluster (`executor.address`): its nodes decide."""
    if runs_elsewhere(config.executor):
        return
    if config.models.device is not None:
        try:
            resolve_device(config.models.device)
        except FieldError as exc:
            raise ConfigKeyError("models.device", f"{config.models.device!r}: "
                                 f"{exc.reason}") from None
    gpus = config.executor.gpus_per_cell
    if gpus is not None and config.executor.kind == "local" and not torch.cuda.is_available():
        raise ConfigKeyError("executor.gpus_per_cell", f"{gpus:g}: this machine has no CUDA "
                             "device (GPUs on a Ray cluster: kind = 'ray' with an address)")
    cores = os.cpu_count() or 1
    workers, threads = config.executor.workers, config.executor.threads_per_worker
    where = "this machine" if config.executor.kind == "local" else "a local Ray instance here"
    for key, value in (("workers", workers), ("threads_per_worker", threads)):
        if value > cores:
            raise ConfigKeyError(f"executor.{key}", f"{value} exceeds the {cores} cores of "
                                 f"{where} (more only on a Ray cluster: kind = 'ray' with an "
                                 "address)")
    if workers and threads and workers * threads > cores:
        raise ConfigKeyError("executor.threads_per_worker",
                             f"{workers} workers × {threads} threads exceed the {cores} cores "
                             f"of {where}")


def parse_config(text: str, origin: str = "config", *, this_machine: bool = True
                 ) -> StudyConfig:
    """Validate TOML text into a StudyConfig; MlipdivError names the key and the reason.
    `this_machine=False` skips the checks against this machine (`check_machine`), for a
    config that is only read back, not run."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MlipdivError(f"{origin}: not valid TOML ({exc})") from None
    try:
        return StudyConfig.model_validate(raw, context={"this_machine": this_machine})
    except ValidationError as exc:
        raise MlipdivError(f"{origin}: {first_error(exc)}") from None


def first_error(exc: ValidationError) -> str:
    """The first error of a validation as one line: `key a.b: reason` (`unknown key a.b`)."""
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, ConfigKeyError):
        return f"key {'.'.join([*loc, cause.key])}: {cause.reason}"
    key = ".".join(loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"unknown key {key}"
    message = error["msg"].removeprefix("Value error, ")
    return f"key {key}: {message}"


def read_config_text(path: str | Path) -> str:
    """The text of a study TOML file (TOML is UTF-8 by definition)."""
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise MlipdivError(f"{path}: cannot read the config ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise MlipdivError(f"{path}: not UTF-8 text (byte {exc.start}); TOML files are UTF-8"
                           ) from None


def load_config(path: str | Path, *, this_machine: bool = True) -> StudyConfig:
    """Read and validate a study TOML file (`this_machine` as `parse_config`)."""
    return parse_config(read_config_text(path), str(path), this_machine=this_machine)


def preset_text(name: str) -> str:
    """The TOML text of a shipped preset (`quick` or `standard`)."""
    if name not in PRESETS:
        raise FieldError("preset", repr(name), f"choose from {', '.join(PRESETS)}")
    return resources.files("mlipdiv").joinpath("resources", f"study_{name}.toml").read_text()


def load_preset(name: str) -> StudyConfig:
    """A shipped preset as a validated StudyConfig."""
    return parse_config(preset_text(name), f"preset {name}")


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two `comparable()` dicts."""
    keys = sorted(set(old) | set(new))
    differing = []
    for key in keys:
        dotted = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differing += config_differences(a, b, f"{dotted}.")
        elif a != b:
            differing.append(dotted)
    return differing
