"""Diversity profile: structural, conformational and QUESTS figures on real small stores."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import embed
from quests.entropy import diversity as quests_diversity
from quests.entropy import entropy as quests_entropy
from rdkit import Chem, DataStructs
from rdkit.Chem import rdMolAlign, rdMolTransforms
from typer.testing import CliRunner

from mlipdiv.cli import app
from mlipdiv.data import MoleculeRecord, perceive, write_store
from mlipdiv.diversity import (
    ConformerGeometry,
    EnvironmentReservoir,
    ProfileOptions,
    conformer_pairs,
    mean_tanimoto_distance,
    morgan_fingerprint,
    profile_records,
    profile_store,
    scaffolds,
)
from mlipdiv.diversity.conformational import dihedrals
from mlipdiv.diversity.entropy import environment_descriptors
from mlipdiv.errors import MlipdivError


def unlabelled(smiles: str, n_conf: int, seed: int) -> MoleculeRecord:
    """ETKDG conformers in the store's canonical atom order, without labels."""
    numbers, positions = embed(smiles, n_conf, seed)
    ident = perceive(numbers, positions[0])
    return MoleculeRecord(ident.inchikey, ident.smiles, ident.formula,
                          numbers[ident.canonical_order], positions[:, ident.canonical_order])


@pytest.fixture(scope="module")
def profile(diverse_store):
    return profile_store(diverse_store)


def test_profile_counts_and_required_keys(profile):
    summary = profile.summary
    for key in ("n_molecules", "n_conformers", "n_scaffolds", "mean_tanimoto_distance",
                "median_conformers_per_molecule", "median_rmsd_angstrom"):
        assert key in summary
    assert summary["n_molecules"] == 16 and summary["n_conformers"] == 128
    assert summary["n_scaffolds"] == 3  # benzene, pyridine, cyclohexane
    assert summary["n_acyclic_molecules"] == 6
    assert summary["median_conformers_per_molecule"] == 8
    assert summary["plane"] == {"n_molecules": 16, "conformers_per_molecule": 8.0,
                                "mean_conformers_per_molecule": 8.0}
    assert 0 < summary["mean_tanimoto_distance"] < 1 and summary["tanimoto_exact"]
    assert summary["median_rmsd_angstrom"] > 0
    assert summary["energy_std_ev_per_atom"]["n"] == 16
    assert summary["molecules_without_bond_orders"] == 0
    assert summary["quests"]["environments_used"] == summary["quests"]["environments_total"]
    assert len(profile.per_molecule) == 16


def test_rmsd_matches_a_direct_rdkit_call():
    """The profile's RMSD on two conformers (store atom order, rebuilt molecule) equals
    GetBestRMS on the RDKit molecule the conformers were embedded in."""
    smiles = "CC(C)CCCc1ccccc1"  # symmetric methyls and ring flips
    numbers, positions = embed(smiles, 2, seed=5)
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    for xyz in positions:
        conformer = Chem.Conformer(mol.GetNumAtoms())
        conformer.SetPositions(np.ascontiguousarray(xyz))
        mol.AddConformer(conformer, assignId=True)
    heavy = Chem.RemoveHs(mol)
    expected = rdMolAlign.GetBestRMS(heavy, heavy, 1, 0)

    record = unlabelled(smiles, 2, seed=5)
    table = profile_records([record], ProfileOptions(entropy=False)).per_molecule
    assert table["rmsd_pairs"][0] == 1
    assert table["mean_rmsd_angstrom"][0] == pytest.approx(expected, abs=1e-6)
    assert expected > 0.05


def test_rmsd_pairs_sampled_above_the_cap():
    record = unlabelled("CCCCOCC", 12, seed=2)
    geometry = ConformerGeometry(record)
    mean, n_pairs, exact = geometry.mean_pairwise_rmsd(np.random.default_rng(0), max_pairs=20)
    assert (n_pairs, exact) == (20, False)
    full, all_pairs, all_exact = geometry.mean_pairwise_rmsd(np.random.default_rng(0), 1000)
    assert (all_pairs, all_exact) == (66, True)
    assert mean == pytest.approx(full, rel=0.5)


def test_conformer_pairs_are_distinct_and_in_range():
    rng = np.random.default_rng(1)
    pairs = conformer_pairs(50, rng, max_pairs=300)
    assert len(set(pairs)) == 300
    assert all(0 <= j < i < 50 for i, j in pairs)
    assert sorted(conformer_pairs(4, rng, 10)) == sorted(
        (i, j) for i in range(4) for j in range(i))


def test_dihedrals_match_rdkit():
    numbers, positions = embed("CCCCO", 3, seed=3)
    mol = Chem.AddHs(Chem.MolFromSmiles("CCCCO"))
    conformer = Chem.Conformer(mol.GetNumAtoms())
    conformer.SetPositions(np.ascontiguousarray(positions[1]))
    expected = rdMolTransforms.GetDihedralRad(conformer, 0, 1, 2, 3)
    assert dihedrals(positions, np.array([[0, 1, 2, 3]]))[1, 0] == pytest.approx(expected)


def test_tanimoto_exact_and_estimate_agree_with_direct_pairs():
    smiles = ["CCO", "CCN", "c1ccccc1", "Cc1ccccc1", "CC(=O)O", "C1CCCCC1", "OCc1ccncc1",
              "CCCCCC", "CC(C)O", "NCCO", "c1ccncc1", "OC1CCCCC1"]
    fps = [morgan_fingerprint(s) for s in smiles]
    direct = np.mean([1 - DataStructs.TanimotoSimilarity(fps[i], fps[j])
                      for i in range(len(fps)) for j in range(i)])
    exact = mean_tanimoto_distance(fps)
    assert exact.exact and exact.n_pairs == 66
    assert exact.value == pytest.approx(direct)
    estimate = mean_tanimoto_distance(fps, exact_limit=5, n_pairs=20000, seed=3)
    assert not estimate.exact and estimate.n_pairs == 20000
    assert estimate.value == pytest.approx(direct, abs=0.01)


def test_scaffolds_ignore_stereo_and_rings_only():
    assert scaffolds("C[C@H](N)c1ccccc1") == scaffolds("C[C@@H](N)c1ccccc1")
    assert scaffolds("C[C@H](N)c1ccccc1")[0] == "c1ccccc1"
    assert scaffolds("CCCO") == ("", "")


def test_entropy_reservoir_equals_quests_on_all_environments():
    records = [unlabelled("CCO", 3, 1), unlabelled("c1ccccc1O", 2, 2)]
    reservoir = EnvironmentReservoir(capacity=1000)
    for record in records:
        reservoir.add(record)
    everything = np.concatenate([environment_descriptors(r, np.arange(r.n_conformers))
                                 for r in records])
    assert len(reservoir.descriptors) == reservoir.seen == len(everything)
    entropy, diversity = reservoir.entropy_and_diversity()
    assert entropy == pytest.approx(quests_entropy(everything), rel=1e-9)
    assert diversity == pytest.approx(quests_diversity(everything), rel=1e-6)
    capped = EnvironmentReservoir(capacity=10)
    for record in records:
        capped.add(record)
    assert len(capped.descriptors) == 10 and capped.seen == len(everything)


def test_profile_cli_json_and_plot(diverse_store, tmp_path):
    png = tmp_path / "profile.png"
    result = CliRunner().invoke(app, ["profile", str(diverse_store), "--json", "--plot",
                                      str(png), "--no-entropy", "--max-rmsd-pairs", "5"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["n_molecules"] == 16 and summary["rmsd_molecules_sampled"] == 16
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_profile_of_an_empty_store_is_an_error(tmp_path):
    empty = tmp_path / "empty.h5"
    write_store(empty, [], "none")
    with pytest.raises(MlipdivError, match="no molecules"):
        profile_store(empty)


def test_rmsd_lower_bound_never_exceeds_the_symmetry_aware_rmsd(diverse_store):
    """The prefilter of the near-duplicate check is a true lower bound, so skipping pairs it
    rules out never changes which conformers are near-duplicates."""
    from mlipdiv.data import ConformerStore
    from mlipdiv.diversity.conformational import ConformerGeometry, rmsd_lower_bounds

    checked = 0
    with ConformerStore(diverse_store) as store:
        for record in store.molecules():
            geometry = ConformerGeometry(record)
            bounds = rmsd_lower_bounds(record.atomic_numbers, record.positions[:3],
                                       record.positions)
            for c in range(record.n_conformers):
                for r in range(3):
                    assert bounds[c, r] <= geometry.rmsd(c, r) + 1e-6
                    checked += 1
            assert np.allclose(np.diag(bounds[:3]), 0)
    assert checked > 300
    # and it is informative: distinct ETKDG conformers are mostly ruled out by it alone
    assert (bounds[3:] > 0.05).mean() > 0.5
