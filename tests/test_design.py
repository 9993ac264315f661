"""Leak-free splits and the two experiment designs."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from conftest import embed
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from rdkit import Chem
from typer.testing import CliRunner

from mlipdiv import cli
from mlipdiv.cli import app
from mlipdiv.data import ConformerStore, MoleculeRecord, write_store
from mlipdiv.design import (
    DesignOptions,
    SplitOptions,
    farthest_point_order,
    find_leaks,
    inverse_distance_descriptor,
    load_design,
    load_splits,
    make_design,
    make_splits,
    write_design,
)
from mlipdiv.design.splits import write_pairs
from mlipdiv.errors import FieldError, MlipdivError

# stereo pairs share their connectivity block; benzene, pyridine and cyclohexane are shared
SYNTHETIC_SMILES = (
    "C[C@H](N)c1ccccc1", "C[C@@H](N)c1ccccc1", "Cc1ccccc1", "Oc1ccccc1", "CCc1ccccc1",
    "Cc1ccncc1", "OCc1cccnc1", "CCc1ccncc1", "CC1CCCCC1", "OC1CCCCC1",
    "C[C@H](O)CC", "C[C@@H](O)CC", "CCCCO", "CCOCC", "CCCCN", "CC(C)CO",
)


@cache
def geometry(smiles: str) -> tuple[str, str, np.ndarray, np.ndarray]:
    """(inchikey, smiles, atomic numbers, 6 ETKDG conformers) of a SMILES, computed once."""
    numbers, positions = embed(smiles, 6, seed=11)
    mol = Chem.MolFromSmiles(smiles)
    return Chem.MolToInchiKey(mol), Chem.MolToSmiles(mol), numbers, positions


def synthetic_record(smiles: str, n_conf: int, n_duplicates: int,
                     rng: np.random.Generator) -> MoleculeRecord:
    """Unlabelled record; the last `n_duplicates` conformers are near-copies (0.005 Angstrom
    noise) of earlier ones, like consecutive MD snapshots."""
    key, canonical, numbers, positions = geometry(smiles)
    chosen = positions[:n_conf]
    copies = chosen[rng.integers(0, n_conf, n_duplicates)] + rng.normal(
        0, 0.005, (n_duplicates, *chosen.shape[1:]))
    return MoleculeRecord(key, canonical, "", numbers, np.concatenate([chosen, copies]))


def pairs_of(by_molecule) -> set[tuple[str, int]]:
    return {(k, int(i)) for k, v in by_molecule.items() for i in v}


def assert_leak_free(splits) -> None:
    """Independent re-statement of the leak rules on a loaded split."""
    pool = splits.pool_set.by_molecule
    pool_blocks = {k[:14] for k in pool}
    scaffold = dict(zip(splits.molecules["inchikey"], splits.molecules["scaffold"], strict=True))
    for name, test in splits.test_sets.items():
        assert not pairs_of(test.by_molecule) & pairs_of(pool)
        if name in ("st", "sf", "ood"):
            assert not {k[:14] for k in test.by_molecule} & pool_blocks
    if "sf" in splits.sets:
        sf_scaffolds = {scaffold[k] for k in splits.sets["sf"].by_molecule}
        assert "" not in sf_scaffolds
        assert not sf_scaffolds & {scaffold[k] for k in pool}
    if "st" in splits.sets:
        assert {scaffold[k] for k in splits.sets["st"].by_molecule} <= {scaffold[k] for k in pool}


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n_molecules=st.integers(10, 16),
    n_conf=st.integers(3, 6),
    n_duplicates=st.integers(0, 2),
    seed=st.integers(0, 10_000),
    ood=st.sampled_from([None, "size:8", "elements:N", "cluster:3"]),
    planted=st.sampled_from(["connectivity", "overlap", "near_duplicate"]),
)
def test_splits_are_leak_free_and_a_planted_leak_is_caught(
    tmp_path, n_molecules, n_conf, n_duplicates, seed, ood, planted,
):
    rng = np.random.default_rng(seed)
    smiles = [SYNTHETIC_SMILES[i] for i in sorted(rng.choice(16, n_molecules, replace=False))]
    records = [synthetic_record(s, n_conf, n_duplicates, rng) for s in smiles]
    # hypothesis reuses tmp_path across examples: each example gets a folder of its own
    example = Path(tempfile.mkdtemp(dir=tmp_path))
    store = example / "s.h5"
    write_store(store, records, "synthetic")
    out = example / "splits"
    try:
        make_splits(store, out, SplitOptions(cf_molecules=2, cf_conformers=1, st=1, sf=1, ood=ood,
                                             seed=seed))
    except MlipdivError as exc:  # a size the random store cannot supply is refused, not leaked
        # naming the option at fault (as a field the CLI renders as its flag)
        named = (exc.field.startswith("split.") if isinstance(exc, FieldError)
                 else str(exc).startswith(("cf + st + sf", "st/sf/ood", "ood and ood_store")))
        assert named and "leak" not in str(exc) and not out.exists()
        event("refused")
        return
    splits = load_splits(out)
    assert find_leaks(splits) == []
    assert_leak_free(splits)

    pool = splits.pool_set.by_molecule
    cf = splits.sets["cf"].by_molecule
    key = next(iter(cf))
    if planted == "connectivity":
        whole = next(s for n, s in splits.test_sets.items() if n != "cf")
        victim = next(iter(whole.by_molecule))
        pool[victim] = whole.by_molecule[victim][:1]
    elif planted == "overlap":
        pool[key] = np.append(pool[key], cf[key][0])
    else:  # a near-copy of a CF conformer, planted in the store and in the pool
        with ConformerStore(store) as opened:
            record = opened.molecule(key)
        copy = record.subset([int(cf[key][0])])
        copy.positions = copy.positions + 0.01
        write_store(store, [*[r for r in records if r.inchikey != key],
                            MoleculeRecord(key, record.smiles, "", record.atomic_numbers,
                                           np.concatenate([record.positions, copy.positions]))],
                    "synthetic")
        pool[key] = np.append(pool[key], record.n_conformers)
    kinds = {leak.kind for leak in find_leaks(splits)}
    assert planted in kinds


def test_split_sets_partition_the_store_and_reload(diverse_store, tmp_path):
    splits, messages = make_splits(diverse_store, tmp_path / "sp",
                                   SplitOptions(cf_molecules=3, st=2, sf=2, ood="elements:N",
                                                seed=4))
    assert messages == []
    loaded = load_splits(tmp_path / "sp")
    assert set(loaded.test_sets) == {"cf", "st", "sf", "ood"}
    assert loaded.manifest["counts"] == splits.manifest["counts"]
    everything = set()
    for split_set in loaded.sets.values():
        pairs = set(split_set.pairs)
        assert not pairs & everything
        everything |= pairs
    dropped = loaded.manifest["cf_near_duplicates_dropped"]
    assert len(everything) + dropped == 128
    assert all("N" not in e for e in loaded.molecules.set_index("inchikey").loc[
        list(loaded.pool_set.by_molecule), "elements"])
    cf_records = list(loaded.records("cf"))
    assert [r.n_conformers for r in cf_records] == [2, 2, 2]
    assert all(key in loaded.pool_set.by_molecule for key in loaded.sets["cf"].by_molecule)
    with pytest.raises(MlipdivError, match="no set"):
        loaded.records("train")


def test_split_is_deterministic_given_the_seed(diverse_store, tmp_path):
    def pairs(seed, name):
        splits, _ = make_splits(diverse_store, tmp_path / name,
                                SplitOptions(seed=seed, cf_molecules=3))
        return {n: sorted(s.pairs) for n, s in splits.sets.items()}

    assert pairs(7, "a") == pairs(7, "b")
    assert pairs(7, "a") != pairs(8, "c")


def test_a_changed_store_is_refused(diverse_store, tmp_path):
    store = tmp_path / "copy.h5"
    shutil.copy(diverse_store, store)
    make_splits(store, tmp_path / "sp", SplitOptions(seed=1))
    with ConformerStore(store) as opened:
        records = [opened.molecule(k) for k in opened.inchikeys[:-1]]
    write_store(store, records, "GFN2-xTB (tblite)")
    with pytest.raises(MlipdivError, match="changed since the split"):
        load_splits(tmp_path / "sp")


def test_all_acyclic_store_skips_sf_with_a_message(tmp_path):
    rng = np.random.default_rng(0)
    store = tmp_path / "acyclic.h5"
    write_store(store, [synthetic_record(s, 4, 0, rng) for s in
                        ("CCCCO", "CCOCC", "CCCCN", "CC(C)CO", "C[C@H](O)CC")], "synthetic")
    splits, messages = make_splits(store, tmp_path / "sp", SplitOptions(cf_molecules=1, st=1, sf=1))
    assert "sf" not in splits.sets and "SF is skipped" in messages[0]


def test_ood_store_and_size_shift(diverse_store, tmp_path):
    rng = np.random.default_rng(0)
    other = tmp_path / "other.h5"
    write_store(other, [synthetic_record("C[C@H](N)c1ccccc1", 3, 0, rng),
                        synthetic_record("CCc1ccccc1", 3, 0, rng)], "synthetic")
    splits, _ = make_splits(diverse_store, tmp_path / "sp",
                            SplitOptions(cf_molecules=0, st=0, sf=0, ood_store=other))
    loaded = load_splits(tmp_path / "sp")
    assert loaded.sets["ood"].store_path.resolve() == other.resolve()
    assert loaded.manifest["ood_overlap_dropped"] == 1  # ethylbenzene is in the main store
    assert [r.smiles for r in loaded.records("ood")] == ["C[C@H](N)c1ccccc1"]

    splits, _ = make_splits(diverse_store, tmp_path / "size", SplitOptions(ood="size:8"))
    heavy = splits.molecules.set_index("inchikey")["n_heavy_atoms"]
    assert heavy[list(splits.sets["ood"].by_molecule)].min() >= 8
    assert heavy[list(splits.pool_set.by_molecule)].max() < 8


@pytest.mark.parametrize("options, message", [
    (SplitOptions(cf_molecules=0.5, st=0.4, sf=0.3), "sum to 1.2, above the limit 1"),
    (SplitOptions(ood="elements:S"), "split.ood elements:S: selects 0"),
    (SplitOptions(ood="weird"), "split.ood weird"),
    (SplitOptions(st=40), "split.st 40: exceeds"),
    (SplitOptions(cf_molecules=16, cf_conformers=8), "split.cf_molecules 16: only 0"),
])
def test_bad_split_options_are_one_line_errors(diverse_store, tmp_path, options, message):
    with pytest.raises(MlipdivError, match=message.replace("(", r"\(")) as info:
        make_splits(diverse_store, tmp_path / "sp", options)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "sp").exists()


def test_library_names_the_field_and_the_cli_the_flag(diverse_store, tmp_path, monkeypatch,
                                                        capsys):
    with pytest.raises(MlipdivError, match=r"^split\.sf 999: exceeds the store's") as info:
        make_splits(diverse_store, tmp_path / "sp", SplitOptions(sf=999))
    monkeypatch.setattr("sys.argv", ["mlipdiv", "split", str(diverse_store), "--out",
                                     str(tmp_path / "sp"), "--sf", "999"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    flag_form = str(info.value).replace("split.sf", "--sf", 1)
    assert capsys.readouterr().err.strip() == f"mlipdiv: error: {flag_form}"


def test_empty_store_is_refused(tmp_path):
    write_store(tmp_path / "e.h5", [], "none")
    with pytest.raises(MlipdivError, match="no molecules"):
        make_splits(tmp_path / "e.h5", tmp_path / "sp")


@pytest.fixture(scope="module")
def splits_dir(diverse_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("design") / "splits"
    make_splits(diverse_store, out, SplitOptions(cf_molecules=2, st=1, sf=0, seed=2))
    return out


def per_molecule(pairs) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = {}
    for key, index in pairs:
        grouped.setdefault(key, []).append(index)
    return grouped


def test_fixed_budget_cells_hold_exactly_n_and_are_nested(splits_dir):
    design = make_design(splits_dir, DesignOptions(
        "fixed-budget", budget=23, grid=(4, 5, 8, 12), replicates=2, allow_short=True))
    splits = load_splits(splits_dir)
    pool = pairs_of(splits.pool_set.by_molecule)
    for cell in design.cells:
        counts = [len(v) for v in per_molecule(cell.train).values()]
        assert len(cell.train) == cell.n_train == 23 and len(counts) == cell.n_molecules
        c = cell.conformers_per_molecule
        assert set(counts) <= {c, c + 1} and counts.count(c + 1) == cell.remainder
        assert cell.n_molecules * c + cell.remainder == 23
        assert set(cell.train) <= pool and set(cell.valid) <= pool
        assert not set(cell.train) & set(cell.valid)
        assert set(per_molecule(cell.valid)) <= set(per_molecule(cell.train))
        assert len(cell.valid) == round(0.1 * 23)
    for replicate in (0, 1):
        cells = [c for c in design.cells if c.replicate == replicate and not c.short]
        for small, large in zip(cells, cells[1:], strict=False):
            assert set(per_molecule(small.train)) <= set(per_molecule(large.train))
    assert design.cells[0].train != design.cells[4].train  # replicates differ


def test_fixed_molecules_same_molecules_nested_conformers(splits_dir, tmp_path):
    options = DesignOptions("fixed-molecules", molecules=4, grid=(1, 2, 4), validation_fraction=0.2,
                            conformer_selection="farthest", molecule_selection="maxmin", seed=3)
    design = make_design(splits_dir, options)
    first = per_molecule(design.cells[0].train)
    for small, large in zip(design.cells, design.cells[1:], strict=False):
        assert set(per_molecule(large.train)) == set(first)
        assert set(small.train) <= set(large.train)
    assert [c.n_train for c in design.cells] == [4, 8, 16]
    write_design(design, tmp_path / "design.json")
    again = load_design(tmp_path / "design.json")
    assert again == make_design(splits_dir, options)  # deterministic given the seed
    assert again.cell(design.cells[1].id).train == design.cells[1].train
    with pytest.raises(MlipdivError, match="no cell 'x'"):
        again.cell("x")


def test_maxmin_picks_more_diverse_molecules_than_random(splits_dir):
    def mean_distance(selection):
        design = make_design(splits_dir, DesignOptions(
            "fixed-molecules", molecules=4, grid=(1,), replicates=6, validation_fraction=0,
            molecule_selection=selection))
        return np.mean([c.diversity["mean_tanimoto_distance"] for c in design.cells])

    assert mean_distance("maxmin") > mean_distance("random")


def test_farthest_point_order_starts_with_the_farthest_conformer():
    _, _, _, positions = geometry("CCCCOCC")
    order = farthest_point_order(positions, 3, first=2)
    descriptor = inverse_distance_descriptor(positions)
    distances = np.linalg.norm(descriptor - descriptor[2], axis=1)
    assert order[0] == 2 and order[1] == int(np.argmax(distances))


@pytest.mark.parametrize("options, message", [
    (DesignOptions("fixed-budget", budget=10_000),
     "fixed_budget.budget 10000: .* exceeds the pool's"),
    (DesignOptions("fixed-budget", budget=0), "fixed_budget.budget 0"),
    (DesignOptions("fixed-budget", budget=20, grid=(4, 4)), "repeats a value"),
    (DesignOptions("fixed-budget", budget=20, grid=(0, 4)), "at least 1"),
    (DesignOptions("fixed-budget", budget=3, grid=(4,)),
     "fixed_budget.molecules_grid M=4: larger than budget 3"),
    (DesignOptions("fixed-molecules", molecules=0), "fixed_molecules.molecules 0"),
    (DesignOptions("fixed-molecules", molecules=500), "the pool has only"),
    (DesignOptions("fixed-molecules", molecules=3, grid=(0, 2)), "at least 1"),
    (DesignOptions("fixed-molecules", molecules=4, grid=(8,)), "cell fixed-molecules/M4-C8/r0"),
])
def test_bad_design_options_are_one_line_errors(splits_dir, options, message):
    with pytest.raises(MlipdivError, match=message) as info:
        make_design(splits_dir, options)
    assert "\n" not in str(info.value)


def test_allow_short_fills_and_flags(splits_dir):
    design = make_design(splits_dir, DesignOptions("fixed-molecules", molecules=4, grid=(7,),
                                                   validation_fraction=0, allow_short=True))
    cell = design.cells[0]
    assert cell.short and cell.n_train == 28
    assert all(len(v) == 7 for v in per_molecule(cell.train).values())


def test_cli_split_check_leaks_design(diverse_store, tmp_path):
    runner = CliRunner()
    out = tmp_path / "sp"
    result = runner.invoke(app, ["split", str(diverse_store), "--out", str(out), "--cf", "2",
                                 "--st", "1", "--sf", "1", "--ood", "cluster:3", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[-1])["counts"]["pool"]["molecules"] > 0
    result = runner.invoke(app, ["check-leaks", str(out), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["ok"]
    result = runner.invoke(app, ["design", "fixed-budget", "--splits", str(out), "--out",
                                 str(tmp_path / "d.json"), "--budget", "12", "--molecules-grid",
                                 "2,4", "--allow-short", "--json"])
    assert result.exit_code == 0, result.output
    assert len(load_design(tmp_path / "d.json").cells) == 2

    splits = load_splits(out)
    pool = splits.pool_set.by_molecule
    victim = next(iter(splits.sets["st"].by_molecule))
    write_pairs({**pool, victim: np.array([0])}, out / "pool.parquet")
    result = runner.invoke(app, ["check-leaks", str(out)])
    assert result.exit_code != 0 and "connectivity" in str(result.exception)


# ---------------------------------------------------------------- designs the data can fill
@pytest.fixture(scope="module")
def uneven_splits(uneven_store, tmp_path_factory):
    """The whole uneven store as the pool: 14 molecules with 10 conformers, 2 with 3."""
    out = tmp_path_factory.mktemp("uneven") / "splits"
    make_splits(uneven_store, out, SplitOptions(cf_molecules=0, st=0, sf=0))
    return out


def _fills(splits, options) -> bool:
    try:
        make_design(splits, options)
    except MlipdivError as exc:
        assert "pool conformers" in str(exc) and "\n" not in str(exc)
        return False
    return True


def test_automatic_budget_grid_proposes_only_cells_the_pool_fills(uneven_splits):
    """M = 16 × C = 2 needs 2-3 conformers a molecule, M = 10 × C = 3 needs 3-4: the grid
    skips the M whose first molecules include one of the two 3-conformer molecules at a
    position needing 4, and says how many M were eligible."""
    options = DesignOptions("fixed-budget", budget=32, replicates=2, seed=2)
    design = make_design(uneven_splits, options)
    grid = design.options["grid"]
    fitting = [m for m in range(1, 17) if _fills(uneven_splits, DesignOptions(
        "fixed-budget", budget=32, replicates=2, seed=2, grid=(m,)))]
    assert set(grid) <= set(fitting) and len(grid) == 5
    assert min(grid) == min(fitting) and max(grid) == max(fitting) == 16
    assert f"automatic grid: {len(fitting)} of the M from 1 to 16 can be filled" in \
        design.grid_note
    assert set(range(min(fitting), 17)) - set(fitting)  # this seed's order has a gap ...
    assert "left out" in design.grid_note  # ... which the note names
    assert not any(cell.short for cell in design.cells)
    assert all(cell.n_train == 32 for cell in design.cells)


def test_automatic_conformer_grid_stops_at_the_largest_c_that_fits(uneven_splits):
    design = make_design(uneven_splits, DesignOptions("fixed-molecules", molecules=16))
    largest = max(design.options["grid"])
    assert "automatic grid: C from 1 to 2" in design.grid_note and largest == 2
    assert not _fills(uneven_splits, DesignOptions("fixed-molecules", molecules=16,
                                                   grid=(largest + 1,)))


def test_an_explicit_grid_the_pool_cannot_fill_names_what_fits(uneven_splits):
    with pytest.raises(MlipdivError) as error:
        make_design(uneven_splits, DesignOptions("fixed-budget", budget=32, grid=(4, 12)))
    message = str(error.value)
    smallest = int(re.search(r"the smallest M that fits budget 32 is (\d+)", message)[1])
    assert message.startswith("cell fixed-budget/M4-C8/r0/") and "has 3 pool conformers" in message
    assert "or use allow_short" in message and "\n" not in message
    assert _fills(uneven_splits, DesignOptions("fixed-budget", budget=32, grid=(smallest,)))
    assert not _fills(uneven_splits, DesignOptions("fixed-budget", budget=32,
                                                   grid=(smallest - 1,)))

    with pytest.raises(MlipdivError) as error:
        make_design(uneven_splits, DesignOptions("fixed-molecules", molecules=16, grid=(1, 4)))
    largest = int(re.search(r"the largest C that fits M = 16 is (\d+)", str(error.value))[1])
    assert str(error.value).startswith("cell fixed-molecules/M16-C4/r0/")
    assert _fills(uneven_splits, DesignOptions("fixed-molecules", molecules=16, grid=(largest,)))
    assert not _fills(uneven_splits, DesignOptions("fixed-molecules", molecules=16,
                                                   grid=(largest + 1,)))


def test_cli_design_prints_the_automatic_grid_and_refuses_an_unfillable_one(uneven_splits,
                                                                            tmp_path):
    runner = CliRunner()
    common = ["design", "fixed-budget", "--splits", str(uneven_splits), "--budget", "32"]
    result = runner.invoke(app, [*common, "--out", str(tmp_path / "d.json"), "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert "automatic grid: 11 of the M from 1 to 16 can be filled" in result.output
    result = runner.invoke(app, [*common, "--out", str(tmp_path / "e.json"),
                                 "--molecules-grid", "4,16"])
    assert result.exit_code != 0 and "the smallest M that fits budget 32" in str(
        result.exception)
    assert not (tmp_path / "e.json").exists()
