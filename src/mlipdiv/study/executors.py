"""Executors run cell tasks: a local process pool (default) or Ray tasks (a local instance or a
cluster). Each task writes its own result file into the shared study directory, so the
executor only reports completions; a failed cell is reported, never fatal to the others.

Where a task runs is its `Placement` (`current_placement()` inside the task): the node, and
the GPUs reserved for it — Ray's (`num_gpus` per cell, `ray.get_gpu_ids()`) or, with the local
pool on a machine with several GPUs, the one its worker process is pinned to
(`CUDA_VISIBLE_DEVICES`, round-robin: `gpu_assignment`). Inside the task the device follows
that reservation (`task_device`): "cuda:0" of the task's visible set, never a device number of
the driver's. Before any Ray task is sent, the cluster is checked: GPUs and CPUs a cell asks
for exist on some node, and every node sees the paths the cells read and write
(`check_cluster`)."""

from __future__ import annotations

import multiprocessing
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import torch

from mlipdiv.errors import FieldError, MlipdivError, first_line
from mlipdiv.threads import limit_threads, thread_limit
from mlipdiv.workers import init_worker

Phases = Sequence[Sequence[tuple[str, tuple]]]  # (key, args) per task; phase after phase


@dataclass(frozen=True)
class Completion:
    """One finished task: its key, what the task returned, or the one-line error."""

    key: str
    value: object = None
    error: str | None = None


@dataclass(frozen=True)
class Placement:
    """Where a task runs: its node (hostname, with the Ray node id on Ray), the GPUs reserved
    for it (as the scheduler numbers them) and who reserved them ("ray", "local" or "")."""

    node: str
    gpu_ids: tuple[str, ...] = ()
    by: str = ""


_placement: Placement | None = None  # set in a worker by the executor, per task


def current_placement() -> Placement:
    """This task's placement; this host with no reserved GPU outside an executor's worker."""
    return _placement or Placement(socket.gethostname())


def cell_gpus(requested: float | None, device: str | None, gpus_present: bool) -> float:
    """GPUs a cell reserves: `requested` (executor.gpus_per_cell) when given, else 1 when the
    study's device is CUDA (named, or unnamed where GPUs are present), else 0."""
    if requested is not None:
        return requested
    if device is not None:
        return 1.0 if device.startswith("cuda") else 0.0
    return 1.0 if gpus_present else 0.0


def task_device(requested: str | None, gpus: float) -> tuple[str, str]:
    """(torch device, what to record) for the running task: the first of the GPUs reserved for
    it ("cuda:0" of its visible set), CPU when it reserved none — or when CUDA is missing
    although a GPU was assigned (declared, not real: "cpu (ray gpu 0 assigned, no CUDA)")."""
    placement = current_placement()
    if placement.gpu_ids:
        given = f"{'ray ' if placement.by == 'ray' else ''}gpu {','.join(placement.gpu_ids)}"
        if torch.cuda.is_available():
            return "cuda:0", f"cuda:0 ({given})"
        return "cpu", f"cpu ({given} assigned, no CUDA)"
    if gpus:  # the local executor in this process: the named device, or CUDA
        device = requested if requested and requested.startswith("cuda") else "cuda"
        return device, device
    return "cpu", "cpu"


def plan_parallelism(n_tasks: int, workers: int = 0, threads: int = 0,
                     cores: int | None = None) -> tuple[int, int]:
    """(worker processes, threads per worker) so that workers × threads <= cores."""
    cores = cores or os.cpu_count() or 1
    workers = max(1, min(workers or cores, n_tasks or 1))
    threads = threads or max(1, cores // workers)
    return workers, threads


def visible_gpus() -> list[str]:
    """This machine's GPUs as CUDA_VISIBLE_DEVICES names them (its order when it is set)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip()][:torch.cuda.device_count()]
    return [str(index) for index in range(torch.cuda.device_count())]


def gpu_assignment(workers: int, gpus: Sequence[str]) -> list[str]:
    """The GPU each of `workers` worker processes is pinned to: round-robin over `gpus`."""
    if not gpus:
        raise ValueError("gpu_assignment needs at least one GPU")
    return [gpus[worker % len(gpus)] for worker in range(workers)]


def run_local(function: Callable, phases: Phases, workers: int, threads: int,
              gpus: float = 0.0) -> Iterator[Completion]:
    """Run `function(*args)` for each (key, args) in a spawn-context process pool, one phase
    after the other. With `gpus` per task and several GPUs here, at most `GPUs / gpus` workers,
    each pinned to one GPU (round-robin)."""
    visible = visible_gpus() if gpus else []
    if len(visible) > 1:
        workers = max(1, min(workers, int(len(visible) / gpus)))
    if workers == 1:  # in the caller's process: its thread settings come back afterwards
        for phase in phases:
            for key, args in phase:
                try:
                    with thread_limit(threads, torch=True):
                        result = function(*args)
                except Exception as exc:  # noqa: BLE001 - reported per cell, the others go on
                    yield Completion(key, error=first_line(exc, with_type=True))
                else:
                    yield Completion(key, result)
        return
    context = multiprocessing.get_context("spawn")
    pinned = context.Queue()
    for gpu in gpu_assignment(workers, visible) if len(visible) > 1 else []:
        pinned.put(gpu)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_local_worker,
                             initargs=(threads, os.getpid(), pinned if len(visible) > 1
                                       else None)) as pool:
        for phase in phases:
            try:
                futures = {pool.submit(function, *args): key for key, args in phase}
            except BrokenProcessPool:  # a worker died in an earlier phase (killed, crashed)
                for key, _ in phase:
                    yield Completion(key, error="BrokenProcessPool: a worker process died "
                                     "in an earlier phase; rerun the study to resume")
                continue
            for future in as_completed(futures):
                try:
                    yield Completion(futures[future], future.result())
                except Exception as exc:  # noqa: BLE001 - reported per cell, the others go on
                    yield Completion(futures[future], error=first_line(exc, with_type=True))


def _init_local_worker(threads: int, command_pid: int, pinned) -> None:
    global _placement
    if pinned is not None:  # before torch initialises CUDA in this process
        gpu = pinned.get()
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        _placement = Placement(socket.gethostname(), (gpu,), "local")
    init_worker(threads, command_pid, True)


@dataclass(frozen=True)
class RaySettings:
    """What the Ray executor is asked for: the cluster (None: a local instance), retries, the
    GPUs per cell as configured and the study's device (`cell_gpus`), and the paths every
    node must see: (path, whether the node must write into it)."""

    address: str | None
    max_retries: int
    gpus_per_cell: float | None = None
    device: str | None = None
    shared_paths: tuple[tuple[str, bool], ...] = ()


def run_ray(function: Callable, phases: Phases, workers: int, threads: int,
            settings: RaySettings) -> Iterator[Completion]:
    """Each task a Ray task (retried `max_retries` times when its worker or node dies), one
    phase after the other, asking for `threads` CPUs, or `num_gpus` when its cells train on
    GPUs. Without an address a local Ray instance with `workers × threads` CPUs is started
    and stopped. The cluster is checked first (`check_cluster`)."""
    import ray  # slow; only the Ray executor needs it

    started_here = not ray.is_initialized()
    if started_here:
        try:
            if settings.address:
                ray.init(address=settings.address, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(num_cpus=workers * threads, include_dashboard=False,
                         log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = settings.address or "a local instance"
            # `executor` (the config key is executor.kind) renders as the flag --executor
            raise FieldError("executor", "ray", f"cannot start or reach Ray at {where} "
                             f"({first_line(exc, with_type=True)})") from None
    try:
        gpus = check_cluster(settings, threads)
        options = {"num_cpus": threads, "max_retries": settings.max_retries}
        if gpus:  # a fresh worker per GPU task: CUDA starts with the task's own GPUs
            options.update(num_gpus=gpus, max_calls=1)
        remote = ray.remote(**options)(_ray_task)
        for phase in phases:
            pending = {remote.remote(function, threads, *args): key for key, args in phase}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    key = pending.pop(ref)
                    try:
                        yield Completion(key, ray.get(ref))
                    except Exception as exc:  # noqa: BLE001 - reported per cell, others go on
                        cause = getattr(exc, "cause", None) or exc
                        yield Completion(key, error=first_line(cause, with_type=True))
    finally:
        if started_here:
            ray.shutdown()


def cluster_summary(nodes: list[dict]) -> str:
    """What a Ray cluster has, for an error: "0 GPUs (12 CPUs on 3 nodes)"."""
    total = {kind: sum(node["Resources"].get(kind, 0) for node in nodes)
             for kind in ("GPU", "CPU")}
    return f"{total['GPU']:g} GPUs ({total['CPU']:g} CPUs on {len(nodes)} nodes)"


def check_cluster(settings: RaySettings, threads: int) -> float:
    """Before any task: the GPUs per cell (`cell_gpus`) and `threads` CPUs fit on some node of
    the connected cluster, and every node sees `settings.shared_paths`; returns the GPUs per
    cell. A one-line FieldError / MlipdivError otherwise."""
    import ray  # slow; only the Ray executor needs it

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    where = f"the Ray cluster at {settings.address}" if settings.address else "the local Ray"
    gpus = cell_gpus(settings.gpus_per_cell, settings.device,
                     any(node["Resources"].get("GPU", 0) for node in nodes))
    most = {kind: max((node["Resources"].get(kind, 0) for node in nodes), default=0)
            for kind in ("GPU", "CPU")}
    if gpus and most["GPU"] < gpus:
        key = ("executor.gpus_per_cell" if settings.gpus_per_cell is not None
               else "models.device")
        value = settings.gpus_per_cell if settings.gpus_per_cell is not None else (
            settings.device or "unset")
        held = (f"has {cluster_summary(nodes)}" if not most["GPU"]
                else f"has at most {most['GPU']:g} GPUs on a node ({cluster_summary(nodes)})")
        raise FieldError(key, f"{value:g}" if isinstance(value, float) else value,
                         f"{where} {held}; each cell asks for {gpus:g}")
    if most["CPU"] < threads:
        raise FieldError("executor.threads_per_worker", threads, f"{where} has at most "
                         f"{most['CPU']:g} CPUs on a node ({cluster_summary(nodes)})")
    if settings.shared_paths:
        check_shared_paths(nodes, settings.shared_paths)
    return gpus


def check_shared_paths(nodes: list[dict], paths: Sequence[tuple[str, bool]]) -> None:
    """A tiny task on every node: each path exists there, readable, and writable where the
    cells write (the study directory); the first node that cannot see one fails in one line
    naming the path and the node."""
    import ray  # slow; only the Ray executor needs it
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_paths_problem)
    refs = {probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        node["NodeID"], soft=False)).remote(list(paths)): node for node in nodes}
    for ref, node in refs.items():
        problem = ray.get(ref)
        if problem:
            path, reason = problem
            raise MlipdivError(
                f"{path}: {reason} on Ray node {node['NodeID'][:12]} "
                f"({node.get('NodeManagerHostname', '?')}); the store and the study directory "
                "must be on a filesystem every node sees at the same path")


def _paths_problem(paths: list[tuple[str, bool]]) -> tuple[str, str] | None:
    for path, written in paths:
        if not os.path.exists(path):
            return path, "not found"
        if not os.access(path, os.R_OK):
            return path, "not readable"
        if written and not os.access(path, os.W_OK | os.X_OK):
            return path, "not writable"
    return None


def _ray_task(function: Callable, threads: int, *args):
    import ray  # already loaded in a Ray worker

    global _placement
    context = ray.get_runtime_context()
    _placement = Placement(f"{socket.gethostname()} (ray node {context.get_node_id()[:12]})",
                           tuple(str(gpu) for gpu in ray.get_gpu_ids()), "ray")
    limit_threads(threads, torch=True)
    return function(*args)
