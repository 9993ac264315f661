"""Worker processes that never outlive the command that started them.

A worker asks the kernel (Linux `prctl(PR_SET_PDEATHSIG, SIGKILL)`) to be killed when its
parent dies, which covers the study's spawn pool at once. A forkserver worker's parent is the
forkserver, which waits for its workers (they hold its "alive" pipe) while they would wait for
it, so every worker also watches the command's own process and exits when it is gone (checked
every WATCH_SECONDS; a command that died before the worker started is caught at once). After
a kill -9 of the command the workers go, then the forkserver and the resource tracker, whose
pipes they held: nothing of mlipdiv keeps running or writing.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from mlipdiv.allocator import keep_freed_memory
from mlipdiv.threads import limit_threads

PR_SET_PDEATHSIG = 1
WATCH_SECONDS = 0.5


def die_with_parent(command_pid: int) -> None:
    """SIGKILL this process when its parent dies (Linux), and exit as soon as the command
    (`command_pid`) is gone."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the watcher below still ends the worker
    if not _alive(command_pid):
        os._exit(1)
    threading.Thread(target=_watch, args=(command_pid,), daemon=True,
                     name="mlipdiv-die-with-parent").start()


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (killed, not yet reaped by its parent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists (another user's process reusing the pid is unlikely)
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:  # no /proc (not Linux): existence is all we know
        return True


def _watch(command_pid: int) -> None:
    while _alive(command_pid):
        time.sleep(WATCH_SECONDS)
    os._exit(1)  # mid-task: whatever it wrote is a checkpoint or a temp file, never a target


def init_worker(threads: int, command_pid: int, torch: bool = False) -> None:
    """Pool initialiser: `threads` threads per library, freed memory kept for reuse
    (`allocator`), and die with the command."""
    die_with_parent(command_pid)
    keep_freed_memory()
    limit_threads(threads, torch=torch)
