"""Executors run cell tasks: a local process pool (default) or Ray tasks (a local instance or a
cluster). Each task writes its own result file into the shared study directory, so the
executor only reports completions; a failed cell is reported, never fatal to the others."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

from mlipdiv.errors import FieldError, first_line
from mlipdiv.threads import limit_threads, thread_limit
from mlipdiv.workers import init_worker


@dataclass(frozen=True)
class Completion:
    """One finished task: its key, what the task returned, or the one-line error."""

    key: str
    value: object = None
    error: str | None = None


def plan_parallelism(n_tasks: int, workers: int = 0, threads: int = 0,
                     cores: int | None = None) -> tuple[int, int]:
    """(worker processes, threads per worker) so that workers × threads <= cores."""
    cores = cores or os.cpu_count() or 1
    workers = max(1, min(workers or cores, n_tasks or 1))
    threads = threads or max(1, cores // workers)
    return workers, threads


def run_local(function: Callable, tasks: Sequence[tuple[str, tuple]], workers: int,
              threads: int) -> Iterator[Completion]:
    """Run `function(*args)` for each (key, args) in a spawn-context process pool."""
    if workers == 1:  # in the caller's process: its thread settings come back afterwards
        for key, args in tasks:
            try:
                with thread_limit(threads, torch=True):
                    result = function(*args)
            except Exception as exc:  # noqa: BLE001 - reported per cell, the others go on
                yield Completion(key, error=first_line(exc, with_type=True))
            else:
                yield Completion(key, result)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker,
                             initargs=(threads, os.getpid(), True)) as pool:
        futures = {pool.submit(function, *args): key for key, args in tasks}
        for future in as_completed(futures):
            try:
                yield Completion(futures[future], future.result())
            except Exception as exc:  # noqa: BLE001 - reported per cell, the others go on
                yield Completion(futures[future], error=first_line(exc, with_type=True))


def run_ray(function: Callable, tasks: Sequence[tuple[str, tuple]], workers: int,
            threads: int, address: str | None, max_retries: int) -> Iterator[Completion]:
    """Each task a Ray task (retried `max_retries` times when its worker dies). Without an
    address a local Ray instance with `workers × threads` CPUs is started and stopped."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        try:
            if address:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(num_cpus=workers * threads, include_dashboard=False,
                         log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = address or "a local instance"
            # `executor` (the config key is executor.kind) renders as the flag --executor
            raise FieldError("executor", "ray", f"cannot start or reach Ray at {where} "
                             f"({first_line(exc, with_type=True)})") from None
    remote = ray.remote(num_cpus=threads, max_retries=max_retries)(_ray_task)
    try:
        pending = {remote.remote(function, threads, *args): key for key, args in tasks}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                key = pending.pop(ref)
                try:
                    yield Completion(key, ray.get(ref))
                except Exception as exc:  # noqa: BLE001 - reported per cell, the others go on
                    cause = getattr(exc, "cause", None) or exc
                    yield Completion(key, error=first_line(cause, with_type=True))
    finally:
        if started_here:
            ray.shutdown()


def _ray_task(function: Callable, threads: int, *args):
    limit_threads(threads, torch=True)
    return function(*args)
