"""Extension points are registries: a new format, test-set kind, OOD shift, experiment,
selection or backend is one class, checked when it is defined, and every list of choices
(config, CLI, auto-detection, leak check) comes from the registry."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from mlipdiv.data import formats
from mlipdiv.design import experiments, kinds, selections, splits
from mlipdiv.errors import FieldError, MlipdivError
from mlipdiv.models import base, registry
from mlipdiv.study.advise import parse_weights
from mlipdiv.study.config import AdviceConfig, DesignConfig


@contextlib.contextmanager
def registered(table: dict):
    """Whatever a test registers in `table` is removed afterwards."""
    before = dict(table)
    try:
        yield
    finally:
        table.clear()
        table.update(before)


# ---------------------------------------------------------------- formats
def test_formats_register_and_are_detected_by_their_own_rule(tmp_path):
    assert formats.format_names()[0] == "auto"
    assert set(formats.REGISTERED) >= {"spice", "qm7x", "ani1x", "extxyz", "asedb"}
    path = tmp_path / "data.mine"
    path.write_text("MINE 1\n")
    with pytest.raises(MlipdivError, match="cannot detect"):
        formats.detect_format(path)
    with registered(formats.REGISTERED):
        class MineFormat(formats.DatasetFormat):
            name = "mine"
            title = "test layout"
            default_energy_key = default_forces_key = "x"
            default_level_of_theory = "none"

            @classmethod
            def recognises(cls, probe):
                return probe.header.startswith(b"MINE")

        assert formats.detect_format(path) == "mine"
        assert "mine" in formats.format_names()
        assert [row["name"] for row in formats.format_table()][-1] == "mine"
    assert "mine" not in formats.REGISTERED


def test_format_missing_declarations_or_twice_is_refused():
    with registered(formats.REGISTERED):
        with pytest.raises(TypeError, match="must declare title"):
            class NoTitle(formats.DatasetFormat):
                name = "no-title"
                default_energy_key = default_forces_key = default_level_of_theory = "x"
        with pytest.raises(TypeError, match="defined twice"):
            class Spice2(formats.SpiceFormat):
                name = "spice"


# ---------------------------------------------------------------- test-set kinds
def test_test_set_kinds_in_listing_and_carving_order():
    assert kinds.test_set_names() == ("cf", "st", "sf", "ood")
    assert [k.name for k in kinds.test_set_kinds(carving=True)] == ["ood", "sf", "st", "cf"]
    assert kinds.default_advice_weights() == {"cf": 1.0, "st": 1.0, "sf": 1.0}
    assert kinds.test_set_kind("cf").scored_on_training_molecules
    assert not kinds.test_set_kind("st").scored_on_training_molecules
    with pytest.raises(MlipdivError, match="choose from cf, st, sf, ood"):
        kinds.test_set_kind("xx")


def test_a_whole_molecule_kind_must_declare_the_connectivity_rule():
    with registered(kinds.REGISTERED):
        with pytest.raises(TypeError, match="must include 'connectivity'"):
            class Careless(splits.WholeMoleculeSet):
                name, label, title, order, carve_order = "xx", "XX", "x", 9, 9
                size_field = "st"
                leak_rules = ()

                @classmethod
                def withhold(cls, table, candidates, rng, n_molecules):
                    return set()
        with pytest.raises(TypeError, match="no method for leak rule"):
            class Unchecked(splits.WholeMoleculeSet):
                name, label, title, order, carve_order = "yy", "YY", "y", 9, 9
                size_field = "st"
                leak_rules = ("connectivity", "charge")

                @classmethod
                def withhold(cls, table, candidates, rng, n_molecules):
                    return set()
    assert kinds.test_set_names() == ("cf", "st", "sf", "ood")


def test_a_new_kind_is_carved_leak_checked_and_configurable(diverse_store, tmp_path):
    """One class: the split carves it, the leak check runs its rules, configs accept it."""
    with registered(kinds.REGISTERED):
        class FirstMolecule(splits.WholeMoleculeSet):
            """The alphabetically first candidate molecule (a test kind)."""

            name, label, title, order, carve_order = "first", "FM", "first molecule", 4, 2
            size_field = "st"
            leak_rules = ("connectivity",)
            advice_weight = 0.0

            @classmethod
            def withhold(cls, table, candidates, rng, n_molecules):
                return {sorted(candidates)[0]}

        made, _ = splits.make_splits(diverse_store, tmp_path / "sp",
                                     splits.SplitOptions(st=1, sf=0, cf_molecules=0))
        withheld = made.sets["first"].by_molecule
        assert len({key[:14] for key in withheld}) == 1  # one molecule and its stereoisomers
        assert list(made.sets)[-1] == "first"
        first = next(iter(withheld))
        assert first not in made.pool_set.by_molecule
        # the kind's declared rule runs: put its molecule back in the pool and it is caught
        made.sets["pool"].by_molecule[first] = np.arange(1)
        found = {(leak.kind, leak.test_set) for leak in kinds.test_set_kind("first").leaks(
            made, 0.05)}
        assert ("connectivity", "first") in found
        reloaded = splits.load_splits(tmp_path / "sp")
        assert "first" in reloaded.test_sets
        assert parse_weights("cf=1,first=2") == {"cf": 1.0, "first": 2.0}


# ---------------------------------------------------------------- OOD shifts
def test_ood_shifts_are_registered_and_named_in_errors():
    assert isinstance(splits.parse_ood("size:9"), splits.SizeShift)
    assert splits.parse_ood("elements:S,Cl").elements == ("S", "Cl")
    assert splits.parse_ood("cluster").n_clusters == 8
    with pytest.raises(FieldError, match=r"size:MIN_HEAVY, elements:S,Cl or cluster\[:K\]"):
        splits.parse_ood("mass:100")
    with registered(splits.OOD_SHIFTS):
        class ChargeShift(splits.OodShift):
            kind, syntax = "charged", "charged"

            @classmethod
            def parse(cls, argument):
                return cls()

            def withhold(self, table, candidates, rng):
                return {k for k in candidates if "+" in str(table)}

        assert isinstance(splits.parse_ood("charged"), ChargeShift)
        assert splits.ood_syntax().endswith("or charged")


# ---------------------------------------------------------------- experiments, selections
def test_experiments_and_selections_come_from_their_registries():
    assert experiments.experiment_names() == ("fixed-budget", "fixed-molecules",
                                              "fixed-conformers")
    assert experiments.experiment("fixed-budget").axis == "M"
    assert experiments.experiment("fixed-molecules").axis == "C"
    with pytest.raises(FieldError, match="choose from fixed-budget, fixed-molecules, fixed-c"):
        experiments.experiment("fixed-time")
    assert set(selections.MOLECULE_SELECTIONS) == {"random", "maxmin"}
    assert set(selections.CONFORMER_SELECTIONS) == {"random", "farthest"}
    with registered(selections.CONFORMER_SELECTIONS):
        class LowestEnergy(selections.ConformerSelection):
            name = "lowest-energy"

            @classmethod
            def order(cls, store, key, available, rng, n_needed):
                energy = store.molecule(key, available).energy
                return available[np.argsort(energy)]

        config = DesignConfig(conformer_selection=["lowest-energy"])  # accepted by the config
        assert config.conformer_selection == ["lowest-energy"]
    with pytest.raises(TypeError, match="defined twice"), registered(
            experiments.EXPERIMENTS):
        class Again(experiments.FixedBudget):
            name = "fixed-budget"


def test_a_new_conformer_selection_draws_a_design(diverse_store, tmp_path):
    from mlipdiv.design import DesignOptions, make_design

    splits.make_splits(diverse_store, tmp_path / "sp",
                       splits.SplitOptions(st=0, sf=0, cf_molecules=0))
    with registered(selections.CONFORMER_SELECTIONS):
        class LowestEnergy(selections.ConformerSelection):
            name = "lowest-energy"

            @classmethod
            def order(cls, store, key, available, rng, n_needed):
                return available[np.argsort(store.molecule(key, available).energy)]

        design = make_design(tmp_path / "sp", DesignOptions(
            "fixed-molecules", molecules=2, grid=(1,), validation_fraction=0,
            conformer_selection="lowest-energy"))
    from mlipdiv.data import ConformerStore

    with ConformerStore(diverse_store) as store:
        for key, index in design.cells[0].train:
            assert store.molecule(key).energy.argmin() == index


# ---------------------------------------------------------------- backends
def test_backends_and_config_choices_agree():
    names = registry.backend_names()
    assert {"mace", "ani"} <= set(names)
    assert set(names) == set(base.REGISTERED)
    assert AdviceConfig().weights == kinds.default_advice_weights()
