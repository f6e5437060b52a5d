"""The official tiny VAR pair as released-format files: `var.pth` and `vae.pth`, plain state dicts written
from the official fixtures (FoundationVision/VAR architectures, random weights; fixtures README §7)."""
from __future__ import annotations

import pathlib

import torch

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "official"  # tests/fixtures/official


def fixture(name: str) -> dict:
    """One official fixture file, read weights-only."""
    return torch.load(FIXTURES / name, weights_only=True)


def vqvae_state_dict() -> dict[str, torch.Tensor]:
    """The tiny official VQVAE's weights, dequantised from their int8 grid as the fixtures prescribe."""
    vae = fixture("var_tiny_vae.pt")
    return {k: vae["state_dict_int8"][k].float() * 2.0 ** vae["state_dict_exp2"][k] if k in vae["state_dict_int8"]
            else vae["state_dict_float32"][k] for k in vae["state_dict_keys"]}


def write_official_var_pair(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """(var.pth, vae.pth) in `folder`: the released file format (torch.save of a plain state dict). The VAR
    has 10 classes, depth 2, patch_nums (1, 2, 3, 4): 64-px images."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(fixture("var_tiny.pt")["var_state_dict"], folder / "var.pth")
    torch.save(vqvae_state_dict(), folder / "vae.pth")
    return folder / "var.pth", folder / "vae.pth"
