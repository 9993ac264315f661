"""Thread limits for worker processes: parallelism comes from processes, so each process keeps
to a fixed number of BLAS/OpenMP (and torch) threads and two levels never oversubscribe."""

from __future__ import annotations

import os

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def limit_threads(threads: int, torch: bool = False) -> None:
    """Pin this process (and the processes it starts) to `threads` threads per library."""
    from threadpoolctl import threadpool_limits

    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(threads)
    threadpool_limits(threads)
    if torch:
        import torch as torch_module

        torch_module.set_num_threads(threads)
