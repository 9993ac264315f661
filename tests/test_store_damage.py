"""Damaged stores (bytes overwritten after writing: a copy cut short, a failed disk): every
command that opens one says in one line which store, molecule and dataset cannot be read and
what to do (exit 2); `info --check` lists every damaged molecule; `--skip-damaged` leaves them
out, named. The damage is real: bytes of a real store overwritten where HDF5 keeps a
molecule's object header, a dataset's data, or anywhere in the middle of the file."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import h5py
import pytest
from conftest import labelled_record

from mlipdiv.data import ConformerStore, write_store
from mlipdiv.data.store import DamagedStoreError

SMILES = ("CCO", "CC(=O)N", "c1ccccc1O", "CCCN", "CCOC", "CC(C)O")
LOCATIONS = ("header", "data", "middle")


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from mlipdiv.cli import main

    monkeypatch.setattr(sys, "argv", ["mlipdiv", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def good_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("damage") / "good.h5"
    write_store(path, [labelled_record(s, 4, seed=i) for i, s in enumerate(SMILES)], "GFN2-xTB")
    return path


def damage(good: Path, out: Path, where: str) -> str | None:
    """Copy `good` to `out` and overwrite bytes: a molecule's object header ("header"), the
    first chunk of its positions ("data") or 4 KiB in the middle of the file ("middle").
    Returns the molecule hit (None: not known in advance)."""
    shutil.copy(good, out)
    with h5py.File(good) as f:
        key = sorted(f)[len(f) // 2]
        if where == "header":
            offset, size = h5py.h5o.get_info(f[key].id).addr, 64
        elif where == "data":
            offset, size = f[key]["positions"].id.get_chunk_info(0).byte_offset, 64
        else:
            offset, size, key = good.stat().st_size // 2 - 2048, 4096, None
    with open(out, "r+b") as handle:
        handle.seek(offset)
        handle.write(bytes((i * 37 + 11) % 256 for i in range(size)))
    return key


@pytest.fixture(scope="module", params=LOCATIONS)
def damaged(request, good_store) -> tuple[Path, str | None]:
    out = good_store.with_name(f"damaged-{request.param}.h5")
    return out, damage(good_store, out, request.param)


def _one_damage_line(code: int, err: str, path: Path, key: str | None) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"{path}: damaged store: cannot read molecule " in lines[0], lines[0]
    assert "--check" in lines[0] and "restore it" in lines[0]
    if key is not None:
        assert key in lines[0]


def test_check_lists_the_damaged_molecule(damaged, good_store, monkeypatch, capsys):
    path, key = damaged
    code, out, _ = run_cli(monkeypatch, capsys, "info", path, "--check", "--json")
    report = json.loads(out)
    assert code == 1 and len(report["damaged"]) == 1, report
    assert key is None or list(report["damaged"]) == [key]
    code, out, _ = run_cli(monkeypatch, capsys, "info", good_store, "--check")
    assert code == 0 and "6 molecules read, 0 damaged" in out


@pytest.mark.parametrize("command", [["info"], ["profile", "--no-entropy"],
                                     ["label", "--out", "{tmp}/labelled.h5"]])
def test_streaming_commands_stop_in_one_line(damaged, command, tmp_path, monkeypatch, capsys):
    path, key = damaged
    args = [a.format(tmp=tmp_path) for a in command]
    code, _, err = run_cli(monkeypatch, capsys, args[0], path, *args[1:])
    _one_damage_line(code, err, path, key)
    assert list(tmp_path.iterdir()) == [] or all(p.suffix == ".lock"
                                                 for p in tmp_path.iterdir())


def test_train_on_a_damaged_store_stops_in_one_line(damaged, good_store, tmp_path,
                                                    monkeypatch, capsys):
    path, key = damaged
    code, _, err = run_cli(monkeypatch, capsys, "train", "--out", tmp_path / "run", "--model",
                           "ani", "--size", "dev", "--train", path, "--valid", good_store)
    _one_damage_line(code, err, path, key)


def test_split_of_a_damaged_molecule_table_stops_in_one_line(good_store, tmp_path,
                                                             monkeypatch, capsys):
    """split reads the molecule table (group headers): a damaged header stops it."""
    path = tmp_path / "damaged.h5"
    key = damage(good_store, path, "header")
    code, _, err = run_cli(monkeypatch, capsys, "split", path, "--out", tmp_path / "splits",
                           "--cf", "0", "--st", "1", "--sf", "0")
    _one_damage_line(code, err, path, key)
    assert not (tmp_path / "splits").exists()


def test_skip_damaged_names_what_it_left_out(damaged, tmp_path, monkeypatch, capsys):
    path, key = damaged
    code, out, err = run_cli(monkeypatch, capsys, "profile", path, "--no-entropy", "--json",
                             "--skip-damaged")
    summary = json.loads(out)
    assert code == 0 and summary["n_molecules"] == 5, err
    assert len(summary["damaged_molecules"]) == 1
    code, out, err = run_cli(monkeypatch, capsys, "split", path, "--out", tmp_path / "splits",
                             "--cf", "0", "--st", "1", "--sf", "0", "--skip-damaged", "--json")
    manifest = json.loads(out)
    assert code == 0 and "damaged molecule(s)" in err, err
    assert manifest["store"]["damaged_molecules"] == list(summary["damaged_molecules"])
    assert sum(c["molecules"] for c in manifest["counts"].values()) == 5
    from mlipdiv.design.splits import load_splits
    load_splits(tmp_path / "splits")  # the checksum leaves the damaged molecule out
    code, out, err = run_cli(monkeypatch, capsys, "label", path, "--out", tmp_path / "l.h5",
                             "--skip-damaged", "--json")
    labelled = json.loads(out)
    assert code == 0 and labelled["n_molecules"] == 5, err
    assert [r for r in labelled["skipped"] if "damaged in" in r] == [
        f"damaged in {path} ({k})" for k in summary["damaged_molecules"]]
    if key is not None:
        assert list(summary["damaged_molecules"]) == [key]


def test_damaged_root_and_library_errors(good_store, tmp_path):
    path = tmp_path / "root.h5"
    shutil.copy(good_store, path)
    with open(path, "r+b") as handle:
        handle.seek(800)
        handle.write(b"\xff" * 4096)
    with pytest.raises(Exception) as info:
        ConformerStore(path)
    assert "restore it" in str(info.value) and str(path) in str(info.value)
    data = tmp_path / "data.h5"
    key = damage(good_store, data, "data")
    with ConformerStore(data) as store, pytest.raises(DamagedStoreError) as info:
        store.molecule(key)
    assert info.value.inchikey == key and "positions" in info.value.part
    import pickle
    copy = pickle.loads(pickle.dumps(info.value))  # crosses worker-process boundaries
    assert str(copy) == str(info.value) and copy.inchikey == key


def test_a_check_shared_with_workers_finds_what_one_process_finds(damaged):
    """`label` checks its input in the worker pool: the same damage, in the same one-line
    errors, and the same checksum (so a rerun resumes the same checkpoints)."""
    import functools

    from mlipdiv.data.generate import WorkerPool, _survey
    from mlipdiv.data.store import checksum_of

    path, _ = damaged
    with ConformerStore(path, skip_damaged=True) as store:
        errors, checksum = {k: str(e) for k, e in store._damage_errors.items()}, store.checksum()
    with ConformerStore(path) as store:
        keys = store.inchikeys
    with WorkerPool(2) as pool:
        executor, submitted = pool.executor(), []  # started: the workers take chunks at once
        submit = executor.submit
        executor.submit = lambda *args: submitted.append(args) or submit(*args)
        surveyed = pool.map_shared(functools.partial(_survey, str(path)), keys * 8)
    assert len(submitted) >= 2 and [entry.key for entry in surveyed] == keys * 8
    found = {entry.key: str(entry.damage) for entry in surveyed if entry.damage is not None}
    assert found == errors and len(errors) == 1
    assert checksum_of(e.checksum_piece for e in surveyed[:len(keys)]
                       if e.damage is None) == checksum
