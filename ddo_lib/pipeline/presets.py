"""Paper presets: `presets/<name>.yaml` validated section by section and written into `params.yaml`.

A preset holds complete sections (data, reference, ddo, mle, plateau, evaluate, launch); sections it does
not hold keep their current `params.yaml` values. Every section is checked against its config dataclass
before anything is written (unknown keys, wrong types and bad values are errors naming the section), and
`params.yaml` is replaced atomically, so a failed preset leaves it as it was.

    python3 dev.py preset cifar10-cond        # = python -m ddo_lib.pipeline.presets cifar10-cond
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import yaml

from ddo_lib.checkpoint import atomic_write_bytes
from ddo_lib.config import ConfigError, DDOConfig, ReferenceConfig, from_dict
from ddo_lib.launch import LaunchConfig
from ddo_lib.pipeline import paths
from ddo_lib.pipeline.params import FAMILIES, DataConfig, EvaluateConfig, RefineConfig
from ddo_lib.toys.toy2d import Toy2DConfig
from ddo_lib.var.reference import VARReferenceConfig

SECTIONS = {"launch": LaunchConfig, "toy2d": Toy2DConfig, "data": DataConfig, "reference": ReferenceConfig,
            "ddo": DDOConfig, "mle": DDOConfig, "plateau": DDOConfig, "var_reference": VARReferenceConfig,
            "var_ddo": DDOConfig, "var_mle": DDOConfig, "var_plateau": DDOConfig, "refine": RefineConfig,
            "evaluate": EvaluateConfig}
TOP_LEVEL = {"smoke": bool, "families": list}
PRESET_DIR = "presets"


def available(root=None) -> list[str]:
    """Names of the presets in `presets/`."""
    return sorted(p.stem for p in (pathlib.Path(root or paths.repo_root()) / PRESET_DIR).glob("*.yaml"))


def validate(params: dict, *, where: str) -> dict:
    """`params` if every section builds its config; else a ConfigError naming the file and section."""
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, found {type(params).__name__}")
    unknown = sorted(set(params) - set(SECTIONS) - set(TOP_LEVEL))
    if unknown:
        raise ConfigError(f"{where}: unknown sections {unknown}; known: {sorted(SECTIONS) + sorted(TOP_LEVEL)}")
    for name, value in params.items():
        if name in TOP_LEVEL:
            if not isinstance(value, TOP_LEVEL[name]):
                raise ConfigError(f"{where}: {name} must be a {TOP_LEVEL[name].__name__}, found {value!r}")
            if name == "families" and (not value or not set(value) <= set(FAMILIES)):
                raise ConfigError(f"{where}: families must be a non-empty list from {list(FAMILIES)}, found {value!r}")
            continue
        try:
            from_dict(SECTIONS[name], value, where=name)
        except (ConfigError, ValueError, TypeError) as error:
            raise ConfigError(f"{where}: {error}") from error
    return params


def load(name: str, root=None) -> dict:
    """The validated sections of `presets/<name>.yaml`."""
    path = pathlib.Path(root or paths.repo_root()) / PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no preset {name!r} ({path}); available: {available(root)}")
    return validate(yaml.safe_load(path.read_text()) or {}, where=str(path))


def apply(name: str, params_file, root=None) -> dict:
    """Write `params_file` = its current sections overridden by the preset's (validated as a whole first)."""
    params_file = pathlib.Path(params_file)
    current = yaml.safe_load(params_file.read_text()) if params_file.is_file() else {}
    merged = validate({**current, **load(name, root)}, where=f"{params_file} with preset {name}")
    header = (f"# Written by `python3 dev.py preset {name}` from presets/{name}.yaml (comments there).\n"
              f"# `git checkout params.yaml` restores the default CPU profile.\n")
    atomic_write_bytes(params_file, (header + yaml.safe_dump(merged, sort_keys=False)).encode())
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 dev.py preset", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help=f"one of {available()}")
    parser.add_argument("--params", default="params.yaml", help="the params file to write")
    args = parser.parse_args(argv)
    try:
        apply(args.name, paths.resolve(args.params))
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"params.yaml now holds preset {args.name!r}; run `python3 dev.py repro` (see docs/scaling.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
