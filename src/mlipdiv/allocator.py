"""The C allocator's settings of mlipdiv's own processes (glibc, i.e. Linux).

A model's batch allocates tensors of up to tens of MiB. glibc serves an allocation above its
mmap threshold (128 KiB, rising with use to at most 32 MiB) by a fresh `mmap` and gives it back
to the kernel when it is freed, and trims the heap's free top above 128 KiB: so every batch
faults its pages in again and the kernel zeroes them. Measured on `mlipdiv predict`'s path
(TensorNet fast, 1,366 conformers, one thread): 0.6–1.2 million minor page faults and 1.0–2.1 s
of system time in 8–9 s. With the mmap threshold at its largest dynamic value and a 1 GiB trim
threshold, freed memory stays in the heap for the next batch: 0.11–0.15 million faults and
0.2–0.3 s. This is what PyTorch's CPU performance guide gets by swapping in jemalloc or
tcmalloc, done with glibc's own `mallopt` (nothing to install). The price: a process keeps
freed memory (up to its peak) instead of returning it.

`MLIPDIV_MALLOC=default` leaves glibc's settings as they are (to compare, or to debug)."""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024**2  # glibc's largest dynamic threshold: every version accepts it
TRIM_THRESHOLD = 1024**3
OPT_OUT = "MLIPDIV_MALLOC"


def keep_freed_memory() -> bool:
    """Set this process's glibc to keep freed memory for reuse (see the module); True when
    set, False where it does not apply (not glibc, or `MLIPDIV_MALLOC=default`)."""
    if os.environ.get(OPT_OUT, "").lower() == "default" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                    and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
