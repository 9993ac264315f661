"""Data layer: the conformer store, dataset import, and QM data generation/labelling."""

# `generate` itself is imported from mlipdiv.data.generate: exporting it here would hide the
# submodule of the same name.
from mlipdiv.data.generate import GenerateOptions, RunSummary, label_store
from mlipdiv.data.identity import Identity, PerceptionError, perceive
from mlipdiv.data.importer import ImportSummary, import_dataset
from mlipdiv.data.qm import LabelError, QMMethod
from mlipdiv.data.sources import MoleculeFilter
from mlipdiv.data.store import ConformerStore, MoleculeRecord, export_extxyz
from mlipdiv.data.store_writer import StoreWriter, write_store, write_subset

__all__ = [
    "ConformerStore",
    "GenerateOptions",
    "Identity",
    "ImportSummary",
    "LabelError",
    "MoleculeFilter",
    "MoleculeRecord",
    "PerceptionError",
    "QMMethod",
    "RunSummary",
    "StoreWriter",
    "export_extxyz",
    "import_dataset",
    "label_store",
    "perceive",
    "write_store",
    "write_subset",
]
