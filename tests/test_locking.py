"""One writer per output: a second writer is refused with one line naming the holder, and the
lock of a process killed with -9 is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import STUDY_TOML

from mlipdiv.errors import MlipdivError
from mlipdiv.locking import lock_path, output_lock
from mlipdiv.study import parse_config, run_study

MLIPDIV = str(Path(sys.executable).with_name("mlipdiv"))
HOLD = "import sys, time\nfrom mlipdiv.locking import output_lock\n" \
       "with output_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n"


def _holder(output: Path) -> subprocess.Popen:
    """A separate process holding the lock of `output` until killed."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(output)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_second_writer_is_refused_and_a_dead_holders_lock_is_taken_over(diverse_store,
                                                                         tmp_path):
    study = tmp_path / "study"
    holder = _holder(study)
    try:
        text = STUDY_TOML.format(store=diverse_store)
        with pytest.raises(MlipdivError, match=rf"in use by mlipdiv pid {holder.pid} on "):
            run_study(parse_config(text), text, study, progress=False)
        assert not study.exists()  # refused before any work
        splits = tmp_path / "splits"
        other = _holder(splits)
        done = subprocess.run([MLIPDIV, "split", str(diverse_store), "--out", str(splits)],
                              capture_output=True, text=True, timeout=120)
        other.kill()
        assert done.returncode == 2 and "in use by mlipdiv pid" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert lock_path(study).exists()  # left behind by the killed holder: taken over
    with output_lock(study), output_lock(study):  # re-entrant in one process
        pass


def test_lock_names_its_holder(tmp_path):
    with output_lock(tmp_path / "out") as path:
        text = path.read_text()
        assert f"pid {os.getpid()}" in text and "since" in text


def test_unwritable_outputs_are_refused_before_any_work(tmp_path):
    source = tmp_path / "one.smi"
    source.write_text("CCO\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "a-file").write_text("")
    for out, message in ((tmp_path / "folder", "is a folder; give a file name"),
                         (tmp_path / "a-file" / "x.h5", "a-file is a file, not a folder")):
        done = subprocess.run([MLIPDIV, "generate", "--molecules", str(source),
                               "--n-molecules", "1", "--conformers", "2", "--out", str(out)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert not Path(f"{out}.parts").exists()
        assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
