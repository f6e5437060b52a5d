"""The reference model p_ref of DDO (Zheng et al. 2025, Sec. 3) as every family stores it.

A `Reference` is a network together with what rebuilds it: its class name and constructor arguments (and,
for token families, the tokenizer). Each family saves it in its own `torch.save` format read back with
`weights_only=True` (`ddo_lib.edm.reference`, `ddo_lib.var.reference`).
"""
from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class Reference:
    """A network with the constructor arguments that rebuild it."""

    net: torch.nn.Module
    class_name: str
    init_kwargs: dict
    history: list[dict] = dataclasses.field(default_factory=list)
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())


def plain(value):
    """Tuples and numpy scalars in constructor arguments as plain lists / Python numbers."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value.item() if hasattr(value, "item") and not isinstance(value, torch.Tensor) else value
