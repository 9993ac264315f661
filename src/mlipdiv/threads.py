"""Thread limits: parallelism comes from processes, so each process keeps to a fixed number of
BLAS/OpenMP (and torch) threads and two levels never oversubscribe.

`limit_threads` pins a worker process for its whole life (pool initialisers, Ray tasks: the
process is mlipdiv's own). `thread_limit` does the same for a block of the caller's process and
restores the caller's settings afterwards (a library call must not leave them changed)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def limit_threads(threads: int, torch: bool = False) -> None:
    """Pin this process (and the processes it starts) to `threads` threads per library."""
    from threadpoolctl import threadpool_limits  # only workers need it

    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(threads)
    threadpool_limits(threads)
    if torch:
        import torch as torch_module  # workers of the QM labellers never load torch

        torch_module.set_num_threads(threads)


@contextlib.contextmanager
def thread_limit(threads: int, torch: bool = False) -> Iterator[None]:
    """`limit_threads` for the block only: environment variables, BLAS/OpenMP pools and
    torch's thread count are what they were once the block ends."""
    from threadpoolctl import ThreadpoolController

    environment = {variable: os.environ.get(variable) for variable in THREAD_VARIABLES}
    controller = ThreadpoolController()
    torch_module = None
    if torch:
        import torch as torch_module
    torch_threads = torch_module.get_num_threads() if torch_module else None
    try:
        with controller.limit(limits=threads):
            for variable in THREAD_VARIABLES:
                os.environ[variable] = str(threads)
            if torch_module:
                torch_module.set_num_threads(threads)
            yield
    finally:
        for variable, value in environment.items():
            if value is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = value
        if torch_module:
            torch_module.set_num_threads(torch_threads)
