"""Streaming import of a public or user dataset into a conformer store.

One source group is in memory at a time. Within a group, conformers are first grouped by a
cheap covalent-radius bond graph (`connectivity_signature`, vectorised over the group); bonds
are perceived with RDKit once per distinct graph, which gives the InChIKey and the canonical
atom order the store uses.

Which graphs are molecules, and which are distorted conformers:

* The group's most common molecule (by conformer count) is always a molecule.
* Formats whose group is one molecule by construction (SPICE) have no other molecule: any
  other graph is a distortion of it.
* Formula groups (ANI-1x, ANI-2x, QM7-X, runs of extxyz / ASE db frames) may hold several
  molecules. A less common graph is a molecule of its own when it is a well-formed
  closed-shell molecule (one fragment, no radicals, no formal charges beyond the group's net
  charge), even when a single conformer has it (ISO17, QM9: one structure per molecule). A
  stretched or compressed bond almost always leaves fragments, radicals, charge separation or
  a failed perception, so a real isomer passes and a distortion does not.
* Where the file gives a SMILES (SPICE's mapped SMILES, ANI-1's, QM9's), it is the template
  for bonds and charges of a graph whose geometry does not perceive, or perceives to another
  connectivity than the SMILES (ions, metal complexes, distortions): such a graph takes the
  SMILES' molecule, and its conformers are flagged `graph_mismatch` when their geometry
  contradicts the SMILES (a SMILES bond missing, an extra bond between bonded atoms).
* A distorted conformer stays with the molecule whose bond graph, in the same source atom order,
  differs from its own by the fewest bonds (for SPICE: the group's molecule), takes that
  molecule's atom order and is flagged `graph_mismatch`. It is never silently merged. When no
  molecule of its group shares its atom order it is skipped and counted.

* A graph is a molecule's only when its covalent-radius bonds are the perceived (or SMILES)
  molecule's (`_clean`), or miss only bonds stretched by at most `STRETCH` x their length in
  the clean conformers (`_only_stretched`): RDKit perceives from a graph's first conformer and
  bonds more loosely, so a stretched C-C at 1.9 A still perceives as ethane. Other graphs are
  distortions, flagged. The main molecule is the most common among the graphs of fewest
  fragments, so dissociated fragments ([CH3+].[CH3-]) never outrank it: a bond scan (ANI-1
  group) and a minimum-energy path (a run of frames) import alike, as one molecule.
* A saturated graph whose bond orders RDKit cannot assign (strained cages) takes its
  connectivity's identity, all bonds single, flagged `bond_orders_unassigned`.
* Graphs that share a standard InChIKey but not a bond graph (tautomers, protonation states)
  are kept apart: the second is stored under the InChIKey plus a tag (`variant_key`).

Limitation: stereo is perceived from each graph's first conformer, so stereoisomers that share
a group, an atom order and a bond graph are given the first one's stereo.

Conformers with missing or non-finite labels are skipped and counted by reason; a file from
which nothing can be imported is an error. The store is written through `StoreWriter`, so an
existing output is replaced only when the import completes.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mlipdiv.data.formats import ConformerBlock, SourceGroup, open_format
from mlipdiv.data.identity import (
    Identity,
    PerceptionError,
    Template,
    adjacency,
    connectivity_identity,
    connectivity_signature,
    perceive,
    quiet_rdkit,
    skeleton,
    template_identity,
)
from mlipdiv.data.store import MoleculeRecord
from mlipdiv.data.store_writer import StoreWriter
from mlipdiv.errors import MlipdivError
from mlipdiv.locking import input_size, locks_output

MISMATCH_FLAG = "graph_mismatch"
UNASSIGNED_FLAG = "bond_orders_unassigned"
# a bond of the molecule past the covalent-radius cutoff is broken when longer than this
# times its median length in the molecule's clean conformers (`_only_stretched`)
STRETCH = 1.2
STRETCH_SAMPLE = 64
MIN_CONFORMERS_PER_MOLECULE = 1
# conformers x atoms^2 per vectorised connectivity batch (~50 MB of temporaries)
SIGNATURE_BATCH = 2_000_000
PERCEPTION_FAILED = "bond perception failed for every conformer of the group"
NO_SHARED_ORDER = "distorted geometry with no molecule of the same atom order in its group"
ORDER_CONFLICT = "atom order differs from earlier conformers of the same InChIKey"
LABEL_CONFLICT = "labels (energy/forces) differ from earlier conformers of the same InChIKey"


@dataclass
class ImportSummary:
    """What an import did: counts, and skipped conformers by reason."""

    source: str
    format: str
    out: str
    level_of_theory: str
    n_groups: int = 0
    n_molecules: int = 0
    n_conformers: int = 0
    n_flagged: int = 0
    n_energy_only: int = 0
    n_unlabelled: int = 0
    units: dict[str, str] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def as_dict(self) -> dict:
        return {**asdict(self), "n_skipped": self.n_skipped}

    def text(self) -> str:
        """Human-readable summary, one fact per line."""
        units = ", ".join(f"{k} {v}" for k, v in self.units.items())
        labels = [f"{self.n_flagged} flagged {MISMATCH_FLAG}"]
        labels += [f"{self.n_energy_only} energies only"] if self.n_energy_only else []
        labels += [f"{self.n_unlabelled} without labels"] if self.n_unlabelled else []
        lines = [
            f"imported {self.source} ({self.format}, {self.level_of_theory}) -> {self.out}",
            f"units read: {units}",
            *(f"note: {m}" for m in self.messages),
            f"groups read: {self.n_groups}",
            f"molecules: {self.n_molecules}",
            f"conformers: {self.n_conformers} ({', '.join(labels)})",
            f"skipped: {self.n_skipped}",
        ]
        lines += [f"  {reason}: {n}" for reason, n in sorted(self.skipped.items())]
        return "\n".join(lines)


@dataclass
class _Graph:
    """Conformers of one block that share one bond graph (in the block's atom order)."""

    block: ConformerBlock
    block_index: int
    members: list[int]
    adjacency: np.ndarray
    identity: Identity | None = None
    contradicts: bool = False  # geometry contradicts the file's SMILES
    templated: bool = False  # identity taken from the file's SMILES


@locks_output("out", file=True, needs=lambda a: input_size(a["path"]))
def import_dataset(
    path: str | Path,
    out: str | Path,
    format: str = "auto",
    energy_key: str | None = None,
    forces_key: str | None = None,
    on_group: Callable[[int, int | None], None] | None = None,
    energy_unit: str | None = None,
    length_unit: str | None = None,
    forces_unit: str | None = None,
    skip_bad_frames: bool = False,
) -> ImportSummary:
    """Import `path` into a new store at `out`; returns the summary.

    `on_group(groups_done, groups_total_or_None)` is called after each source group (progress).
    The unit arguments override the format's native units where its layout does not fix them.
    A frame no molecule can have (`units.frame_problems`) stops the import, or with
    `skip_bad_frames` is skipped and counted by reason.
    """
    start = time.perf_counter()
    reader = open_format(path, format, energy_key, forces_key, energy_unit, length_unit,
                         forces_unit, skip_bad_frames)
    summary = ImportSummary(str(path), reader.name, str(out), reader.level_of_theory)
    atom_orders: dict[str, bytes] = {}
    label_kinds: dict[str, str] = {}
    variants: dict[str, dict[str, str]] = {}
    attrs = {"source_format": reader.name, "source_path": str(path),
             "energy_key": reader.energy_key, "forces_key": reader.forces_key}
    with StoreWriter(out, reader.level_of_theory, extra_attrs=attrs) as writer:
        for group in reader.groups():
            summary.n_groups += 1
            for record, graph in _split(group, reader.one_molecule_per_group, reader.skipped):
                record.inchikey = variant_key(record.inchikey, graph, variants)
                order = record.atomic_numbers.tobytes()
                if atom_orders.setdefault(record.inchikey, order) != order:
                    reader.skip(ORDER_CONFLICT, record.n_conformers)
                    continue
                if label_kinds.setdefault(record.inchikey, record.label_kind) != \
                        record.label_kind:
                    reader.skip(LABEL_CONFLICT, record.n_conformers)
                    continue
                writer.add(record)
                summary.n_flagged += sum(MISMATCH_FLAG in f.split(",") for f in record.flags)
                if record.label_kind == "energy":
                    summary.n_energy_only += record.n_conformers
                elif record.label_kind == "none":
                    summary.n_unlabelled += record.n_conformers
            if on_group is not None:
                on_group(summary.n_groups, reader.n_groups)
        if writer.n_conformers == 0:
            reasons = "; ".join(f"{r}: {n}" for r, n in reader.skipped.items()) or "no conformers"
            raise MlipdivError(f"{path}: nothing to import ({reasons})")
        # units as finally read (a file's own units are known once its groups are read)
        units = {kind: unit for kind, unit in reader.units.items()
                 if kind == "length" or (kind == "energy" and set(label_kinds.values()) - {"none"})
                 or (kind == "forces" and "energy+forces" in label_kinds.values())}
        for kind, unit in units.items():
            writer.set_attr(f"source_{kind}_unit", unit)
    summary.units = units
    summary.messages = list(reader.messages)
    summary.n_molecules = len(atom_orders)
    summary.n_conformers = writer.n_conformers
    summary.skipped = dict(reader.skipped)
    summary.seconds = time.perf_counter() - start
    return summary


def variant_key(inchikey: str, graph: str, variants: dict[str, dict[str, str]]) -> str:
    """The store key of a record: its standard InChIKey, or, for a second bond graph
    (`graph`: the molecule's `skeleton`) of an InChIKey already imported (a tautomer or
    protonation state: HID and HIE, the N-H tautomers of an imidazole), the InChIKey plus
    '-' and 8 hex digits of that graph, so that each store molecule has one bond graph in
    its atom order. `variants` maps InChIKey -> skeleton -> key for the whole import. The
    first block is kept, so variants stay one connectivity group for the splits' leak rule."""
    known = variants.setdefault(inchikey, {})
    if graph not in known:
        tag = hashlib.blake2b(graph.encode(), digest_size=4).hexdigest()
        known[graph] = f"{inchikey}-{tag}" if known else inchikey
    return known[graph]


def split_group(group: SourceGroup, one_molecule: bool, skipped: Counter) -> list[MoleculeRecord]:
    """Records (canonical atom order) for the molecules of one source group; conformers that
    cannot be placed are counted in `skipped`."""
    return [record for record, _ in _split(group, one_molecule, skipped)]


def _split(group: SourceGroup, one_molecule: bool, skipped: Counter
           ) -> list[tuple[MoleculeRecord, str]]:
    """`split_group`'s records, each with its molecule's bond graph (`skeleton`)."""
    graphs = [g for i, block in enumerate(group.blocks) for g in _graphs_of(block, i)]
    for graph in graphs:
        graph.identity = _perceive(graph, group.charge)
    if group.smiles:
        _apply_template(group, graphs)
    perceived = [g for g in graphs if g.identity is not None]
    if not perceived:
        skipped[PERCEPTION_FAILED] += group.n_conformers
        return []
    # a graph is a molecule's only when its geometry's bonds are the perceived molecule's
    clean = [g for g in perceived if _clean(g)]
    strict = {id(g) for g in clean}
    clean += [g for g in perceived if id(g) not in strict and _only_stretched(g, clean)]
    pool = clean or perceived
    molecules = _molecules(pool, one_molecule, group.charge)
    targets = [g for g in pool if g.identity.inchikey in molecules]
    placed: dict[int, list[tuple[_Graph, bool]]] = {id(t): [(t, False)] for t in targets}
    for graph in graphs:
        if id(graph) in placed:
            continue
        same_order = [t for t in targets if t.block_index == graph.block_index]
        if not same_order:
            skipped[NO_SHARED_ORDER] += len(graph.members)
            continue
        nearest = min(same_order, key=lambda t: int((t.adjacency != graph.adjacency).sum()))
        placed[id(nearest)].append((graph, True))
    return [(_record(target, placed[id(target)]), _skeleton(target)) for target in targets]


def _skeleton(target: _Graph) -> str:
    identity = target.identity
    bonds = target.adjacency if identity is None or identity.bonds is None else identity.bonds
    return skeleton(target.block.atomic_numbers, bonds)


def _clean(graph: _Graph) -> bool:
    """Whether the graph's covalent-radius bonds are its molecule's (the SMILES template's or
    the perceived molecule's): none missing, none extra but contacts of atoms two bonds
    apart (geminal Br...Br) or of free ions (`Template.contradicts`). A stretched bond that
    RDKit's looser perception still bonds (C-C at 1.9 A) is not clean."""
    identity = graph.identity
    if identity is None:
        return False
    if graph.templated:
        return not graph.contradicts
    return identity.bonds is None or not Template(identity, identity.bonds).contradicts(
        graph.adjacency)


def _only_stretched(graph: _Graph, clean: list[_Graph]) -> bool:
    """Whether a graph that is not clean only misses bonds of its molecule that are
    stretched by at most `STRETCH` x their median length in the clean conformers of the same
    molecule and atom order (F2 sampled at 1.45-1.56 A, past the covalent-radius cutoff of
    1.43 A, is F2; ethane's C-C at 1.9 A, 1.24 x 1.53 A, is broken)."""
    identity = graph.identity
    if identity is None or identity.bonds is None or graph.templated:
        return False
    if (graph.adjacency & ~identity.bonds).any():
        return False  # an extra bond: not a stretch
    references = [g for g in clean if g.block_index == graph.block_index
                  and g.identity.inchikey == identity.inchikey]
    if not references:
        return False
    pairs = np.argwhere(np.triu(identity.bonds & ~graph.adjacency))
    positions = np.concatenate([r.block.positions[r.members[:STRETCH_SAMPLE]]
                                for r in references])
    reference = np.median(np.linalg.norm(
        positions[:, pairs[:, 0]] - positions[:, pairs[:, 1]], axis=-1), axis=0)
    lengths = np.linalg.norm(graph.block.positions[graph.members][:, pairs[:, 0]]
                             - graph.block.positions[graph.members][:, pairs[:, 1]], axis=-1)
    return bool((lengths <= STRETCH * reference).all())


def _molecules(pool: list[_Graph], one_molecule: bool, charge: int) -> set[str]:
    """InChIKeys that are molecules of their own: the most common among the graphs of fewest
    fragments (so dissociated fragments, e.g. two methyls perceived as [CH3+].[CH3-], never
    outrank the molecule they come from), and for formula groups every well-formed one."""
    fragments = {id(g): _n_fragments(g.identity) for g in pool}
    fewest = min(fragments.values())
    counts: Counter[str] = Counter()
    for graph in pool:
        if fragments[id(graph)] == fewest:
            counts[graph.identity.inchikey] += len(graph.members)
    molecules = {counts.most_common(1)[0][0]}
    if not one_molecule:
        molecules |= {g.identity.inchikey for g in pool if _well_formed(g.identity, charge)}
    return molecules


def _n_fragments(identity: Identity) -> int:
    return identity.smiles.count(".") + 1


def _apply_template(group: SourceGroup, graphs: list[_Graph]) -> None:
    """Graphs whose geometry does not perceive, or perceives to another connectivity than
    the group's SMILES, take the SMILES' identity (bonds and charges), flagged when their
    geometry contradicts it. A SMILES that does not fit the atoms changes nothing."""
    templates: dict[int, Template | None] = {}
    for graph in graphs:
        if graph.block_index not in templates:
            block = graph.block
            try:
                templates[graph.block_index] = template_identity(
                    group.smiles, block.atomic_numbers, block.positions[graph.members[0]])
            except PerceptionError:
                templates[graph.block_index] = None
        template = templates[graph.block_index]
        if template is None:
            continue
        if (graph.identity is None
                or graph.identity.connectivity_key != template.identity.connectivity_key):
            graph.identity = template.identity
            graph.contradicts = template.contradicts(graph.adjacency)
            graph.templated = True


def _graphs_of(block: ConformerBlock, block_index: int) -> list[_Graph]:
    """Group a block's conformers by covalent-radius bond graph, in batches."""
    numbers, positions = block.atomic_numbers, block.positions
    batch = max(1, SIGNATURE_BATCH // max(1, len(numbers)) ** 2)
    members: dict[bytes, list[int]] = {}
    for start in range(0, len(positions), batch):
        signatures = connectivity_signature(numbers, positions[start:start + batch])
        for offset, signature in enumerate(signatures):
            members.setdefault(signature, []).append(start + offset)
    return [_Graph(block, block_index, idx, adjacency(numbers, positions[idx[0]]))
            for idx in members.values()]


def _perceive(graph: _Graph, charge: int) -> Identity | None:
    """RDKit's perception of the graph's first conformer; where it fails on a saturated
    connectivity (strained cages: nothing to assign), the connectivity's own identity."""
    numbers, positions = graph.block.atomic_numbers, graph.block.positions[graph.members[0]]
    try:
        return perceive(numbers, positions, charge=charge)
    except PerceptionError:
        pass
    if charge:
        return None
    try:
        return connectivity_identity(numbers, positions)
    except PerceptionError:
        return None


@quiet_rdkit()
def _well_formed(identity: Identity, charge: int) -> bool:
    """One fragment, no radicals, and no formal charges beyond the net charge."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(identity.smiles)
    if mol is None or "." in identity.smiles:
        return False
    atoms = list(mol.GetAtoms())
    return (sum(a.GetNumRadicalElectrons() for a in atoms) == 0
            and sum(abs(a.GetFormalCharge()) for a in atoms) == abs(charge))


def _record(target: _Graph, parts: list[tuple[_Graph, bool]]) -> MoleculeRecord:
    """The conformers of `parts` in source order, reordered to the target's canonical order;
    those from distorted graphs are flagged."""
    block, identity = target.block, target.identity
    assert identity is not None
    added: dict[int, list[str]] = {}
    for graph, mismatch in parts:
        names = [MISMATCH_FLAG] if mismatch or graph.contradicts else []
        if graph.identity is not None and not graph.identity.bond_orders_assigned \
                and graph.identity.inchikey == identity.inchikey:
            names.append(UNASSIGNED_FLAG)
        for i in graph.members:
            added[i] = names
    idx = np.array(sorted(i for graph, _ in parts for i in graph.members))
    order = identity.canonical_order
    flags = [_with_flags(block.flags[i], added[i]) for i in idx]
    return MoleculeRecord(
        identity.inchikey, identity.smiles, identity.formula,
        block.atomic_numbers[order], block.positions[idx][:, order],
        None if block.energy is None else block.energy[idx],
        None if block.forces is None else block.forces[idx][:, order],
        sampler=block.sampler[idx],
        temperature=block.temperature[idx], source=block.source[idx],
        flags=np.array(flags, dtype=object),
    )


def _with_flags(flags: str, added: list[str]) -> str:
    names = [f for f in str(flags).split(",") if f]
    return ",".join([*names, *(a for a in added if a not in names)])
