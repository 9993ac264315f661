"""A dev-size study on a real multi-node Ray cluster in one machine (`ray.cluster_utils.Cluster`:
a head without GPUs and two worker nodes declaring one GPU each, one CPU per node): cells
spread over the nodes, a worker node lost mid-study, the driver killed and rerun, two studies
at once, GPUs asked per cell, and the checks made before any work."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import STUDY_TOML

from mlipdiv.errors import FieldError, MlipdivError
from mlipdiv.metrics.stats import METRIC_DECLARATIONS
from mlipdiv.study import parse_config, run_study
from mlipdiv.study.cells import with_placement_columns
from mlipdiv.study.executors import (
    RaySettings,
    cell_gpus,
    check_cluster,
    gpu_assignment,
    run_ray,
)
from mlipdiv.study.layout import StudyPaths

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

MLIPDIV = str(Path(sys.executable).with_name("mlipdiv"))
CELLS = 3  # fixed budget 12: M = 2, 4, 6 (one model, one replicate)
METRICS = [column for metric in METRIC_DECLARATIONS for column in metric.columns]
NODE = {"num_cpus": 1, "object_store_memory": 80 * 1024**2}
FAST_HEALTH = {"health_check_period_ms": 500, "health_check_failure_threshold": 4}


def study_text(store: Path, executor: str, molecules: str = "[2, 4, 6]",
               device: str = "cpu") -> str:
    """The conftest study, fixed budget only (`molecules` per cell), on `executor`'s lines;
    on `device` (unnamed, cells ask for GPUs where the cluster has them)."""
    text = STUDY_TOML.format(store=store)
    if device:
        text = text.replace('size = "dev"', f'size = "dev"\ndevice = "{device}"')
    text = text.replace("[fixed_molecules]\nmolecules = 3\nconformers = [1, 2, 4]\n", "")
    text = text.replace("molecules = [2, 4, 6]", f"molecules = {molecules}")
    return text.replace("[executor]\nworkers = 2", f"[executor]\n{executor}")


def on_cluster(cluster: Cluster, extra: str = "") -> str:
    return f'kind = "ray"\naddress = "{cluster.address}"\n{extra}'


def run(text: str, out: Path) -> pd.DataFrame:
    run_study(parse_config(text), text, out, progress=False)
    return pd.read_parquet(StudyPaths(out).results_parquet).sort_values(["cell", "split"])


def free_again(cluster: Cluster, timeout: float = 30) -> bool:
    """Every CPU of the cluster is free (no task left running) within `timeout` seconds."""
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]:
                return True
            time.sleep(0.2)
        return False
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def cluster():
    """Head (1 CPU, no GPU) + two workers (1 CPU and a declared GPU each)."""
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "num_gpus": 0,
                                                            "_system_config": FAST_HEALTH})
    workers = [cluster.add_node(**NODE, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    cluster.gpu_nodes = workers
    yield cluster
    cluster.shutdown()


@pytest.fixture(scope="module")
def local_results(diverse_store, tmp_path_factory) -> pd.DataFrame:
    """The same study on the local process pool: the reference every cluster run equals."""
    return run(study_text(diverse_store, "workers = 2"), tmp_path_factory.mktemp("local") / "s")


def _node_ids(results: pd.DataFrame) -> set[str]:
    return {node.rpartition("ray node ")[2].rstrip(")") for node in results.node}


def test_cells_spread_over_the_nodes_and_equal_a_local_run(cluster, diverse_store, tmp_path,
                                                           local_results):
    results = run(study_text(diverse_store, on_cluster(cluster)), tmp_path / "s")
    assert len(_node_ids(results)) >= 2
    assert set(results.task_device) == {"cpu"}  # no GPUs asked: CPU tasks
    same_metrics(results, local_results)
    assert set(local_results.node) == {local_results.node.iloc[0]}  # one host, recorded


def test_a_worker_node_lost_mid_study_is_retried(cluster, diverse_store, tmp_path,
                                                 local_results):
    out = tmp_path / "s"
    removed = []

    def remove_a_busy_worker():
        # One CPU per node: once every cell has started training (the first may have
        # finished), each holds a node of its own; a worker node whose cell has not finished
        # is removed, so that cell must be retried elsewhere.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            cells = out / "cells"
            finished = list(cells.glob("[!.]*.json")) if cells.exists() else []
            if len(list(out.glob("runs/*/*/run.json"))) == CELLS:
                done = " ".join(json.loads(f.read_text())["rows"][0]["node"] for f in finished)
                node = next(n for n in cluster.gpu_nodes if n.node_id[:12] not in done)
                cluster.remove_node(node)
                removed.append(node.node_id)
                return
            time.sleep(0.1)

    def watch():
        try:
            remove_a_busy_worker()
        except Exception as exc:  # noqa: BLE001 - said by the assertion below
            removed.append(f"watcher failed: {exc!r}")

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        results = run(study_text(diverse_store, on_cluster(cluster)), out)
    finally:
        watcher.join()
        if removed:  # the next tests have two GPU workers again
            cluster.gpu_nodes = [n for n in cluster.gpu_nodes if n.node_id != removed[0]]
            cluster.gpu_nodes.append(cluster.add_node(**NODE, num_gpus=1))
            cluster.wait_for_nodes()
    assert removed and not removed[0].startswith("watcher"), removed or "no cell finished"
    assert removed[0][:12] not in _node_ids(results)  # its cell ran again elsewhere
    same_metrics(results, local_results)


def same_metrics(results: pd.DataFrame, reference: pd.DataFrame) -> None:
    """Bit-identical errors (CPU training with the same seeds is deterministic)."""
    pd.testing.assert_frame_equal(
        results.sort_values(["cell", "split"])[METRICS].reset_index(drop=True),
        reference[METRICS].reset_index(drop=True), check_exact=True)


def test_a_killed_driver_reruns_against_the_same_cluster(cluster, diverse_store, tmp_path,
                                                         local_results):
    # One cell more than the cluster's three CPUs: the fourth starts only when another has
    # finished, so "one cell done, another training" lasts a whole training (with three cells
    # they trained at once and could all finish between two looks).
    cells_here = CELLS + 1
    out = tmp_path / "s"
    config = tmp_path / "study.toml"
    config.write_text(study_text(diverse_store, on_cluster(cluster), "[2, 3, 4, 6]"))
    command = [MLIPDIV, "study", str(config), "--out", str(out), "--no-report"]
    cells = out / "cells"

    def midway() -> bool:
        done = list(cells.glob("[!.]*.json")) if cells.exists() else []
        training = [p for p in out.glob("runs/*/*/run.json") if '"training"' in p.read_text()]
        return 0 < len(done) < cells_here and bool(training)

    stderr = tmp_path / "driver.err"
    with stderr.open("wb") as sink:
        driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=sink)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and driver.poll() is None and not midway():
            time.sleep(0.05)
        assert driver.poll() is None, f"the driver ended first: {stderr.read_text()[-1500:]}"
        driver.kill()  # SIGKILL
        driver.wait()
    assert free_again(cluster)  # Ray ended the dead driver's tasks ...
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    time.sleep(2)
    assert written == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    # ... and nothing of them writes any more (a task near its end may have finished first)
    finished = {p: p.stat().st_mtime_ns for p in cells.glob("[!.]*.json")}
    trained = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/*/run.json")
               if '"complete"' in p.read_text()}
    assert finished and trained
    subprocess.run(command, check=True, capture_output=True, timeout=150)
    results = pd.read_parquet(StudyPaths(out).results_parquet)
    assert len(results) == cells_here * results.split.nunique()
    assert not results.duplicated(["cell", "model", "split"]).any()
    for path, mtime in {**finished, **trained}.items():
        assert path.stat().st_mtime_ns == mtime  # kept, not trained again
    log = StudyPaths(out).log.read_text()
    assert f"cells: {cells_here - len(finished)} of {cells_here} to run" in log
    # the interrupted cells resumed or started again
    same_metrics(results[results.cell.isin(local_results.cell)], local_results)


def test_two_studies_on_one_cluster_at_once(cluster, diverse_store, tmp_path):
    processes = []
    for name, molecules in (("a", "[2]"), ("b", "[6]")):
        config = tmp_path / f"{name}.toml"
        config.write_text(study_text(diverse_store, on_cluster(cluster), molecules))
        processes.append(subprocess.Popen(
            [MLIPDIV, "study", str(config), "--out", str(tmp_path / name), "--no-report"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    for process in processes:
        assert process.wait(timeout=180) == 0, process.stderr.read().decode()[-2000:]
    tables = {name: pd.read_parquet(StudyPaths(tmp_path / name).results_parquet)
              for name in "ab"}
    assert list(tables["a"].M.unique()) == [2] and list(tables["b"].M.unique()) == [6]
    for name, table in tables.items():
        assert all(run.startswith(str(tmp_path / name)) for run in table.run)
    assert not list(tmp_path.glob("*/cells/.*"))  # no temporary left behind


def test_gpus_per_cell_places_cells_on_gpu_nodes_only(cluster, diverse_store, tmp_path):
    text = study_text(diverse_store, on_cluster(cluster, "gpus_per_cell = 0.5"), "[2, 6]",
                      device="")
    results = run(text, tmp_path / "s")
    gpu_nodes = {node.node_id[:12] for node in cluster.gpu_nodes}
    assert _node_ids(results) <= gpu_nodes
    assert all(d.startswith("cpu (ray gpu ") and d.endswith(" assigned, no CUDA)")
               for d in results.task_device)


def test_more_gpus_per_cell_than_a_node_has_is_refused_before_work(cluster, diverse_store,
                                                                    tmp_path):
    text = study_text(diverse_store, on_cluster(cluster, "gpus_per_cell = 2"), device="")
    with pytest.raises(MlipdivError, match=r"^config key executor.gpus_per_cell 2: the Ray "
                       r"cluster at "
                       r".* has at most 1 GPUs on a node \(2 GPUs \(3 CPUs on 3 nodes\)\)"):
        run_study(parse_config(text), text, tmp_path / "s", progress=False)
    assert not list((tmp_path / "s" / "runs").glob("*/*"))


def test_gpus_on_a_cpu_only_cluster_are_refused_and_unseen_paths_name_the_node(tmp_path):
    cpu_only = Cluster(initialize_head=True, head_node_args={**NODE, "num_gpus": 0})
    try:
        ray.init(address=cpu_only.address, include_dashboard=False, log_to_driver=False)
        try:
            settings = RaySettings(cpu_only.address, 0, gpus_per_cell=1.0)
            with pytest.raises(FieldError, match=rf"^executor.gpus_per_cell 1: the Ray cluster "
                               rf"at {cpu_only.address} has 0 GPUs \(1 CPUs on 1 nodes\)"):
                check_cluster(settings, threads=1)
            with pytest.raises(FieldError, match=r"^executor.threads_per_worker 4: .* at most "
                               "1 CPUs on a node"):
                check_cluster(RaySettings(cpu_only.address, 0), threads=4)
            missing = tmp_path / "elsewhere" / "store.h5"
            unseen = RaySettings(cpu_only.address, 0, shared_paths=((str(missing), False),))
            with pytest.raises(MlipdivError, match=rf"^{missing}: not found on Ray node \w+ "):
                list(run_ray(print, [[("x", ())]], 1, 1, unseen))
            assert check_cluster(RaySettings(cpu_only.address, 0, shared_paths=(
                (str(tmp_path), True),)), threads=1) == 0  # CPU cells, the path seen
        finally:
            ray.shutdown()
    finally:
        cpu_only.shutdown()


@pytest.mark.parametrize("requested, device, present, gpus", [
    (None, None, False, 0), (None, None, True, 1), (None, "cpu", True, 0),
    (None, "cuda:1", False, 1), (0.25, None, False, 0.25), (2.0, "cuda", True, 2)])
def test_gpus_per_cell_default_follows_the_device(requested, device, present, gpus):
    assert cell_gpus(requested, device, present) == gpus


def test_local_workers_are_pinned_to_gpus_round_robin():
    assert gpu_assignment(5, ["0", "1"]) == ["0", "1", "0", "1", "0"]
    assert gpu_assignment(2, ["3", "5", "7"]) == ["3", "5"]
    with pytest.raises(ValueError, match="at least one GPU"):
        gpu_assignment(2, [])


def test_results_written_before_placement_was_recorded_still_load():
    old = pd.DataFrame({"cell": ["a", "b"], "split": ["cf", "cf"]})
    assert with_placement_columns(old)[["node", "task_device"]].eq("").all().all()
    mixed = pd.DataFrame([{"cell": "a", "node": "h (ray node 1)", "task_device": "cpu"},
                          {"cell": "b"}])  # an old cell file next to a new one
    assert list(with_placement_columns(mixed).node) == ["h (ray node 1)", ""]
