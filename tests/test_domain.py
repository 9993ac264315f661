"""Applicability domain: statistics on fixed arrays, and every trust score on a real dev-size
ANI committee trained on small molecules (OOD = molecules with functional groups absent from
training, one of them with an unseen element)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from ase.io import read
from conftest import embed, labelled_record
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from mlipdiv.cli import app
from mlipdiv.data import MoleculeRecord, perceive, write_store
from mlipdiv.design import SplitOptions, make_splits
from mlipdiv.diversity.entropy import quests_descriptors
from mlipdiv.domain import (
    DomainCalculator,
    DomainReference,
    DomainWarning,
    OutOfDomainError,
    SplitData,
    auroc,
    error_retention_curve,
    evaluate_scores,
    fit_domain,
    miscalibration_area,
    retention_area,
    sigma_scale,
    threshold_at_coverage,
)
from mlipdiv.domain.scores import committee_scores
from mlipdiv.errors import MlipdivError

TRAIN_SMILES = ["CCO", "CC(=O)N", "CCN", "CC=O", "OCCO", "CNC"]
# nitrile, nitro, carboxylic acid, anhydride: groups the training molecules lack; Cl: unseen
OOD_SMILES = ["CC#N", "C[N+](=O)[O-]", "OC(=O)C(=O)O", "CC(=O)OC(=O)C", "CCCl"]


# ---------------------------------------------------------------- statistics on arrays
def test_auroc_matches_sklearn_and_pair_counting():
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.4, 0.9, 0.05, 0.4])
    positive = np.array([0, 0, 1, 1, 1, 1, 0, 0], bool)
    pairs = [(p > n) + 0.5 * (p == n) for p in scores[positive] for n in scores[~positive]]
    assert auroc(scores, positive) == pytest.approx(np.mean(pairs))
    assert auroc(scores, positive) == pytest.approx(roc_auc_score(positive, scores))
    assert auroc(scores, np.ones(8, bool)) is None
    # conformers no model can judge (inf) rank as the least trusted
    assert auroc(np.array([np.inf, 0.2, 0.1]), np.array([1, 0, 0], bool)) == 1.0


def test_threshold_keeps_coverage_of_validation_and_of_fresh_data():
    rng = np.random.default_rng(1)
    validation, fresh = rng.gamma(2.0, size=(2, 4000))
    threshold = threshold_at_coverage(validation, 0.95)
    kept = (validation <= threshold).mean()
    assert 0.95 <= kept < 0.95 + 1 / len(validation)
    error = np.sqrt(0.95 * 0.05 / len(fresh))
    assert abs((fresh <= threshold).mean() - 0.95) < 3 * error
    with pytest.raises(MlipdivError, match="coverage"):
        threshold_at_coverage(validation, 1.5)


def test_recalibration_reduces_miscalibration_area():
    rng = np.random.default_rng(2)
    sigma = rng.uniform(0.05, 0.5, 5000)
    errors = rng.normal(0.0, 3.0 * sigma)  # committee sigma three times too small
    scale = sigma_scale(sigma, errors)
    before, after = miscalibration_area(sigma, errors), miscalibration_area(scale * sigma, errors)
    assert scale == pytest.approx(3.0, rel=0.1)
    assert after < 0.02 < 0.2 < before


def test_error_retention_curve():
    errors = np.array([4.0, 1.0, 3.0, 2.0])
    fractions, oracle = error_retention_curve(errors, errors, points=5)
    assert fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert oracle.tolist() == [1.0, 1.0, 1.5, 2.0, 2.5]
    _, reverse = error_retention_curve(-errors, errors, points=5)
    assert reverse.tolist() == [4.0, 4.0, 3.5, 3.0, 2.5]
    assert retention_area(fractions, oracle) < retention_area(fractions, reverse)


def test_committee_scores_keep_members_and_per_atom_values():
    energy = np.array([[1.0, 2.0], [3.0, 2.0]])  # 2 members x 2 conformers, 2 atoms
    forces = np.zeros((2, 2, 2, 3))
    forces[1, 0, 1] = [2.0, 0.0, 0.0]
    conformer, atoms = committee_scores(energy, forces, n_atoms=2)
    assert conformer["energy_std"].tolist() == [0.5, 0.0]
    assert atoms["force_std"][0].tolist() == [0.0, 1.0]
    assert conformer["force_std_max"].tolist() == [1.0, 0.0]
    assert conformer["force_std_mean"].tolist() == [0.5, 0.0]


def test_latent_distance_compares_atoms_of_the_same_element(tmp_path):
    numbers, positions = embed("CCO", 2)
    descriptors = quests_descriptors(numbers, positions)
    features = np.where(numbers[None, :, None] == 1, 0.0, 10.0) + np.zeros((2, 9, 4))
    features[..., 1:] = np.random.default_rng(3).normal(size=(2, 9, 3))
    reference = DomainReference.build(np.tile(numbers, 2), descriptors.reshape(-1, 63),
                                      ["CCO"], features.reshape(-1, 4), neighbours=1)
    swapped = features[:1].copy()
    swapped[0, numbers == 1, 0] = 10.0  # hydrogens that look like heavy atoms
    scored = reference.score_molecule(numbers, "CCO", descriptors[:1], swapped)
    distance = scored.atom_scores["latent_distance"][0]
    assert distance[numbers == 1].min() > 5 * max(distance[numbers != 1].max(), 1e-3)
    assert scored.scores["tanimoto_distance"][0] == 0.0
    moved = positions[:1].copy()
    moved[0, 0] += 0.8  # a distorted environment has a higher QUESTS entropy
    distorted = reference.score_molecule(numbers, "CCO", quests_descriptors(numbers, moved),
                                         features[:1])
    assert distorted.scores["quests_dh_max"][0] > scored.scores["quests_dh_max"][0] + 1.0
    reference.save(tmp_path)
    again = DomainReference.load(tmp_path).score_molecule(numbers, "CCO", descriptors[:1],
                                                          swapped)
    for name, values in scored.scores.items():
        np.testing.assert_allclose(again.scores[name], values, rtol=1e-6)


# ---------------------------------------------------------------- a trained committee
@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Dev-size models run faster on one thread, and far faster on a busy machine, where
    OpenMP threads of tiny kernels spin against each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-member dev ANI committee on small molecules; ID test = unseen conformers of the
    same molecules; OOD = unlabelled molecules with new functional groups or chlorine. (ANI
    rather than MACE only because it trains in half the time; the scores use the public
    TrainedRun API of either.)"""
    from mlipdiv.models import TrainingSpec, load_run, train

    root = tmp_path_factory.mktemp("domain")
    train_records = [labelled_record(s, 4, seed=i) for i, s in enumerate(TRAIN_SMILES)]
    valid_records = [labelled_record(s, 3, seed=50 + i) for i, s in enumerate(TRAIN_SMILES)]
    test_records = [labelled_record(s, 2, seed=80 + i) for i, s in enumerate(TRAIN_SMILES)]
    ood_records = [unlabelled_record(s, 2, seed=90 + i) for i, s in enumerate(OOD_SMILES)]
    paths = {name: root / f"{name}.h5" for name in ("train", "valid", "test", "ood")}
    for name, records in (("train", train_records), ("valid", valid_records),
                          ("test", test_records), ("ood", ood_records)):
        write_store(paths[name], records, "GFN2-xTB (tblite)")
    run_dir = train(train_records, valid_records, TrainingSpec("ani", "dev", ensemble=2),
                    root / "run", progress=False,
                    source={"train": str(paths["train"]), "valid": str(paths["valid"])})
    run = load_run(run_dir)
    domain = fit_domain(run, train_records, valid_records)
    return {"run": run, "domain": domain, "valid": valid_records, "test": test_records,
            "ood": ood_records, "paths": paths, "run_dir": run_dir}


def test_every_score_ranks_ood_above_in_distribution(trained):
    run, domain = trained["run"], trained["domain"]
    test, ood = (SplitData(split, trained[name], domain.score(run, trained[name]), domain)
                 for split, name in (("cf", "test"), ("ood", "ood")))
    for name in domain.score_names:
        assert np.mean(ood.scores[name]) > np.mean(test.scores[name]), name
        assert auroc(np.r_[test.scores[name], ood.scores[name]],
                     np.r_[np.zeros(test.n, bool), np.ones(ood.n, bool)]) > 0.5, name
    evaluation = evaluate_scores(domain, {"cf": test, "ood": ood})
    rows = {(r.split, r.score): r for r in evaluation.scores}
    assert rows[("ood", "latent_distance_mean")].auroc_vs_in_distribution > 0.8
    assert rows[("cf", "latent_distance_mean")].auroc_vs_in_distribution is None
    assert evaluation.in_distribution_split == "cf"
    assert {c.score for c in evaluation.curves} >= {"oracle", domain.primary}
    summary = {s.split: s for s in evaluation.splits}
    assert summary["ood"].n_predicted == 0  # unlabelled: scored, but no errors
    assert summary["ood"].in_domain_fraction < summary["cf"].in_domain_fraction


def test_validation_coverage_of_fitted_thresholds(trained):
    domain = trained["domain"]
    scored = domain.score(trained["run"], trained["valid"])
    n = sum(r.n_conformers for r in trained["valid"])
    for name, threshold in domain.thresholds.items():
        kept = np.mean(np.concatenate([s.scores[name] for s in scored]) <= threshold)
        assert kept >= domain.coverage, name
    assert set(domain.calibration) == {"energy", "forces"}
    for calibration in domain.calibration.values():
        assert calibration.miscalibration_area_after <= calibration.miscalibration_area_before
    assert domain.n_validation == n


def test_calculator_warns_or_raises_when_a_structure_leaves_the_domain(trained):
    run, domain = trained["run"], trained["domain"]
    record = trained["valid"][0]
    scored = domain.score(run, [record])[0]
    inside = int(np.flatnonzero(domain.in_domain(scored))[0])
    atoms = record.to_atoms()[inside]
    atoms.calc = DomainCalculator(run, domain, on_exit="raise")
    energy = atoms.get_potential_energy()
    assert atoms.calc.results["in_domain"]
    assert atoms.calc.results["member_energies"].shape == (2,)
    reference = record.to_atoms()[inside]
    reference.calc = run.calculator()
    assert energy == pytest.approx(reference.get_potential_energy(), abs=1e-6)
    stretched = atoms.copy()
    stretched.positions *= 0.7  # every bond 30 % shorter: far outside the training data
    stretched.calc = DomainCalculator(run, domain, on_exit="raise")
    with pytest.raises(OutOfDomainError, match="left the applicability domain"):
        stretched.get_potential_energy()
    stretched.calc = DomainCalculator(run, domain, on_exit="warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stretched.get_potential_energy()
    assert any(issubclass(w.category, DomainWarning) for w in caught)
    assert not stretched.calc.results["in_domain"]


def test_cli_fit_and_score(trained, tmp_path):
    runner = CliRunner()
    run_dir, paths = trained["run_dir"], trained["paths"]
    result = runner.invoke(app, ["domain", "score", str(run_dir), str(paths["ood"]),
                                 "--out", str(tmp_path / "x.extxyz")])
    assert isinstance(result.exception, MlipdivError)  # not fitted yet
    assert "domain fit" in str(result.exception)
    result = runner.invoke(app, ["domain", "fit", str(run_dir)])  # data found from run meta
    assert result.exit_code == 0, result.output
    out = tmp_path / "ood.extxyz"
    result = runner.invoke(app, ["domain", "score", str(run_dir), str(paths["ood"]),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    frames = read(out, index=":")
    assert len(frames) == sum(r.n_conformers for r in trained["ood"])
    assert all("domain_quests_dh_max" in f.info and "in_domain" in f.info for f in frames)
    assert all("domain_latent_distance" in f.arrays for f in frames)
    assert all(len(f.info["member_energies"]) == 2 for f in frames)
    chlorine = [f for f in frames if 17 in f.numbers]
    assert chlorine and not any(f.info["in_domain"] for f in chlorine)

    make_splits(paths["test"], tmp_path / "splits",
                SplitOptions(cf_molecules=2, cf_conformers=1, st=2, sf=0, ood_store=paths["ood"]))
    result = runner.invoke(app, ["domain", "evaluate", str(run_dir), "--splits",
                                 str(tmp_path / "splits"), "--json"])
    assert result.exit_code == 0, result.output
    evaluation = json.loads(result.stdout)
    assert {s["split"] for s in evaluation["splits"]} == {"cf", "st", "ood"}
    ood_rows = [r for r in evaluation["scores"] if r["split"] == "ood"]
    assert len(ood_rows) == len(trained["domain"].thresholds)
    assert np.mean([r["auroc_vs_in_distribution"] for r in ood_rows]) > 0.5
    assert (run_dir / "domain" / "evaluation.json").exists()
    curves = (run_dir / "domain" / "retention_curves.csv").read_text().splitlines()
    assert curves[0] == "split,score,quantity,fraction,mean_error" and len(curves) > 100


def test_unknown_score_is_a_clear_error(trained):
    with pytest.raises(MlipdivError, match="^score 'nope': choose from"):
        fit_domain(trained["run"], trained["valid"][:2], trained["valid"][2:], primary="nope")


def unlabelled_record(smiles: str, n_conf: int, seed: int) -> MoleculeRecord:
    """ETKDG conformers without QM labels, in canonical atom order."""
    numbers, positions = embed(smiles, n_conf, seed)
    ident = perceive(numbers, positions[0])
    order = ident.canonical_order
    return MoleculeRecord(ident.inchikey, ident.smiles, ident.formula, numbers[order],
                          positions[:, order])
