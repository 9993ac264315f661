"""Readers for public QM dataset layouts, each declared by a few class attributes.

A format class states its native units, its default energy/force keys, whether forces are
stored as gradients, whether one source group holds one molecule, and whether its layout fixes
its units (`units_fixed`). The base class does the common work: shape checks, atomic-number
checks, unit conversion to eV / Angstrom (through `mlipdiv.data.units`, at this boundary
only), the plausibility check of the converted values, and dropping conformers whose labels are
missing or non-finite, counted by reason in `skipped`.

Units, most specific first: a `--energy-unit / --length-unit / --forces-unit` flag (refused by
formats whose layout fixes the units), then a unit the file states (an HDF5 `units`
attribute, sGDML's `e_unit`/`r_unit`, schnetpack's database metadata; noted in `messages`),
then the format's declared default. Forces default to energy unit / length unit.

Labels are optional: a block may carry energies and forces, energies only, or neither
(positions to label later). Readers stream: `groups()` yields one `SourceGroup` at a time and
never holds more. Structural damage (unreadable file, missing coordinates, shape mismatch,
unknown atomic number) raises `MlipdivError` naming the file, the group or frame and the
reason.

One module per layout family: `base` (the `DatasetFormat` base, the registry `REGISTERED`,
`ConformerBlock` / `SourceGroup` / `Probe` and shared helpers), `hdf5` (spice, spice-input,
qm7x, ani1x, ani1, ani2x), `npz` (npz), `frames` (the `AseFramesFormat` base of the ASE-read
layouts), `xyz` (extxyz, md17xyz, qm9, xyz), `asedb` (asedb, traj) and `detection`
(`detect_format`, `open_format`). The family modules are imported here in a fixed order, which
is the registration order: the order of `mlipdiv formats` and of auto-detection. A new format
is one class in the family module it belongs to, or a new module imported below.
"""

from __future__ import annotations

from mlipdiv.data.formats.base import (
    AUTO,
    FORCES_LIKE,
    MAX_ATOMIC_NUMBER,
    MAX_FRAMES_PER_GROUP,
    PLAUSIBILITY_SAMPLE,
    REGISTERED,
    TAR_SUFFIXES,
    ConformerBlock,
    DatasetFormat,
    Probe,
    SourceGroup,
    format_names,
    format_table,
    smiles_charge,
    stored_text,
)

# The family modules in registration order: a format registers when its module loads, so
# this order is the order of `mlipdiv formats` and of auto-detection. Keep it unsorted.
# isort: off
from mlipdiv.data.formats.hdf5 import (
    Ani1Format,
    Ani1xFormat,
    Ani2xFormat,
    ArrayGroupFormat,
    Hdf5Format,
    Qm7xFormat,
    SpiceFormat,
    SpiceInputFormat,
    mapped_atomic_numbers,
    open_hdf5,
)
from mlipdiv.data.formats.npz import NpzFormat
from mlipdiv.data.formats.frames import AseFramesFormat
from mlipdiv.data.formats.xyz import (
    MIN_XYZ_ATOM_LINE_BYTES,
    QM9_PROPERTIES,
    ExtxyzFormat,
    Md17XyzFormat,
    PlainXyzFormat,
    Qm9XyzFormat,
    xyz_counts_fit,
)
from mlipdiv.data.formats.asedb import AseDbFormat, TrajFormat
from mlipdiv.data.formats.detection import (
    TEXT_PROBE_BYTES,
    detect_format,
    open_format,
)
# isort: on

__all__ = [
    "AUTO", "FORCES_LIKE", "MAX_ATOMIC_NUMBER", "MAX_FRAMES_PER_GROUP", "MIN_XYZ_ATOM_LINE_BYTES",
    "PLAUSIBILITY_SAMPLE", "QM9_PROPERTIES", "REGISTERED", "TAR_SUFFIXES", "TEXT_PROBE_BYTES",
    "Ani1Format", "Ani1xFormat", "Ani2xFormat", "ArrayGroupFormat", "AseDbFormat",
    "AseFramesFormat", "ConformerBlock", "DatasetFormat", "ExtxyzFormat", "Hdf5Format",
    "Md17XyzFormat", "NpzFormat", "PlainXyzFormat", "Probe", "Qm7xFormat", "Qm9XyzFormat",
    "SourceGroup", "SpiceFormat", "SpiceInputFormat", "TrajFormat", "detect_format",
    "format_names", "format_table", "mapped_atomic_numbers", "open_format", "open_hdf5",
    "smiles_charge", "stored_text", "xyz_counts_fit",
]
