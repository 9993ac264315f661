"""Fault replay: full disks, interrupted directory writes, non-finite inputs and damaged
internal files end in one line (or a counted skip), never in a traceback, a segmentation fault,
a silent number or a half-written output. Crafted pickles, second writers and kill -9 are
replayed in test_models.py, test_locking.py and test_study.py."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from ase.io import read, write

from mlipdiv.atomic import atomic_directory, write_json_atomic
from mlipdiv.data import ConformerStore, export_extxyz
from mlipdiv.models import read_records

MLIPDIV = str(Path(sys.executable).with_name("mlipdiv"))


def _no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".tmp" in p.name]


def _file_size_limit(n_bytes: int):
    """A child's files cannot grow past `n_bytes` (the kernel's RLIMIT_FSIZE): each write past
    it fails with EFBIG, as on a full disk, without needing a small filesystem."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, n_bytes))
    return apply


def _one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def diverse_xyz(diverse_store, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("xyz") / "diverse.xyz"
    with ConformerStore(diverse_store) as store:
        export_extxyz(store, path)
    return path


def test_store_write_past_a_file_size_limit_is_one_line_and_leaves_nothing(diverse_xyz,
                                                                         tmp_path):
    out = tmp_path / "out.h5"
    done = subprocess.run([MLIPDIV, "import", str(diverse_xyz), "--out", str(out)],
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=_file_size_limit(60_000))
    _one_line_error(done, str(out), "disk full while writing")
    assert not out.exists() and _no_temporaries(tmp_path)


def _small_filesystem(path: Path, size: str) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


IMPORT_WITHOUT_FLOOR = """
import sys
import mlipdiv.locking
from mlipdiv.data.importer import import_dataset
from mlipdiv.errors import MlipdivError
mlipdiv.locking.MIN_FREE_BYTES = 0  # start writing although the disk is nearly full
try:
    import_dataset(sys.argv[1], sys.argv[2])
except MlipdivError as exc:
    print(exc)
"""


def test_import_onto_a_full_filesystem_is_refused_or_stops_cleanly(diverse_xyz, tmp_path):
    """ENOSPC on a real (tmpfs) filesystem. Refused before any work when the free space is
    short; when writing starts anyway and the disk fills, one line and no temporary file
    (with HDF5's own file driver this was a segmentation fault in h5py's close())."""
    disk = tmp_path / "disk"
    if not _small_filesystem(disk, "400k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = disk / "out.h5"
        out.write_bytes(b"previous store")
        done = subprocess.run([MLIPDIV, "import", str(diverse_xyz), "--out", str(out)],
                              capture_output=True, text=True, timeout=300)
        _one_line_error(done, str(out), "MiB free in")
        done = subprocess.run([sys.executable, "-c", IMPORT_WITHOUT_FLOOR, str(diverse_xyz),
                               str(out)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
        assert "disk full while writing (No space left on device)" in done.stdout
        assert out.read_bytes() == b"previous store" and _no_temporaries(disk)
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_directory_output_is_swapped_whole_or_not_at_all(tmp_path):
    target = tmp_path / "splits"
    with atomic_directory(target) as staging:
        (staging / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "a.txt").write_text("half")
        raise RuntimeError("crash mid-write")
    assert (target / "a.txt").read_text() == "first" and _no_temporaries(tmp_path)
    with atomic_directory(target) as staging:
        (staging / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["splits"]


def test_json_write_past_a_file_size_limit_keeps_the_old_file(tmp_path):
    path = tmp_path / "fit.json"
    path.write_text('{"old": true}')
    code = ("import sys\nfrom mlipdiv.atomic import write_json_atomic\n"
            "from mlipdiv.errors import MlipdivError\n"
            "try:\n    write_json_atomic(sys.argv[1], {'x': 'y' * 100000})\n"
            "except MlipdivError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=60, preexec_fn=_file_size_limit(10_000))
    assert "disk full while writing" in done.stdout, done.stderr
    assert path.read_text() == '{"old": true}' and _no_temporaries(tmp_path)
    write_json_atomic(path, {"new": 1})
    assert json.loads(path.read_text()) == {"new": 1}


def _with_a_nan_frame(source: Path, out: Path, what: str) -> int:
    """Copy of `source` with one frame made non-finite; returns the number of frames."""
    frames = read(source, index=":")
    if what == "energy":
        frames[3].calc.results["energy"] = float("nan")
    else:
        frames[3].positions[0, 0] = np.nan
    write(out, frames, format="extxyz")
    return len(frames)


@pytest.mark.parametrize("what", ["energy", "positions"])
def test_non_finite_frames_are_counted_not_dropped_silently(diverse_xyz, tmp_path, what,
                                                            caplog):
    path = tmp_path / "with-nan.xyz"
    n_frames = _with_a_nan_frame(diverse_xyz, path, what)
    skipped = Counter()
    records = read_records(path, skipped)
    assert sum(r.n_conformers for r in records) == n_frames - 1
    assert sum(skipped.values()) == 1 and "non-finite" in next(iter(skipped))
    assert "1 conformers skipped" in caplog.text


def test_train_on_files_records_skipped_conformers(diverse_xyz, tmp_path):
    path = tmp_path / "with-nan.xyz"
    _with_a_nan_frame(diverse_xyz, path, "energy")
    run = tmp_path / "run"
    done = subprocess.run([MLIPDIV, "train", "--model", "ani", "--size", "dev", "--train",
                           str(path), "--valid", str(diverse_xyz), "--steps", "2",
                           "--steps-per-round", "1",
                           "--out", str(run)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 training conformers skipped" in done.stdout + done.stderr
    meta = json.loads((run / "run.json").read_text())["meta"]
    assert sum(meta["skipped_train"].values()) == 1 and meta["skipped_valid"] == {}


def test_nothing_is_left_by_a_failed_split(diverse_store, tmp_path):
    out = tmp_path / "splits"
    done = subprocess.run([MLIPDIV, "split", str(diverse_store), "--out", str(out),
                           "--ood", "elements:Xx"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert not out.exists() and _no_temporaries(tmp_path)
