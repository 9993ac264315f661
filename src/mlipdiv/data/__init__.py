"""Data layer: the conformer store, dataset import, and QM data generation/labelling."""

# `generate` itself is imported from mlipdiv.data.generate: exporting it here would hide the
# submodule of the same name.
from mlipdiv.lazy import lazy_exports

# imported when first used (`mlipdiv.lazy`)
__getattr__, __all__ = lazy_exports(__name__, {
    "generate": ("RunSummary", "label_store",),
    "options": ("GenerateOptions",),
    "identity": ("Identity", "PerceptionError", "perceive",),
    "importer": ("ImportSummary", "import_dataset",),
    "qm": ("LabelError", "QMMethod",),
    "sources": ("MoleculeFilter",),
    "store": ("ConformerStore", "MoleculeRecord", "export_extxyz",),
    "store_writer": ("StoreWriter", "write_store", "write_subset",),
})

