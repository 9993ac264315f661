"""`mlipdiv profile`: structural, conformational and information-entropy diversity of a store,
computed by streaming it one molecule at a time."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from ase.data import chemical_symbols

from mlipdiv.atomic import atomic_path
from mlipdiv.data.store import ConformerStore, MoleculeRecord
from mlipdiv.diversity.conformational import (
    RMSD_PAIR_CAP,
    ConformerGeometry,
    energy_spread,
    force_norm_spread,
)
from mlipdiv.diversity.entropy import (
    DATASET_ENVIRONMENT_CAP,
    MOLECULE_ENVIRONMENT_CAP,
    EnvironmentReservoir,
    molecule_entropy,
)
from mlipdiv.diversity.structural import (
    TANIMOTO_SAMPLE_PAIRS,
    mean_tanimoto_distance,
    morgan_fingerprint,
    scaffolds,
)
from mlipdiv.errors import MlipdivError

PLOTTED = {
    "n_conformers": "conformers",
    "mean_rmsd_angstrom": "mean pairwise heavy-atom RMSD (Å)",
    "torsion_circstd_deg": "torsion circular std (°)",
    "energy_std_ev_per_atom": "energy std (eV/atom)",
    "force_norm_std_ev_per_angstrom": "force-norm std (eV/Å)",
    "quests_entropy": "QUESTS entropy (nats)",
}


@dataclass(frozen=True)
class ProfileOptions:
    """Caps that keep the profile's cost linear in the store size (all reported in the output)."""

    max_rmsd_pairs: int = RMSD_PAIR_CAP
    molecule_environments: int = MOLECULE_ENVIRONMENT_CAP
    dataset_environments: int = DATASET_ENVIRONMENT_CAP
    tanimoto_pairs: int = TANIMOTO_SAMPLE_PAIRS
    entropy: bool = True
    seed: int = 0


@dataclass
class Profile:
    """`summary`: the dataset's figures (the `--json` object); `per_molecule`: one row per
    molecule with its conformational figures."""

    summary: dict
    per_molecule: pd.DataFrame


def molecule_row(record: MoleculeRecord, rng: np.random.Generator,
                 options: ProfileOptions) -> dict:
    """The per-molecule figures of one record."""
    geometry = ConformerGeometry(record)
    rmsd, rmsd_pairs, rmsd_exact = geometry.mean_pairwise_rmsd(rng, options.max_rmsd_pairs)
    torsion_spread, n_rotatable = geometry.torsion_spread()
    energy_std, energy_range = energy_spread(record)
    force_mean, force_std = force_norm_spread(record)
    murcko, generic = scaffolds(record.smiles)
    row = {
        "inchikey": record.inchikey,
        "smiles": record.smiles,
        "scaffold": murcko,
        "generic_scaffold": generic,
        "n_conformers": record.n_conformers,
        "n_atoms": record.n_atoms,
        "n_heavy_atoms": int((record.atomic_numbers > 1).sum()),
        "mean_rmsd_angstrom": rmsd,
        "rmsd_pairs": rmsd_pairs,
        "rmsd_exact": rmsd_exact,
        "bond_orders_from_smiles": geometry.bond_orders_from_smiles,
        "torsion_circstd_deg": torsion_spread,
        "n_rotatable_bonds": n_rotatable,
        "energy_std_ev_per_atom": energy_std,
        "energy_range_ev_per_atom": energy_range,
        "force_norm_mean_ev_per_angstrom": force_mean,
        "force_norm_std_ev_per_angstrom": force_std,
    }
    if options.entropy:
        entropy, diversity, n_env = molecule_entropy(record, rng, options.molecule_environments)
        row.update(quests_entropy=entropy, quests_diversity=diversity, quests_environments=n_env)
    return row


def profile_records(records: Iterable[MoleculeRecord],
                    options: ProfileOptions = ProfileOptions()) -> Profile:
    """Profile a stream of molecule records (each is dropped after its row is made)."""
    rng = np.random.default_rng(options.seed)
    reservoir = EnvironmentReservoir(options.dataset_environments, options.seed)
    rows, fingerprints = [], []
    elements: Counter = Counter()
    for record in records:
        rows.append(molecule_row(record, rng, options))
        fingerprints.append(morgan_fingerprint(record.smiles))
        elements.update({chemical_symbols[int(z)] for z in record.atomic_numbers})
        if options.entropy:
            reservoir.add(record)
    if not rows:
        raise MlipdivError("profile: the store holds no molecules")
    table = pd.DataFrame(rows)
    tanimoto = mean_tanimoto_distance(fingerprints, n_pairs=options.tanimoto_pairs,
                                      seed=options.seed)
    summary = _summary(table, tanimoto, elements, options)
    if options.entropy:
        entropy, diversity = reservoir.entropy_and_diversity()
        summary["quests"] = {
            "entropy_nats": entropy, "diversity_nats": diversity,
            "environments_used": 0 if reservoir.descriptors is None
            else len(reservoir.descriptors),
            "environments_total": reservoir.seen,
            "per_molecule_entropy_nats": quartiles(table["quests_entropy"]),
            "per_molecule_environment_cap": options.molecule_environments,
        }
    return Profile(summary, table)


def profile_store(path: str | os.PathLike,
                  options: ProfileOptions = ProfileOptions(),
                  skip_damaged: bool = False) -> Profile:
    """Profile a store file, streaming it one molecule at a time; with `skip_damaged`, its
    damaged molecules are left out and named in `damaged_molecules`."""
    with ConformerStore(path, skip_damaged=skip_damaged) as store:
        if len(store) == 0:
            raise MlipdivError(f"{path}: the store holds no "
                               + ("readable " if store.damaged else "") + "molecules")
        profile = profile_records(store.molecules(), options)
        profile.summary = {"path": str(path), "level_of_theory": store.level_of_theory,
                           **profile.summary,
                           **({"damaged_molecules": dict(store.damaged)} if store.damaged
                              else {})}
    return profile


def quartiles(values: Iterable[float]) -> dict:
    """Median and quartiles of the finite values, and how many there were."""
    finite = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if len(finite) == 0:
        return {"median": None, "q25": None, "q75": None, "n": 0}
    q25, median, q75 = np.percentile(finite, [25, 50, 75])
    return {"median": float(median), "q25": float(q25), "q75": float(q75), "n": len(finite)}


def _summary(table: pd.DataFrame, tanimoto, elements: Counter, options: ProfileOptions) -> dict:
    conformers = quartiles(table["n_conformers"])
    rmsd = quartiles(table["mean_rmsd_angstrom"])
    ring_scaffolds = table.loc[table["scaffold"] != "", "scaffold"]
    return {
        "n_molecules": len(table),
        "n_conformers": int(table["n_conformers"].sum()),
        "n_scaffolds": int(ring_scaffolds.nunique()),
        "n_generic_scaffolds": int(table.loc[table["generic_scaffold"] != "",
                                             "generic_scaffold"].nunique()),
        "n_acyclic_molecules": int((table["scaffold"] == "").sum()),
        "mean_tanimoto_distance": tanimoto.value,
        "tanimoto_pairs": tanimoto.n_pairs,
        "tanimoto_exact": tanimoto.exact,
        "elements_molecules": dict(sorted(elements.items())),
        "heavy_atoms": {int(k): int(v) for k, v in
                        sorted(Counter(table["n_heavy_atoms"]).items())},
        "median_conformers_per_molecule": conformers["median"],
        "conformers_per_molecule": conformers,
        "median_rmsd_angstrom": rmsd["median"],
        "rmsd_angstrom": rmsd,
        "rmsd_pair_cap": options.max_rmsd_pairs,
        "rmsd_molecules_sampled": int((~table["rmsd_exact"]).sum()),
        "torsion_circstd_deg": quartiles(table["torsion_circstd_deg"]),
        "energy_std_ev_per_atom": quartiles(table["energy_std_ev_per_atom"]),
        "energy_range_ev_per_atom": quartiles(table["energy_range_ev_per_atom"]),
        "force_norm_std_ev_per_angstrom": quartiles(table["force_norm_std_ev_per_angstrom"]),
        "molecules_without_bond_orders": int((~table["bond_orders_from_smiles"]).sum()),
        "plane": {"n_molecules": len(table),
                  "conformers_per_molecule": conformers["median"],
                  "mean_conformers_per_molecule": float(table["n_conformers"].mean())},
        "options": asdict(options),
    }


def plot_profile(profile: Profile, path: str | os.PathLike) -> None:
    """Histograms of the per-molecule distributions, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in PLOTTED if c in profile.per_molecule]
    fig, axes = plt.subplots(2, 3, figsize=(12, 7))
    for ax, column in zip(axes.ravel(), columns, strict=False):
        values = profile.per_molecule[column].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if len(values):
            ax.hist(values, bins=min(40, max(5, len(values) // 3)), color="tab:blue")
        ax.set_xlabel(PLOTTED[column])
        ax.set_ylabel("molecules")
    for ax in axes.ravel()[len(columns):]:
        ax.axis("off")
    summary = profile.summary
    fig.suptitle(f"{summary['n_molecules']} molecules, {summary['n_conformers']} conformers, "
                 f"{summary['n_scaffolds']} scaffolds")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
