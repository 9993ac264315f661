"""Choosing a reader: `detect_format` probes a path (suffix, first bytes and lines, an HDF5
file's first group, a directory's or tarball's first .xyz file) and asks every registered format
in registration order; `open_format` opens the reader named or detected."""

from __future__ import annotations

import tarfile
from pathlib import Path

import h5py

from mlipdiv.data.formats.base import (
    AUTO,
    REGISTERED,
    TAR_SUFFIXES,
    DatasetFormat,
    Probe,
    format_names,
)
from mlipdiv.data.formats.hdf5 import open_hdf5
from mlipdiv.errors import FieldError, MlipdivError, first_line

TEXT_PROBE_BYTES = 4096


def _container_probe(path: Path, kind: str) -> Probe:
    """Probe of a directory or tarball: the text of its first .xyz file."""
    text = ""
    if kind == "directory":
        first = next(iter(sorted(path.glob("*.xyz"))), None)
        if first is not None:
            with first.open("rb") as handle:
                text = handle.read(TEXT_PROBE_BYTES).decode(errors="replace")
    else:
        try:
            with tarfile.open(path) as tar:
                for member in tar:
                    if member.isfile() and member.name.endswith(".xyz"):
                        text = tar.extractfile(member).read(TEXT_PROBE_BYTES).decode(
                            errors="replace")
                        break
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise MlipdivError(f"{path}: unreadable tarball ({first_line(exc)})") from None
    return Probe(path, path.suffix.lower(), b"", text=text, container=kind)


def detect_format(path: str | Path) -> str:
    """The first registered format (definition order) that recognises the path by its
    suffix, its first bytes or lines, for HDF5 its first group's keys, and for a directory or
    tarball its first .xyz file."""
    path = Path(path)
    if path.is_dir():
        probe = _container_probe(path, "directory")
    elif not path.is_file():
        raise MlipdivError(f"{path}: no such file")
    else:
        suffix = path.suffix.lower()
        with path.open("rb") as handle:
            head = handle.read(TEXT_PROBE_BYTES)
        if suffix in TAR_SUFFIXES and tarfile.is_tarfile(path):
            probe = _container_probe(path, "tarball")
        else:
            probe = Probe(path, suffix, head[:16], text=head.decode(errors="replace"))
    found = next((name for name, cls in REGISTERED.items() if cls.recognises(probe)), None)
    if found:
        return found
    if probe.container or (not h5py.is_hdf5(path) and probe.suffix not in (".h5", ".hdf5")):
        raise MlipdivError(f"{path}: cannot detect the format (not one of "
                           f"{', '.join(REGISTERED)}); pass --format")
    with open_hdf5(path) as file:
        first = next(iter(file.values()), None)
        group = first if isinstance(first, h5py.Group) else None
        probe = Probe(path, probe.suffix, probe.header,
                      frozenset(group.keys()) if group else frozenset(), group)
        found = next((name for name, cls in REGISTERED.items() if cls.recognises(probe)), None)
    if found:
        return found
    raise MlipdivError(f"{path}: HDF5 layout not recognised as any of "
                       f"{', '.join(REGISTERED)}; pass --format")


def open_format(path: str | Path, format: str = "auto", energy_key: str | None = None,
                forces_key: str | None = None, energy_unit: str | None = None,
                length_unit: str | None = None,
                forces_unit: str | None = None, skip_bad_frames: bool = False) -> DatasetFormat:
    """A reader for `path` (`format` one of `format_names()`; 'auto' detects it); the unit
    flags apply to formats whose layout does not fix the units; `skip_bad_frames` skips (and
    counts) the frames no molecule can have instead of refusing the file."""
    if format != AUTO and format not in REGISTERED:
        raise FieldError("format", None, f"unknown format '{format}' (choose from "
                         f"{', '.join(format_names())})")
    name = detect_format(path) if format == AUTO else format
    reader = REGISTERED[name](path, energy_key, forces_key, energy_unit=energy_unit,
                              length_unit=length_unit, forces_unit=forces_unit)
    reader.skip_bad_frames = skip_bad_frames
    return reader
