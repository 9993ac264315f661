"""Atomic file output: readers see the old file or the whole new one, never a half-written one."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix, so writers that look at the extension
    still work); it replaces `path` when the block succeeds and is removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb") as handle:  # on disk before the rename, so a crash keeps either
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
