"""mlipdiv's processes keep freed memory for the next batch (`mlipdiv.allocator`): a 16 MiB
block comes from the heap, not from its own mmap, and stays there once freed, where glibc's
defaults map it afresh and give it back (read from glibc's own `mallinfo2`)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")

PROBE = """
import ctypes, json
import numpy as np
from mlipdiv.allocator import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
kept = keep_freed_memory()
block = np.ones(2 * 1024**2)  # 16 MiB
held = libc.mallinfo2()
del block
freed = libc.mallinfo2()
print(json.dumps({"kept": kept, "mapped_while_held": held.hblkhd,
                  "free_in_heap_after": freed.fordblks}))
"""
MIB16 = 16 * 1024**2


def probe(**env: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          env={**os.environ, **env}, check=True)
    return json.loads(done.stdout)


def test_freed_memory_stays_in_the_heap_for_the_next_batch():
    if not hasattr(__import__("ctypes").CDLL("libc.so.6"), "mallinfo2"):
        pytest.skip("glibc before 2.33 has no mallinfo2")
    ours, default = probe(), probe(MLIPDIV_MALLOC="default")
    assert ours["kept"] and not default["kept"]
    assert default["mapped_while_held"] >= MIB16  # glibc: a block of its own, unmapped on free
    assert ours["mapped_while_held"] < MIB16 <= ours["free_in_heap_after"]
    assert default["free_in_heap_after"] < MIB16
