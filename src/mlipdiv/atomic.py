"""Atomic output: readers see the old file (or directory) or the whole new one, never a
half-written one, and a failed or interrupted write leaves no temporary file behind.

This is the one place that writes outputs atomically: a temporary name per process beside the
target (so two processes never share one), fsync before the rename (so a crash keeps either
version), and for directories a swap in one step where the kernel allows it (so there is no
moment without a target).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from mlipdiv.errors import MlipdivError

# errno values that mean "the disk (or the quota, or a file-size limit) is full"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def temporary_sibling(path: str | os.PathLike, suffix: str | None = None) -> Path:
    """A hidden per-process temporary name beside `path`, keeping its suffix (writers that
    look at the extension still work)."""
    path = Path(path)
    suffix = path.suffix if suffix is None else suffix
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return path.with_name(f".{stem}.tmp-{os.getpid()}{suffix}")


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings of `path` (`temporary_sibling` names, and the `.old`
    directories `replace_directory` moves aside) left by processes that no longer run (a
    kill -9, a power cut); returns what was removed. A live process's are kept."""
    path = Path(path)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    pattern = rf"\.{re.escape(stem)}\.tmp-(\d+)({re.escape(path.suffix)}|\.old)?"
    return _remove_stale(path.parent, pattern)


def remove_stale_temporaries_in(folder: str | os.PathLike) -> list[Path]:
    """`remove_stale_temporaries` for every target in `folder` at once: one listing, where a
    writer of many files there (checkpoints) would list the folder once per file."""
    return _remove_stale(Path(folder), r"\..+\.tmp-(\d+)(\.[^.]*|\.old)?")


def prepare_folder(folder: str | os.PathLike) -> None:
    """Make `folder` ready for many `atomic_path(..., prepared=True)` writes (checkpoints): it
    exists and holds a new file (else one line naming it), and the temporaries of dead
    writers are gone. Once for the folder, where each write would probe and list it again."""
    folder = Path(folder)
    check_writable(folder / "probe")
    remove_stale_temporaries_in(folder)


def _remove_stale(folder: Path, pattern: str) -> list[Path]:
    """Remove the entries of `folder` whose names match `pattern` (group 1: the writer's
    process id) and whose writer no longer runs."""
    matcher = re.compile(pattern)
    removed = []
    try:
        siblings = list(folder.iterdir())
    except OSError:  # no folder yet, or not readable: nothing of ours there
        return removed
    for sibling in siblings:
        match = matcher.fullmatch(sibling.name)
        if match is None or _alive(int(match.group(1))):
            continue
        if sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            sibling.unlink(missing_ok=True)
        removed.append(sibling)
    return removed


def _alive(pid: int) -> bool:
    """Whether a process `pid` runs on this machine (ours or another user's)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except PermissionError:  # another user's process
        return True
    except (ProcessLookupError, OverflowError, ValueError):  # gone, or not a process id
        return False
    return True


def check_writable(path: str | os.PathLike) -> None:
    """One line naming `path` unless a file can be written there: it is not a directory, and
    its folder can be made and holds a new file (probed with a temporary sibling). Read-only
    places, `/proc`, a file where a folder must be end here, before any work."""
    path = Path(path)
    if path.is_dir():
        raise MlipdivError(f"{path}: is a directory; name a file to write")
    folder = next((p for p in path.parents if p.exists()), None)
    if folder is not None and not folder.is_dir():
        raise MlipdivError(f"{path}: cannot write there ({folder} is a file, not a folder)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = temporary_sibling(path)
        probe.touch()
        probe.unlink()
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise
        reason = exc.strerror or type(exc).__name__
        raise MlipdivError(f"{path}: cannot write there ({reason}); choose another place"
                           ) from None


@contextmanager
def atomic_path(path: str | os.PathLike, prepared: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` when the block succeeds and is
    removed when it fails. A full disk, a read-only place or a directory at `path` end in one
    line naming `path`. Temporaries of `path` left by dead processes are removed first, unless
    the caller `prepared` the folder (`prepare_folder`: checked and cleaned once for many
    files, so a checkpoint costs one file's writes, not three more probes of the folder)."""
    path = Path(path)
    if not prepared:
        with disk_full_is_an_error(path):
            check_writable(path)
        remove_stale_temporaries(path)
    tmp = temporary_sibling(path)
    try:
        with disk_full_is_an_error(path):
            yield tmp
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory beside `path`; when the block succeeds its files are
    synced and it takes the place of `path`; when it fails it is removed and `path` is kept."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = temporary_sibling(path, suffix="")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with disk_full_is_an_error(path):
            yield tmp
            for item in tmp.rglob("*"):
                if item.is_file():
                    with open(item, "rb") as handle:
                        os.fsync(handle.fileno())
            replace_directory(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_directory(new: Path, target: Path) -> None:
    """Move directory `new` to `target`. An existing target is swapped with `new` in one step
    (Linux renameat2 RENAME_EXCHANGE) and the old one, now at `new`, is left for the caller to
    remove; where the swap is not available it is moved aside first."""
    if not target.exists():
        os.replace(new, target)
        return
    if target.is_dir() and _exchange(new, target):
        return
    aside = temporary_sibling(target, suffix=".old")
    os.replace(target, aside)
    os.replace(new, target)
    shutil.rmtree(aside, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not Linux, or a C library without renameat2
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


@contextmanager
def disk_full_is_an_error(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk (ENOSPC, quota, file-size limit) inside the block into one line
    naming `path`; other errors pass unchanged."""
    try:
        yield
    except OSError as exc:
        if exc.errno in DISK_FULL or "No space left" in str(exc) or "File too large" in str(exc):
            reason = os.strerror(exc.errno or errno.ENOSPC)
            raise MlipdivError(f"{path}: disk full while writing ({reason}); partial output "
                               "removed, free space and rerun (finished steps are kept)") from None
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write a binary file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, data, indent: int | None = 1) -> None:
    """Write JSON atomically; values and keys (tuples) that JSON cannot hold become text."""
    write_text_atomic(path, json.dumps(_string_keys(data), indent=indent, default=str))


def write_extxyz_atomic(path: str | os.PathLike, frames: Sequence) -> None:
    """Write `ase.Atoms` frames to extended XYZ atomically."""
    from ase.io import write

    with atomic_path(path) as tmp:
        write(tmp, list(frames), format="extxyz")


def _string_keys(data):
    if isinstance(data, dict):
        return {k if isinstance(k, str | int | float | bool) else str(k): _string_keys(v)
                for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_string_keys(v) for v in data]
    return data
