"""Reading mlipdiv's own intermediate files (JSON, parquet, npz, faiss, checkpoints).

Something outside mlipdiv can damage them (a full disk in another program, a copy cut short,
an edit by hand). `reading()` turns whatever a damaged file raises into one line naming the
file, what it is and what to do, instead of a traceback from json, pyarrow or numpy.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlipdiv.errors import MlipdivError, first_line

# what reading a damaged file raises, by library: json / text (ValueError, UnicodeDecodeError),
# pyarrow (ArrowException is an OSError or ValueError), numpy npz (BadZipFile, EOFError),
# faiss (RuntimeError), pydantic (ValidationError is a ValueError), wrong shapes (KeyError,
# TypeError, IndexError)
DAMAGE = (ValueError, OSError, KeyError, TypeError, IndexError, EOFError, RuntimeError,
          zipfile.BadZipFile)


@contextmanager
def reading(path: str | os.PathLike, what: str, remedy: str) -> Iterator[None]:
    """Inside the block, a failure to read `path` becomes
    "PATH: damaged WHAT (reason); REMEDY". A missing file says "missing" instead."""
    try:
        yield
    except MlipdivError:
        raise
    except FileNotFoundError:
        raise MlipdivError(f"{path}: missing {what}; {remedy}") from None
    except DAMAGE as exc:
        raise MlipdivError(f"{path}: damaged {what} ({first_line(exc, with_type=True)}); "
                           f"{remedy}") from None


def read_json(path: str | os.PathLike, what: str, remedy: str, kind: type = dict):
    """A JSON file that must hold a `kind` (an object unless told otherwise)."""
    with reading(path, what, remedy):
        data = json.loads(Path(path).read_text())
        if not isinstance(data, kind):
            raise ValueError(f"holds a {type(data).__name__}, not a {kind.__name__}")
        return data


def read_parquet(path: str | os.PathLike, what: str, remedy: str, columns=None):
    """A parquet table as a pandas DataFrame."""
    import pandas as pd

    with reading(path, what, remedy):
        return pd.read_parquet(path, columns=columns)
