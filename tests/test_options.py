"""Each option is declared once, as a field of an options dataclass (its default and help);
the study config's section takes its defaults and descriptions from it and builds it, and the
command's flags carry the same name, default and help. This test finds any drift."""

from __future__ import annotations

from dataclasses import MISSING, fields

import pytest
from typer.main import get_command

from mlipdiv.cli import app
from mlipdiv.data.generate import GenerateOptions
from mlipdiv.design.options import DesignOptions, SplitOptions
from mlipdiv.models.spec import TrainingSpec
from mlipdiv.study.config import DataConfig, DesignConfig, ModelsConfig, SplitConfig

# (command, options dataclass, config section, fields that are no flag of the command,
#  how the config writes a declared default where it differs: a study compares several
#  selections, so it lists them; it names the QM method the options hold)
DECLARATIONS = [
    ("split", SplitOptions, SplitConfig, set(), {}),
    ("design", DesignOptions, DesignConfig, {"experiment", "grid"},
     {"molecule_selection": lambda v: [v], "conformer_selection": lambda v: [v]}),
    ("generate", GenerateOptions, DataConfig, {"method"}, {"method": lambda v: v.name}),
    ("train", TrainingSpec, ModelsConfig, {"dtype"}, {}),  # dtype: the --float64 switch
]


def _flags(command: str) -> dict:
    return {param.name: param for param in get_command(app).commands[command].params}


@pytest.mark.parametrize("command, options, section, not_flags, listed", DECLARATIONS,
                         ids=[d[0] for d in DECLARATIONS])
def test_flags_match_the_declaration(command, options, section, not_flags, listed):
    flags = _flags(command)
    for declared in fields(options):
        if declared.name in not_flags:
            continue
        flag = flags.get(declared.name)
        assert flag is not None, f"{command}: no flag for option {declared.name}"
        assert f"--{declared.name.replace('_', '-')}" in flag.opts, (command, flag.opts)
        assert flag.help == declared.metadata["help"], (command, declared.name)
        if declared.default is not MISSING:
            assert flag.default == declared.default, (command, declared.name)


@pytest.mark.parametrize("command, options, section, not_flags, listed", DECLARATIONS,
                         ids=[d[0] for d in DECLARATIONS])
def test_config_section_takes_the_declared_defaults(command, options, section, not_flags,
                                                    listed):
    declared = {f.name: f for f in fields(options)}
    shared = set(declared) & set(section.model_fields)
    assert shared, f"[{section.__name__}] shares no option with {options.__name__}"
    for name in shared:
        spec, config_field = declared[name], section.model_fields[name]
        if spec.default is MISSING or config_field.default is None:
            continue  # required by the command; the study gives its own or the declared one
        expected = listed[name](spec.default) if name in listed else spec.default
        assert config_field.default == expected, (section.__name__, name)
        if name not in listed:
            assert config_field.description == spec.metadata["help"], (section.__name__, name)


def test_sections_build_their_options():
    split = SplitConfig(st=2, sf=0.2, cf_molecules=3, ood="size:9").options(seed=5)
    assert split == SplitOptions(cf_molecules=3, st=2, sf=0.2, ood="size:9", seed=5)
    data = DataConfig(conformers=4, temperature=300.0).generate_options(seed=2)
    assert (data.conformers, data.temperature, data.seed) == (4, 300.0, 2)
    assert data.sampler == GenerateOptions(conformers=4).sampler  # left out: declared default
