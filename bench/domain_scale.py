"""Applicability-domain scoring at scale: conformers/s and peak RSS against a training
reference of >= 10^6 atoms, and the nearest-neighbour library used.

Reference and queries are real geometries: RDKit ETKDG conformers of a set of molecules,
replicated with 0.05 Angstrom Gaussian noise up to the reference size, with real QUESTS
descriptors. The latent features are synthetic (per-element clusters, 32 dimensions like a
fast-size MACE's node invariants), because this benchmark times mlipdiv's own scoring
(k-NN search, Gaussian mixture, QUESTS entropy, Tanimoto) and not the model's inference,
which bench/training_throughput.py measures. `--compare` also times the alternatives at the
same reference size (FAISS exact / IVF / HNSW, scikit-learn k-d tree, pynndescent) on one
latent search over all reference atoms.

    .venv/bin/python bench/domain_scale.py [--quick] [--compare]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem

from mlipdiv.diversity.entropy import quests_descriptors
from mlipdiv.domain import DomainReference
from mlipdiv.domain.scores import NeighbourIndex

REFERENCE_SMILES = ["CCO", "CC(=O)N", "CCN", "OCCO", "CCCCO", "CC(C)O", "CC(=O)OC", "NCCO",
                    "CCOCC", "CC(N)C(=O)O", "CCCN", "OC1CCCC1", "CC(=O)CC", "COC(C)=O",
                    "NCC(=O)O", "CCCCCC", "c1ccccc1O", "CC(C)CN", "OCC(O)CO", "CNC(C)=O"]
QUERY_SMILES = ["CCCCCCO", "NC(=O)c1ccccc1O", "CC(C)(C)CC(=O)NC", "OC(=O)CCC(=O)O", "CCOC(=O)CN"]
LATENT_DIM = 32
EMBEDDED_CONFORMERS = 10
NOISE_ANGSTROM = 0.05


def embed(smiles: str, n_conf: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    AllChem.EmbedMultipleConfs(mol, n_conf, params)
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    return numbers, np.array([c.GetPositions() for c in mol.GetConformers()])


def molecules(smiles_list: list[str], atoms_wanted: int, rng: np.random.Generator):
    """(numbers, positions, smiles) per molecule, conformers jittered up to `atoms_wanted`."""
    per_molecule = atoms_wanted // len(smiles_list)
    out = []
    for i, smiles in enumerate(smiles_list):
        numbers, base = embed(smiles, EMBEDDED_CONFORMERS, seed=i)
        n_conf = max(1, -(-per_molecule // len(numbers)))
        picks = base[rng.integers(0, len(base), n_conf)]
        out.append((numbers, picks + rng.normal(0, NOISE_ANGSTROM, picks.shape), smiles))
    return out


def latent(numbers: np.ndarray, n_conf: int, rng: np.random.Generator,
           centres: dict[int, np.ndarray]) -> np.ndarray:
    """Synthetic per-atom features: an element centre plus an environment offset."""
    base = np.stack([centres.setdefault(int(z), rng.normal(0, 3, LATENT_DIM)) for z in numbers])
    return (base[None] + rng.normal(0, 1, (n_conf, len(numbers), LATENT_DIM))).astype(np.float32)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def compare_libraries(features: np.ndarray, queries: np.ndarray) -> dict[str, dict]:
    """Build and query seconds of each nearest-neighbour library on the same data."""
    import faiss
    import pynndescent
    from sklearn.neighbors import NearestNeighbors

    results = {}

    def timed(name, build, query):
        tic = time.perf_counter()
        index = build()
        built = time.perf_counter() - tic
        tic = time.perf_counter()
        query(index)
        results[name] = {"build_s": round(built, 2),
                         "query_ms_per_atom": round(1e3 * (time.perf_counter() - tic)
                                                    / len(queries), 4)}
        print(f"  {name}: build {built:.1f} s, {results[name]['query_ms_per_atom']} ms/atom",
              flush=True)

    def flat():
        index = faiss.IndexFlatL2(features.shape[1])
        index.add(features)
        return index

    def hnsw():
        index = faiss.IndexHNSWFlat(features.shape[1], 32)
        index.add(features)
        return index

    timed("faiss-ivf (used)", lambda: NeighbourIndex.build(features),
          lambda index: index.distances(queries, 5))
    timed("faiss-flat", flat, lambda index: index.search(queries, 5))
    timed("faiss-hnsw", hnsw, lambda index: index.search(queries, 5))
    timed("sklearn-kd_tree",
          lambda: NearestNeighbors(n_neighbors=5, algorithm="kd_tree").fit(features),
          lambda index: index.kneighbors(queries))
    timed("pynndescent", lambda: pynndescent.NNDescent(features, n_neighbors=15),
          lambda index: index.query(queries, k=5))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^5 reference atoms")
    parser.add_argument("--compare", action="store_true", help="time other NN libraries too")
    parser.add_argument("--atoms", type=int, default=None, help="reference atoms")
    args = parser.parse_args()
    atoms_wanted = args.atoms or (100_000 if args.quick else 1_000_000)
    rng = np.random.default_rng(0)
    centres: dict[int, np.ndarray] = {}

    tic = time.perf_counter()
    reference_mols = molecules(REFERENCE_SMILES, atoms_wanted, rng)
    numbers = np.concatenate([np.tile(z, len(x)) for z, x, _ in reference_mols])
    per_molecule = (quests_descriptors(z, x) for z, x, _ in reference_mols)
    descriptors = np.concatenate([d.reshape(-1, d.shape[-1])
                                  for d in per_molecule]).astype(np.float32)
    features = np.concatenate([latent(z, len(x), rng, centres).reshape(-1, LATENT_DIM)
                               for z, x, _ in reference_mols])
    prepared = time.perf_counter() - tic
    print(f"reference: {len(numbers)} atoms, {sum(len(x) for _, x, _ in reference_mols)} "
          f"conformers ({prepared:.1f} s to embed and describe)", flush=True)

    tic = time.perf_counter()
    reference = DomainReference.build(numbers, descriptors, [s for _, _, s in reference_mols],
                                      features)
    build_s = time.perf_counter() - tic
    print(f"built in {build_s:.1f} s with {reference.nn_library}", flush=True)

    queries = molecules(QUERY_SMILES, 20 * 200, rng)
    query_features = [latent(z, len(x), rng, centres) for z, x, _ in queries]
    n_conformers = sum(len(x) for _, x, _ in queries)
    tic = time.perf_counter()
    for (z, x, smiles), feats in zip(queries, query_features, strict=True):
        reference.score_molecule(z, smiles, quests_descriptors(z, x), feats)
    score_s = time.perf_counter() - tic
    throughput = n_conformers / score_s
    print(f"scored {n_conformers} conformers in {score_s:.2f} s: {throughput:.1f} conformers/s "
          f"(model inference excluded); peak RSS {peak_rss_mib():.0f} MiB", flush=True)

    result = {"bench": "domain_scale", "reference_atoms": int(len(numbers)),
              "nn_library": reference.nn_library, "build_s": round(build_s, 1),
              "conformers_per_s": round(throughput, 1), "query_conformers": n_conformers,
              "peak_rss_mib": round(peak_rss_mib())}
    if args.compare:
        query_atoms = np.concatenate([f.reshape(-1, LATENT_DIM) for f in query_features])[:500]
        result["compare_latent_search"] = compare_libraries(features, query_atoms)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
