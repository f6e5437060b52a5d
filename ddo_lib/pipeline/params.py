"""params.yaml: sections read into frozen configs, and the pipeline's own sections.

Each pipeline stage reads exactly one section. Unknown keys and wrong types are errors; booleans passed
to notebooks are checked (`flag`). Defaults equal the default profile's `params.yaml` (a test checks it).
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import torch
import yaml

from ddo_lib.config import ConfigError, from_dict
from ddo_lib.launch import LaunchConfig, allow_tf32, resolve_device


def load_section(cls: type, params_file: str | pathlib.Path, section: str) -> Any:
    """Read `section` of a params.yaml file into the dataclass `cls`."""
    path = pathlib.Path(params_file)
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path}")
    params = yaml.safe_load(path.read_text()) or {}
    if section not in params:
        raise ConfigError(f"{path}: no section '{section}'; found {sorted(params)}")
    return from_dict(cls, params[section], where=section)


FAMILIES = ("edm", "var")


def configured_families(params_file) -> list[str]:
    """The model families this params file runs (top-level `families`; both when absent)."""
    path = pathlib.Path(params_file)
    value = (yaml.safe_load(path.read_text()) or {}).get("families", list(FAMILIES))
    if not isinstance(value, list) or not value or not set(value) <= set(FAMILIES) or len(set(value)) < len(value):
        raise ConfigError(f"{path}: families must be a non-empty list of distinct names from {list(FAMILIES)}, "
                          f"found {value!r}")
    return value


def check_configured(params_file, family: str) -> str:
    """`family` if the params file runs it; else a ConfigError (e.g. the digits VAR stages under a CIFAR-10
    preset: `python3 dev.py repro` runs only the configured families' stages)."""
    configured = configured_families(params_file)
    if family not in configured:
        raise ConfigError(f"{params_file}: family {family!r} is not in `families: {configured}`, so its stages do "
                          f"not apply; `python3 dev.py repro` runs only {repro_targets(params_file)}")
    return family


def repro_targets(params_file) -> list[str]:
    """`dvc repro` targets for the configured families: none (the whole pipeline, report included) when
    every family runs, else each family's evaluation stage (which pulls in its reference and rounds)."""
    configured = configured_families(params_file)
    return [] if set(configured) == set(FAMILIES) else [f"evaluate@{family}" for family in configured]


def launch_settings(params_file) -> tuple[LaunchConfig, torch.device]:
    """The `launch` section and the device this process's work runs on (TF32 allowed on CUDA): under
    torchrun `cuda:LOCAL_RANK`. `nproc > 1` is honoured by the stages that start torchrun
    (`ddo_lib.pipeline.launcher`)."""
    cfg = load_section(LaunchConfig, params_file, "launch")
    device = resolve_device(cfg.device)
    allow_tf32(device)
    return cfg, device


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Dataset preparation (notebook 01)."""

    source: str = "digits"          # 'digits' or a path: .npz, EDM dataset zip, cifar-10-python.tar.gz, or an
                                    # ImageNet-style folder (train/<wnid>/*.JPEG) / zip of one, streamed
    resolution: int = 8             # digits: 8, 16 or 32; image folders: the crop size (e.g. 256)
    crop: str = "center"            # image folders: 'center' or 'random' crop after VAR's resize (digits: unused)
    held_out_fraction: float = 0.2  # stratified held-out split; 0: train on everything (no real-data floor)
    seed: int = 0                   # split seed
    classifier_steps: int = 800     # domain feature extractor training (Adam steps, batch 128)
    dequantize: bool = True         # digits only: uniform dequantization of the 17 grey levels
    use_labels: bool = True         # false: unconditional (the prepared sets carry no labels; the selection
                                    # metric's feature extractor still trains on the source's labels)

    def __post_init__(self):
        if not 0.0 <= self.held_out_fraction < 1.0:
            raise ValueError(f"data.held_out_fraction must lie in [0, 1), found {self.held_out_fraction}")
        if self.crop not in ("center", "random"):
            raise ValueError(f"data.crop must be 'center' or 'random', found {self.crop!r}")

    def smoke(self) -> "DataConfig":
        return dataclasses.replace(self, classifier_steps=30)


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """Final evaluation (notebook 04). At GPU scale: num_images 50000, seed_offsets [0, 50000, 100000]."""

    num_images: int = 2000                  # generated images per model (class-balanced labels)
    seed_offsets: tuple[int, ...] = (0,)    # one run per offset; the reported value is the minimum (EDM)
    sample_steps: int = 18                  # Heun steps (NFE = 2N - 1)
    batch_size: int = 500                   # sampling batch
    metric: str = "fd_digits"               # fd_digits (the data stage's classifier) | fid (Inception)
    paper_value: float | None = None        # the paper's number for this setting, if any
    spread_repeats: int = 8                 # the reference is also scored on this many disjoint seed sets
                                            # (`ddo_lib.seeds.spread_seeds`): the metric's spread (sd)
    var_cfg: float = 1.0                    # VAR sampling guidance (official 1.0 ramp; 0 = guidance-free)
    var_top_k: int = 0                      # VAR top-k sampling (0 = off; VAR's FID "tricks": 900)
    var_top_p: float = 0.0                  # VAR top-p sampling (0 = off; tricks: 0.96)
    label_protocol: str = "balanced"        # balanced (class i mod C: 50 per class for 50k ImageNet images, the
                                            # VAR/ADM protocol) | random (class from the seed: EDM generate.py)
    inception_weights: str | None = None    # metric fid: torch-fidelity's weights-inception-2015-12-05-6726825d.pth
    reference_stats: str | None = None      # metric fid: EDM/ADM .npz or EDM2 .pkl; computed from the data and
                                            # cached there when the file does not exist
    precision_recall_images: int = 10000    # metric fid: precision/recall on the first N generated and real images

    def smoke(self) -> "EvaluateConfig":
        return dataclasses.replace(self, num_images=40, sample_steps=3, batch_size=40,
                                   spread_repeats=min(self.spread_repeats, 2),
                                   precision_recall_images=min(self.precision_recall_images, 40))


@dataclasses.dataclass(frozen=True)
class RefineConfig:
    """params.yaml section `refine` (studies pipeline, notebook 07)."""

    widths: tuple[int, ...] = (8, 32)       # discriminator capacities (first conv stage channels)
    steps: int = 1000                       # discriminator Adam steps
    batch_size: int = 64
    lr: float = 1e-3
    dg_weights: tuple[float, ...] = (1.0, 2.0)   # DG w (Kim et al.: 1 conditional, 2 unconditional CIFAR-10)
    dg_width: int = 32                      # the discriminator used for DG and SIR
    sir_factor: int = 4                     # candidates per output image
    sir_sigma: float = 0.5                  # σ at which the SIR logit is read
    sir_exponents: tuple[float, ...] = (0.25, 1.0)
    gap_sigmas: tuple[float, ...] = (0.05, 0.2, 0.5)
    train_fractions: tuple[float, ...] = (0.25, 0.5)  # smaller training sets for the dg_width discriminator
    beta: float = 0.5                       # β of DDO's implicit discriminator (the ddo section's)
    num_images: int = 2000                  # generated images per scored model (evaluation seeds 0..N−1)
    sample_steps: int = 18
    seed: int = 0

    def smoke(self) -> "RefineConfig":
        return dataclasses.replace(self, widths=(8,), steps=5, dg_weights=(1.0,), dg_width=8, sir_factor=2,
                                   sir_exponents=(1.0,), gap_sigmas=(0.2,), num_images=40, sample_steps=3,
                                   train_fractions=(0.5,))

    def subset_seed(self) -> int:
        """Seed of the training-set-size subsets (`ddo_lib.pipeline.subsets`): shared by the explicit
        discriminators refitted on them and the DDO/MLE runs of the studies pipeline."""
        return self.seed + 1



def flag(value: Any, name: str = "smoke") -> bool:
    """A boolean notebook parameter; papermill `-p x false` would pass the (truthy) string 'false'."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: expected true/false, found {type(value).__name__} {value!r} "
                          f"(pass booleans with papermill -y 'name: false', not -p)")
    return value


