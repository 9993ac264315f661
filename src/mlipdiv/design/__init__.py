"""Leak-free test splits (CF/ST/SF/OOD) and the experiments' designs (fixed budget, fixed
molecules, fixed conformers per molecule: `design/experiments/`)."""

from mlipdiv.design.designs import (
    Cell,
    Design,
    DesignOptions,
    farthest_point_order,
    inverse_distance_descriptor,
    load_design,
    make_design,
    spread,
    write_design,
)
from mlipdiv.design.kinds import TestSetKind, test_set_kind, test_set_kinds, test_set_names
from mlipdiv.design.leaks import Leak, assert_no_leaks, find_leaks, leak_report
from mlipdiv.design.ood import ClusterShift, ElementShift, OodShift, SizeShift
from mlipdiv.design.split_sets import SplitOptions, Splits, SplitSet
from mlipdiv.design.splits import load_splits, make_splits, molecule_table, write_splits
from mlipdiv.design.test_sets import (
    ConformerSplit,
    OutOfDistribution,
    ScaffoldSplit,
    StructureSplit,
)

__all__ = [
    "Cell",
    "ClusterShift",
    "ConformerSplit",
    "Design",
    "DesignOptions",
    "ElementShift",
    "Leak",
    "OodShift",
    "OutOfDistribution",
    "ScaffoldSplit",
    "SizeShift",
    "SplitOptions",
    "SplitSet",
    "Splits",
    "StructureSplit",
    "TestSetKind",
    "assert_no_leaks",
    "farthest_point_order",
    "find_leaks",
    "inverse_distance_descriptor",
    "leak_report",
    "load_design",
    "load_splits",
    "make_design",
    "make_splits",
    "molecule_table",
    "spread",
    "test_set_kind",
    "test_set_kinds",
    "test_set_names",
    "write_design",
    "write_splits",
]
