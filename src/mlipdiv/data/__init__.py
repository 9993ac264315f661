"""Data layer: the conformer store, dataset import, and QM data generation/labelling."""

from mlipdiv.data.identity import Identity, PerceptionError, perceive
from mlipdiv.data.importer import ImportSummary, import_dataset
from mlipdiv.data.qm import LabelError, QMMethod
from mlipdiv.data.store import (
    ConformerStore,
    MoleculeRecord,
    StoreWriter,
    export_extxyz,
    write_store,
    write_subset,
)

__all__ = [
    "ConformerStore",
    "Identity",
    "ImportSummary",
    "LabelError",
    "MoleculeRecord",
    "PerceptionError",
    "QMMethod",
    "StoreWriter",
    "export_extxyz",
    "import_dataset",
    "perceive",
    "write_store",
    "write_subset",
]
