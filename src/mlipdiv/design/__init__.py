"""Leak-free test splits (CF/ST/SF/OOD) and the experiments' designs (fixed budget, fixed
molecules, fixed conformers per molecule: `design/experiments/`)."""

from mlipdiv.lazy import lazy_exports

# imported when first used (`mlipdiv.lazy`)
__getattr__, __all__ = lazy_exports(__name__, {
    "designs": (
        "Cell",
        "Design",
        "DesignOptions",
        "farthest_point_order",
        "inverse_distance_descriptor",
        "load_design",
        "make_design",
        "spread",
        "write_design",
    ),
    "kinds": ("TestSetKind", "test_set_kind", "test_set_kinds", "test_set_names",),
    "leaks": ("Leak", "assert_no_leaks", "find_leaks", "leak_report",),
    "ood": ("ClusterShift", "ElementShift", "OodShift", "SizeShift",),
    "split_sets": ("SplitOptions", "Splits", "SplitSet",),
    "splits": ("load_splits", "make_splits", "molecule_table", "write_splits",),
    "test_sets": ("ConformerSplit", "OutOfDistribution", "ScaffoldSplit", "StructureSplit",),
})

