"""Inputs an adversarial user tries (issue 20): each ends in one line naming the file, frame or
option and exits 2 at once, or is skipped and counted where the user asks for that; nothing
is left behind."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from ase.io import write
from conftest import labelled_record

from mlipdiv.data import ConformerStore
from mlipdiv.data.units import (
    HARTREE_TO_EV,
    MIN_ATOM_DISTANCE,
    closest_distances,
    frame_problems,
)


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    from mlipdiv.cli import main

    monkeypatch.setattr(sys, "argv", ["mlipdiv", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def one_line(code: int, err: str, *fragments: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def ethanol():
    return labelled_record("CCO", 4)


# ---------------------------------------------------------------- bounded parsing
HUGE = "99999999999"
HUGE_FILES = {
    "extxyz": ("huge.extxyz", f"{HUGE}\nProperties=species:S:1:pos:R:3 energy=-1.0\n"
               "C 0 0 0\nH 0 0 1.1\n"),
    "xyz": ("huge.xyz", f"{HUGE}\nplain\nC 0 0 0\nH 0 0 1.1\n"),
    "md17xyz": ("huge.xyz", f"{HUGE}\n-100.0\nC 0 0 0 0 0 0\nH 0 0 1.1 0 0 0\n"),
    "qm9": ("huge.xyz", f"{HUGE}\ngdb 1 {' '.join(['1.0'] * 11)} -40.4 1 1 1\n"
            "C 0 0 0 0\nH 0 0 1.1 0\n"),
}


@pytest.mark.parametrize("fmt", sorted(HUGE_FILES))
def test_a_huge_atom_count_is_refused_at_once(fmt, tmp_path, monkeypatch, capsys):
    name, text = HUGE_FILES[fmt]
    path = tmp_path / name
    path.write_text(text)
    start = time.perf_counter()
    code, _, err = run_cli(monkeypatch, capsys, "import", path, "--format", fmt, "--out",
                           tmp_path / "out.h5")
    assert time.perf_counter() - start < 2.0
    one_line(code, err, str(path))
    assert HUGE in err
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize("label", ["energy=abc", "energy=-40.0 forces=abc"])
def test_a_label_that_is_not_a_number_names_file_and_frame(label, tmp_path, monkeypatch,
                                                           capsys):
    path = tmp_path / "bad.extxyz"
    path.write_text(f"2\nProperties=species:S:1:pos:R:3 {label}\nC 0 0 0\nH 0 0 1.1\n")
    code, _, err = run_cli(monkeypatch, capsys, "import", path, "--out", tmp_path / "o.h5")
    one_line(code, err, str(path), "bad.extxyz:0", "is not a number ('abc')")


# ---------------------------------------------------------------- per-frame checks
def test_frame_problems_finds_each_kind():
    numbers = np.array([6, 1, 1, 1, 1])
    positions = np.array([[[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63],
                           [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]]], dtype=float)
    methane = positions.repeat(4, axis=0)
    methane[1, 2] = methane[1, 1] + [0.1, 0, 0]  # two hydrogens 0.1 A apart
    energy = np.array([-1100.0, -1100.0, 575.0, -30.0])  # eV: total, total, +575, atomization
    assert closest_distances(methane)[1] == pytest.approx(0.1)
    problems = frame_problems(numbers, methane, energy, total_energy=True)
    assert sorted(problems) == [1, 2, 3]
    assert problems[1][0] == f"atoms closer than {MIN_ATOM_DISTANCE:g} A"
    assert problems[2][0] == "positive energy"
    assert problems[3][0] == "total energy not near the free-atom sum"
    assert sorted(frame_problems(numbers, methane, energy, total_energy=False)) == [1, 2]


def _frames(record, edit):
    frames = record.to_atoms()
    edit(frames)
    return frames


def _same_position(frames, which=(2,)):
    for i in which:
        positions = frames[i].positions.copy()
        positions[1] = positions[0]
        frames[i].positions = positions


def _positive_energy(frames):
    from ase.calculators.singlepoint import SinglePointCalculator

    forces = frames[1].get_forces()
    frames[1].calc = SinglePointCalculator(frames[1], energy=575.0, forces=forces)


@pytest.mark.parametrize("edit,reason", [
    (_same_position, f"atoms closer than {MIN_ATOM_DISTANCE:g} A"),
    (_positive_energy, "positive energy"),
])
def test_a_bad_frame_is_refused_or_skipped_and_counted(ethanol, edit, reason, tmp_path,
                                                       monkeypatch, capsys):
    path = tmp_path / "frames.extxyz"
    write(path, _frames(ethanol, edit))
    out = tmp_path / "out.h5"
    code, _, err = run_cli(monkeypatch, capsys, "import", path, "--out", out)
    one_line(code, err, str(path), "frames.extxyz:", "--skip-bad-frames")
    assert not out.exists()
    code, summary, err = run_cli(monkeypatch, capsys, "import", path, "--out", out,
                                 "--skip-bad-frames", "--json")
    assert code == 0, err
    import json
    summary = json.loads(summary)
    assert summary["skipped"] == {reason: 1} and summary["n_conformers"] == 3


def test_atoms_on_top_of_each_other_in_every_frame_import_nothing(ethanol, tmp_path,
                                                                   monkeypatch, capsys):
    path = tmp_path / "frames.extxyz"
    write(path, _frames(ethanol, lambda f: _same_position(f, range(4))))
    code, _, err = run_cli(monkeypatch, capsys, "import", path, "--out", tmp_path / "o.h5")
    one_line(code, err, "frames.extxyz:0", "0 A apart")
    code, _, err = run_cli(monkeypatch, capsys, "import", path, "--out", tmp_path / "o.h5",
                           "--skip-bad-frames")
    one_line(code, err, "nothing to import", "atoms closer than 0.3 A: 4")


def _spice(path: Path, record, energy_hartree: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        g = f.create_group("ethanol")
        g["atomic_numbers"] = record.atomic_numbers.astype(np.int16)
        g["conformations"] = (record.positions / 0.529177210903).astype(np.float32)
        g["dft_total_energy"] = energy_hartree
        g["dft_total_gradient"] = np.zeros_like(record.positions, dtype=np.float32)
        g["smiles"] = np.array([b"CCO"])


@pytest.mark.parametrize("shift,what", [(0.0, None), (+575.0, "positive"),
                                        ("atomization", "total energy")])
def test_total_energies_of_a_total_layout_are_checked(ethanol, shift, what, tmp_path,
                                                      monkeypatch, capsys):
    """SPICE's layout says its energies are total: +575 eV or an atomization energy
    (-30 eV for ethanol) in it is refused; real (here GFN2-xTB) totals import."""
    energy = ethanol.energy / HARTREE_TO_EV
    if shift == "atomization":
        energy = np.full_like(energy, -30.0 / HARTREE_TO_EV)
    elif shift:
        energy = energy.copy()
        energy[2] = shift / HARTREE_TO_EV
    path = tmp_path / "spice.h5"
    _spice(path, ethanol, energy)
    code, _, err = run_cli(monkeypatch, capsys, "import", path, "--format", "spice", "--out",
                           tmp_path / "o.h5")
    if what is None:
        assert code == 0, err
        with ConformerStore(tmp_path / "o.h5") as store:
            assert store.total_conformers() == 4
    else:
        one_line(code, err, str(path), "group ethanol", what)


def test_real_conformers_pass_the_per_frame_check(ethanol):
    assert frame_problems(ethanol.atomic_numbers, ethanol.positions, ethanol.energy, True) == {}
    assert closest_distances(ethanol.positions).min() > 0.9


# ---------------------------------------------------------------- leftovers of kill -9
MLIPDIV = str(Path(sys.executable).with_name("mlipdiv"))


def test_a_killed_import_leaves_a_temporary_the_next_run_removes(ethanol, tmp_path):
    import os
    import signal
    import subprocess

    frames = []
    rng = np.random.default_rng(0)
    for _ in range(400):  # long enough to be caught while writing
        for atoms in ethanol.to_atoms():
            atoms.positions += rng.normal(0, 0.01, atoms.positions.shape)
            frames.append(atoms)
    source, out = tmp_path / "frames.extxyz", tmp_path / "out" / "store.h5"
    write(source, frames)
    child = subprocess.Popen([MLIPDIV, "import", str(source), "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    temporary = out.with_name(f".store.tmp-{child.pid}.h5")
    deadline = time.time() + 60
    while not temporary.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    if not temporary.exists():
        pytest.skip("the import finished before it could be killed")
    live = out.with_name(f".store.tmp-{os.getpid()}.h5")  # a live writer's: kept
    live.write_bytes(b"in progress")
    done = subprocess.run([MLIPDIV, "import", str(source), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not temporary.exists() and live.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        [live.name, "store.h5", "store.h5.lock"])


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    from mlipdiv.atomic import remove_stale_temporaries, write_text_atomic

    dead = 2 ** 22 + 12345  # beyond pid_max: no such process
    target = tmp_path / "report.html"
    (tmp_path / f".report.tmp-{dead}.html").write_text("partial")
    (tmp_path / f".splits.tmp-{dead}").mkdir()
    (tmp_path / f".splits.tmp-{dead}" / "pool.parquet").write_text("partial")
    (tmp_path / f".other.tmp-{dead}.html").write_text("not ours")
    write_text_atomic(target, "done")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["report.html", f".splits.tmp-{dead}", f".other.tmp-{dead}.html"])
    assert remove_stale_temporaries(tmp_path / "splits") == [tmp_path / f".splits.tmp-{dead}"]


# ---------------------------------------------------------------- outputs that cannot be written
@pytest.mark.parametrize("where", ["/proc/mlipdiv-report.html", "/proc/1/x/report.html",
                                   "{tmp}", "{tmp}/file.txt/report.html"])
def test_report_and_predict_out_to_an_unwritable_place_is_one_line(where, tmp_path,
                                                                   monkeypatch, capsys):
    (tmp_path / "file.txt").write_text("a file, not a folder")
    out = where.format(tmp=tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "report", tmp_path / "no-study", "--out", out)
    one_line(code, err, out)
    code, _, err = run_cli(monkeypatch, capsys, "predict", tmp_path / "no-run",
                           tmp_path / "file.txt", "--out", out)
    one_line(code, err, out)


def test_a_read_only_place_is_one_line(tmp_path, monkeypatch, capsys):
    import subprocess

    from test_faults import _small_filesystem

    disk = tmp_path / "ro"
    if not _small_filesystem(disk, "1m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        out = disk / "sub" / "report.html"
        code, _, err = run_cli(monkeypatch, capsys, "report", tmp_path, "--out", out)
        one_line(code, err, str(out), "Read-only file system")
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_report_on_a_full_disk_leaves_no_figures(finished_study, tmp_path):
    import subprocess

    from test_faults import MLIPDIV as CLI
    from test_faults import _one_line_error, _small_filesystem

    disk = tmp_path / "disk"
    if not _small_filesystem(disk, "200k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        done = subprocess.run([CLI, "report", str(finished_study), "--out",
                               str(disk / "report.html")], capture_output=True, text=True,
                              timeout=300)
        _one_line_error(done, "disk full while writing")
        assert list(disk.iterdir()) == []  # no PNG, no staging folder, no HTML
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# ---------------------------------------------------------------- one line, once, up front
@pytest.fixture(scope="module")
def small_store(ethanol, tmp_path_factory) -> Path:
    from mlipdiv.data import write_store

    path = tmp_path_factory.mktemp("small") / "small.h5"
    write_store(path, [ethanol, labelled_record("CC(=O)N", 4, seed=1),
                       labelled_record("CCCN", 4, seed=2)], "GFN2-xTB")
    return path


@pytest.mark.parametrize("seed", ["-1", str(2 ** 32)])
def test_a_seed_numpy_refuses_is_one_line_everywhere(seed, small_store, tmp_path,
                                                     monkeypatch, capsys):
    commands = [
        ["split", small_store, "--out", tmp_path / "splits"],
        ["generate", "--molecules", "nci", "--n-molecules", "1", "--conformers", "1", "--out",
         tmp_path / "gen.h5"],
        ["profile", small_store, "--no-entropy"],
        ["train", "--out", tmp_path / "run", "--model", "ani", "--size", "dev", "--train",
         small_store, "--valid", small_store],
    ]
    for command in commands:
        code, _, err = run_cli(monkeypatch, capsys, *command, "--seed", seed)
        one_line(code, err, f"--seed {seed}", "0 <= seed < 2**32")
    code, _, _ = run_cli(monkeypatch, capsys, "split", small_store, "--out",
                         tmp_path / "splits", "--cf", "0", "--st", "1", "--sf", "0")
    assert code == 0
    code, _, err = run_cli(monkeypatch, capsys, "design", "fixed-budget", "--splits",
                           tmp_path / "splits", "--out", tmp_path / "d.json", "--budget", "4",
                           "--seed", seed)
    one_line(code, err, f"--seed {seed}")
    from mlipdiv.study import preset_text
    config = tmp_path / "study.toml"
    config.write_text(preset_text("quick").replace("\nseed = 0\n", f"\nseed = {seed}\n", 1))
    code, _, err = run_cli(monkeypatch, capsys, "study", config, "--out", tmp_path / "study")
    one_line(code, err, str(config), "seed")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [
        "splits", "study.toml"]


def test_an_unknown_element_symbol_is_one_line_without_rdkit_noise(tmp_path, monkeypatch,
                                                                   capfd):
    from mlipdiv.cli import main

    monkeypatch.setattr(sys, "argv", ["mlipdiv", "generate", "--molecules", "nci",
                                      "--elements", "C,Xx", "--n-molecules", "1",
                                      "--conformers", "1", "--out", str(tmp_path / "g.h5")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capfd.readouterr().err  # RDKit writes to the C-level stderr
    one_line(exit_info.value.code, err, "--elements", "unknown element symbol 'Xx'")


@pytest.mark.parametrize("level,what", [("nonsense/sto-3g", "unknown functional"),
                                        ("pbe/nonsense", "unknown basis set")])
def test_an_invalid_dft_level_is_refused_once_before_any_work(level, what, small_store,
                                                              tmp_path, monkeypatch, capsys):
    for command in (["label", small_store], ["generate", "--molecules", "nci", "--n-molecules",
                                            "2", "--conformers", "1"]):
        code, _, err = run_cli(monkeypatch, capsys, *command, "--out", tmp_path / "o.h5",
                               "--method", "dft", "--dft-level", level)
        one_line(code, err, f"--dft-level {level}", what)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_an_absent_device_leaves_no_run_directory(small_store, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "train", "--out", tmp_path / "run", "--model",
                           "ani", "--size", "dev", "--train", small_store, "--valid",
                           small_store, "--device", "cuda:7")
    one_line(code, err, "--device cuda:7")
    assert not (tmp_path / "run").exists()


def test_a_crafted_plain_pickle_is_refused_without_a_torch_warning(tmp_path):
    import os
    import pickle
    import warnings

    from mlipdiv.errors import MlipdivError
    from mlipdiv.models.base import read_checkpoint

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"format": "x", "payload": Exploit()}, protocol=4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        with pytest.raises(MlipdivError, match="refused: it holds objects other than weights"):
            read_checkpoint(path)
    assert not marker.exists()


def test_errors_with_arguments_cross_process_boundaries():
    """An error raised in a worker process is pickled back to the parent: one whose
    constructor takes several arguments must come back as itself (a FieldError that did not
    broke the study's process pool: every pending cell failed as BrokenProcessPool)."""
    import pickle

    from mlipdiv.data.store import DamagedStoreError
    from mlipdiv.errors import FieldError
    from mlipdiv.study.config import ConfigKeyError

    for error in (FieldError("init_from", "/runs/start", "knows no B"),
                  ConfigKeyError("models.stream", "default labels only"),
                  DamagedStoreError("store.h5", "molecule X", "truncated", "X")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
    copy = pickle.loads(pickle.dumps(FieldError("size", "huge", "choose dev, fast")))
    assert (copy.field, copy.value, copy.reason) == ("size", "huge", "choose dev, fast")
