"""Atomic writes for the study directory: a temporary file in the same folder, then rename."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Text version of `write_bytes_atomic` (UTF-8)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data) -> None:
    """JSON version of `write_bytes_atomic` (indented, so a person can read it); keys that
    JSON cannot hold (tuples) are written as their text."""
    write_text_atomic(path, json.dumps(_string_keys(data), indent=1, default=str))


def _string_keys(data):
    if isinstance(data, dict):
        return {k if isinstance(k, str | int | float | bool) else str(k): _string_keys(v)
                for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_string_keys(v) for v in data]
    return data
