"""Diversity of a conformer dataset: structural (scaffolds, fingerprints), conformational
(RMSD, torsions, energy/force spreads) and information entropy (QUESTS)."""

from mlipdiv.diversity.conformational import ConformerGeometry, conformer_pairs
from mlipdiv.diversity.entropy import (
    EnvironmentReservoir,
    entropy_and_diversity,
    molecule_entropy,
    quests_descriptors,
)
from mlipdiv.diversity.profile import (
    Profile,
    ProfileOptions,
    plot_profile,
    profile_records,
    profile_store,
    quartiles,
)
from mlipdiv.diversity.structural import (
    TanimotoEstimate,
    maxmin_order,
    mean_tanimoto_distance,
    morgan_fingerprint,
    scaffolds,
)

__all__ = [
    "ConformerGeometry",
    "EnvironmentReservoir",
    "Profile",
    "ProfileOptions",
    "TanimotoEstimate",
    "conformer_pairs",
    "entropy_and_diversity",
    "maxmin_order",
    "mean_tanimoto_distance",
    "molecule_entropy",
    "morgan_fingerprint",
    "plot_profile",
    "profile_records",
    "profile_store",
    "quartiles",
    "quests_descriptors",
    "scaffolds",
]
