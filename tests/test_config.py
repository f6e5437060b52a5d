"""params.yaml sections become frozen dataclasses; unknown keys and wrong types are errors."""
import dataclasses
import pathlib

import pytest

from ddo_lib import config
from ddo_lib.pipeline import params

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cls,section", [(params.DataConfig, "data"), (config.ReferenceConfig, "reference"),
                                         (config.DDOConfig, "ddo"), (config.DDOConfig, "mle"),
                                         (params.EvaluateConfig, "evaluate"), (config.DDOConfig, "var_ddo"),
                                         (config.DDOConfig, "var_mle")])
def test_every_params_section_loads(cls, section):
    cfg = params.load_section(cls, REPO / "params.yaml", section)
    assert dataclasses.is_dataclass(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1 if hasattr(cfg, "seed") else None
    assert isinstance(cfg.smoke(), cls)


@pytest.mark.parametrize("channels,expected", [(8, 8), (16, 16), (32, 16)])
def test_reference_smoke_shrinks_but_never_grows_the_network(channels, expected):
    smoke = config.ReferenceConfig(model_channels=channels).smoke()
    assert smoke.model_channels == expected and smoke.steps == 20


def test_unknown_key_and_wrong_type_are_errors():
    with pytest.raises(config.ConfigError, match="unknown keys \\['lr_typo'\\]"):
        config.from_dict(config.DDOConfig, {"lr_typo": 1.0})
    with pytest.raises(config.ConfigError, match="expected int"):
        config.from_dict(config.DDOConfig, {"rounds": "two"})
    with pytest.raises(config.ConfigError, match="expected an integer, found True"):
        config.from_dict(params.DataConfig, {"seed": True})
    assert config.from_dict(config.DDOConfig, {"lr": "2e-3"}).lr == 2e-3  # YAML 1.1 reads 2e-3 as a string
    assert config.from_dict(config.ReferenceConfig, {"channel_mult": [1, 2, 2]}).channel_mult == (1, 2, 2)


def test_missing_file_and_section():
    with pytest.raises(FileNotFoundError):
        params.load_section(params.DataConfig, REPO / "nope.yaml", "data")
    with pytest.raises(config.ConfigError, match="no section 'nope'"):
        params.load_section(params.DataConfig, REPO / "params.yaml", "nope")


def test_flag_rejects_strings():
    assert params.flag(False) is False
    with pytest.raises(config.ConfigError, match="papermill"):
        params.flag("false")


def test_override_replaces_and_validates():
    base = config.DDOConfig()
    changed = config.override(base, {"seed": 3, "variant": "ns", "lr": 1})
    assert (changed.seed, changed.variant, changed.lr) == (3, "ns", 1.0)
    assert config.override(base, None) is base and config.override(base, {}) is base
    with pytest.raises(config.ConfigError, match="unknown keys"):
        config.override(base, {"sed": 3})
    with pytest.raises(config.ConfigError, match="expected an integer"):
        config.override(base, {"seed": True})
    with pytest.raises(config.ConfigError, match="mapping"):
        config.override(base, "seed=3")


DEFAULT_SECTIONS = [("ddo_lib.config", "ReferenceConfig", "reference"), ("ddo_lib.config", "DDOConfig", "ddo"),
                    ("ddo_lib.pipeline.params", "DataConfig", "data"),
                    ("ddo_lib.pipeline.params", "EvaluateConfig", "evaluate"),
                    ("ddo_lib.pipeline.params", "RefineConfig", "refine"),
                    ("ddo_lib.var.reference", "VARReferenceConfig", "var_reference"),
                    ("ddo_lib.toys.toy2d", "Toy2DConfig", "toy2d")]


@pytest.mark.parametrize("module,name,section", DEFAULT_SECTIONS, ids=[s[2] for s in DEFAULT_SECTIONS])
def test_dataclass_defaults_equal_the_default_profile(module, name, section):
    """One source of truth: a config built with no arguments is the default profile's section."""
    import dataclasses
    import importlib

    cls = getattr(importlib.import_module(module), name)
    from_file = params.load_section(cls, REPO / "params.yaml", section)
    default = cls()
    differing = {f.name: (getattr(default, f.name), getattr(from_file, f.name)) for f in dataclasses.fields(cls)
                 if getattr(default, f.name) != getattr(from_file, f.name)}
    assert not differing, f"{name} defaults differ from params.yaml `{section}` (default, file): {differing}"
