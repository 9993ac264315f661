"""Advisory locks on outputs: one writer per study directory, store, SPLITS or run directory.

A lock is `fcntl.flock` on a file beside the output (`<output>.lock`) that names its holder
(pid, host, command, start time). A second writer is refused with one line naming the holder.
The kernel drops a flock when its holder dies (kill -9 included), so a lock file left by a
dead process is simply taken over; no stale-lock cleanup is needed. flock is advisory and
local: on a network filesystem without flock support, locks may not exclude writers on other
hosts.
"""

from __future__ import annotations

import fcntl
import functools
import inspect
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mlipdiv.errors import MlipdivError


def lock_path(output: str | os.PathLike) -> Path:
    """The lock file of an output: `<output>.lock` beside it."""
    output = Path(output)
    return output.with_name(f"{output.name}.lock")


@contextmanager
def output_lock(output: str | os.PathLike) -> Iterator[Path]:
    """Hold the advisory lock of `output` for the block; MlipdivError naming the holder when
    another live process holds it. Re-entrant within one process (a study that trains its
    own runs takes each run's lock once more, which nests)."""
    path = lock_path(output)
    if str(path.resolve()) in _HELD:
        yield path
        return
    handle = _open_lock(Path(output), path)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise MlipdivError(f"{output}: in use by {holder}; wait for it to finish or stop "
                               "it (the lock is released when that process ends)") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"mlipdiv pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')} ({' '.join(sys.argv[:3])})\n")
        handle.flush()
        _HELD.add(str(path.resolve()))
        try:
            yield path
        finally:
            _HELD.discard(str(path.resolve()))
    finally:
        handle.close()  # closing drops the flock


_HELD: set[str] = set()


def _open_lock(output: Path, path: Path):
    """The lock file opened for appending; one-line errors for an output that cannot be
    written (its folder is a file, or not writable), before any work is done."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a+")  # noqa: SIM115 - held open for the caller's whole block
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in [path.parent, *path.parent.parents] if p.is_file()),
                       path.parent)
        raise MlipdivError(f"{output}: cannot be written: {blocker} is a file, not a "
                           "folder") from None
    except OSError as exc:
        raise MlipdivError(f"{output}: cannot be written in {path.parent} "
                           f"({exc.strerror})") from None


# free space an output's folder must have before a command starts writing there: a
# conservative floor for the small outputs (splits, designs, runs, reports); a command that
# knows its output size passes `needs` on top
MIN_FREE_BYTES = 32 * 2**20


def check_free_space(output: str | os.PathLike, needed: int = 0) -> None:
    """MlipdivError when the folder of `output` has less than `needed` + MIN_FREE_BYTES
    free: refused before any work rather than failing at the end of it."""
    folder = next((p for p in [Path(output).parent, *Path(output).parent.parents]
                   if p.exists()), Path("."))
    free = shutil.disk_usage(folder).free
    if free < needed + MIN_FREE_BYTES:
        raise MlipdivError(f"{output}: only {free / 2**20:.0f} MiB free in {folder}; about "
                           f"{(needed + MIN_FREE_BYTES) / 2**20:.0f} MiB are needed (free "
                           "space or choose another output)")


def input_size(path: str | os.PathLike) -> int:
    """Bytes of an input file or folder (0 when it does not exist: its reader says so)."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.is_file() else 0


def locks_output(argument: str, target: Callable[[dict], object] | None = None,
                 file: bool = False, needs: Callable[[dict], int] | None = None):
    """Decorator: hold the lock of the output named by the function's `argument` (or
    `target(arguments)`) while it runs. `file`: the output is a file, so an existing folder
    of that name is refused before any work. `needs(arguments)`: bytes the output will take
    (checked against the free space, with MIN_FREE_BYTES on top)."""
    def decorate(function):
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            output = target(bound.arguments) if target else bound.arguments[argument]
            if file and Path(output).is_dir():
                raise MlipdivError(f"{output}: is a folder; give a file name for the output "
                                   "(e.g. data.h5)")
            with output_lock(output):
                check_free_space(output, needs(bound.arguments) if needs else 0)
                return function(*args, **kwargs)
        return wrapper
    return decorate
