"""The study config refuses, when it is parsed, the mistakes that used to surface only after
hours of work (after the profile step, or after every cell had trained), naming the key."""

from __future__ import annotations

import os
import time

import pytest
import torch

from mlipdiv.errors import SEED_LIMIT, MlipdivError
from mlipdiv.metrics.stats import METRICS
from mlipdiv.study.config import MAX_STEPS, parse_config

MAX_SEED = SEED_LIMIT - 1

BASE = "[fixed_budget]\nbudget = 8\n"
CORES = os.cpu_count() or 1
MISSING_GPU = f"cuda:{torch.cuda.device_count()}"  # one past the last device, or no CUDA
CLUSTER = "[executor]\nkind = 'ray'\naddress = 'head:6379'\n"

LATE_MISTAKES = [  # (config text, key the error names, words of the reason)
    (BASE + "[advice]\nmetric = 'force_mae'", "advice.metric", "forces_mae_mev_per_angstrom"),
    (BASE + "[advice]\nmetric = 'spearman_mean'", "advice.metric", "energy_mae_mev_per_atom"),
    (BASE + f"[models]\ndevice = '{MISSING_GPU}'", "models.device", MISSING_GPU),
    (BASE + "[models]\ndevice = 'gpu'", "models.device", "expected cpu, cuda or cuda:N"),
    (f"seed = {MAX_SEED + 1}\n" + BASE, "seed", "less than"),
    ("seed = -1\n" + BASE, "seed", "greater than or equal to 0"),
    (BASE + "[executor]\nthreads_per_worker = 100000", "executor.threads_per_worker",
     f"exceeds the {CORES} cores"),
    (BASE + f"[executor]\nworkers = {CORES + 1}", "executor.workers",
     f"exceeds the {CORES} cores"),
    (BASE + f"[executor]\nkind = 'ray'\nworkers = {CORES + 1}", "executor.workers",
     "a local Ray instance"),
    (BASE + f"[executor]\nworkers = {CORES}\nthreads_per_worker = 2",
     "executor.threads_per_worker", "threads exceed"),
    (BASE + "[split]\nood = 'sise:9'", "split.ood", "'sise:9' is not an OOD shift"),
    (BASE + "[split]\nood = 'size:0'", "split.ood", "size:MIN_HEAVY"),
    (BASE + "[split]\nood = 'elements:Xx'", "split.ood", "elements:S,Cl"),
    (BASE + "[split]\nood = 'cluster:1'", "split.ood", "cluster"),
    (BASE + "[data]\nsampler = 'nmz'", "data.sampler", "'nms'"),
    (BASE + "[design]\nallow_short = 'yes'", "design.allow_short", "valid boolean"),
    (BASE + "[design]\nallow_short = 1", "design.allow_short", "valid boolean"),
    (BASE + "[models]\nsteps = 1e12", "models.steps", "valid integer"),
    (BASE + f"[models]\nsteps = {MAX_STEPS + 1}", "models.steps", "less than or equal"),
    ("[fixed_budget]\nbudget = 8.0", "fixed_budget.budget", "valid integer"),
    (BASE + "[design]\nreplicates = 2.5", "design.replicates", "valid integer"),
    (BASE + "[advice]\nweights = {cf = 1.0, xx = 1.0}", "advice.weights.xx", "'cf'"),
    (BASE + "[design]\nconformer_selection = ['farthes']", "design.conformer_selection.0",
     "'farthest'"),
    (BASE + "[models]\narchitectures = ['macee']", "models.architectures.0", "'mace'"),
    (BASE + "[models]\nsize = 'huge'", "models.size", "'fast'"),
    (BASE + f"{CLUSTER}gpus_per_cell = 1.5", "executor.gpus_per_cell",
     "1.5: a fraction in (0, 1] or a whole number of GPUs"),
    (BASE + f"{CLUSTER}gpus_per_cell = 0", "executor.gpus_per_cell", "greater than 0"),
    (BASE + f"[models]\ndevice = 'cpu'\n{CLUSTER}gpus_per_cell = 0.5", "executor.gpus_per_cell",
     "0.5 asks for GPUs but models.device is 'cpu'"),
    *([(BASE + "[executor]\ngpus_per_cell = 1", "executor.gpus_per_cell",
        "1: this machine has no CUDA device")] if not torch.cuda.is_available() else []),
]


@pytest.mark.parametrize("text, key, reason", LATE_MISTAKES,
                         ids=[f"{key}:{i}" for i, (_, key, _) in enumerate(LATE_MISTAKES)])
def test_a_late_mistake_is_refused_when_parsed_naming_its_key(text, key, reason):
    parse_config(BASE)  # imports and registries loaded: time the parse alone
    start = time.perf_counter()
    with pytest.raises(MlipdivError) as error:
        parse_config(text, "bad.toml")
    assert time.perf_counter() - start < 0.5
    message = str(error.value)
    assert message.startswith(f"bad.toml: key {key}") and reason in message, message
    assert "\n" not in message


def test_every_error_metric_is_a_valid_advice_metric():
    accepted = []
    for metric in METRICS:
        try:
            parse_config(BASE + f"[advice]\nmetric = '{metric}'")
        except MlipdivError:
            continue
        accepted.append(metric)
    assert accepted == [m for m in METRICS if m != "spearman_mean"]


def test_strict_types_still_take_what_toml_writes():
    config = parse_config(f"seed = {MAX_SEED}\nout = 'here'\n" + BASE
                          + "[split]\nst = 1\nood = 'elements:S,Cl'\n"
                            "[design]\nallow_short = true\nvalidation_fraction = 0.2\n"
                            f"[models]\nsteps = {MAX_STEPS}\ndevice = 'cpu'\n"
                            "[data]\nsampler = 'nms'\ntemperature = 300\n")
    assert config.split.st == 1.0 and isinstance(config.split.st, float)
    assert config.out.name == "here" and config.design.allow_short is True
    assert config.data.sampler == "nms" and config.models.device == "cpu"
    for gpus in ("1", "0.25", "2"):  # a whole number is fine for the float key
        assert parse_config(BASE + f"{CLUSTER}gpus_per_cell = {gpus}"
                            ).executor.gpus_per_cell == float(gpus)


def test_machine_checks_are_left_to_a_ray_cluster_and_to_a_config_read_back():
    cluster = (BASE + "[executor]\nkind = 'ray'\naddress = 'head:6379'\nworkers = 4096\n"
               f"threads_per_worker = 256\n[models]\ndevice = '{MISSING_GPU}'\n")
    assert parse_config(cluster).executor.workers == 4096
    with pytest.raises(MlipdivError, match="key models.device: 'gpu'"):
        parse_config(cluster.replace(MISSING_GPU, "gpu"))  # the syntax is checked anywhere
    elsewhere = BASE + f"[executor]\nworkers = {CORES + 1}\n[models]\ndevice = '{MISSING_GPU}'"
    assert parse_config(elsewhere, this_machine=False).models.device == MISSING_GPU


def test_cli_override_beyond_the_cores_is_one_line_naming_the_key(tmp_path, monkeypatch,
                                                                  capsys):
    import sys

    from mlipdiv import cli

    out = tmp_path / "never"
    monkeypatch.setattr(sys, "argv", ["mlipdiv", "study", "--preset", "quick", "--workers",
                                      str(CORES + 1), "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"mlipdiv: error: preset quick: key executor.workers: {CORES + 1} exceeds the {CORES} "
        "cores of this machine (more only on a Ray cluster: kind = 'ray' with an address)")
    assert not out.exists()
