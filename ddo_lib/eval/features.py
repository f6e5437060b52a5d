"""Domain feature extractor: a small classifier trained by the pipeline on the training split.

Inception features of 8×8 digits are meaningless (and the Inception weights are not available
offline), so the CPU profile measures a Fréchet distance in the penultimate-layer features of a
classifier trained on the data set itself (in the spirit of the "FID with a domain network" used for
MNIST-like data). Its held-out accuracy is reported next to every metric that uses it.
"""
from __future__ import annotations

import io
import pathlib

import torch
import torch.nn.functional as F
from torch import nn

from ddo_lib import data as data_lib
from ddo_lib.checkpoint import atomic_write_bytes

FORMAT = "ddo_lib.classifier/1"
FIDELITY_NAME = "ddo-domain-classifier"
ACCURACY_BATCH = 1024  # images per forward of `classifier_accuracy` (decoded batch by batch)


class DigitClassifier(nn.Module):
    """Conv net for small images: uint8 [N, C, H, W] -> logits [N, num_classes]; `features` -> [N, width]."""

    def __init__(self, *, channels: int, resolution: int, num_classes: int, width: int = 128):
        super().__init__()
        self.channels, self.resolution, self.num_classes, self.width = channels, resolution, num_classes, width
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.SiLU(),
            nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.SiLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(64 * 4, width), nn.SiLU())
        self.head = nn.Linear(width, num_classes)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[-1] != self.resolution or images.shape[-2] != self.resolution:
            raise ValueError(f"classifier: expected [N, {self.channels}, {self.resolution}, {self.resolution}], "
                             f"found {list(images.shape)}")
        x = images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float()
        if x.shape[1] == 3 and self.channels == 1:  # torch-fidelity repeats grey images to RGB
            x = x.mean(dim=1, keepdim=True)
        if x.shape[1] != self.channels:
            raise ValueError(f"classifier: expected {self.channels} channels, found {x.shape[1]}")
        return x

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(self._prepare(images))  # [N, width]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))  # [N, num_classes]


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random ±1-pixel shifts (zero padding): the features should not hinge on exact placement."""
    shifts = torch.randint(-1, 2, (2,), generator=generator).tolist()
    padded = F.pad(images, (1, 1, 1, 1))
    h, w = images.shape[-2:]
    return padded[..., 1 + shifts[0]:1 + shifts[0] + h, 1 + shifts[1]:1 + shifts[1] + w]


def train_classifier(images: torch.Tensor, labels: torch.Tensor, *, num_classes: int, steps: int = 800,
                     batch_size: int = 128, lr: float = 2e-3, seed: int = 0) -> DigitClassifier:
    """Train a DigitClassifier with Adam; deterministic given `seed` on CPU. Returns it in eval mode."""
    if len(images) != len(labels) or labels.min() < 0:
        raise ValueError(f"train_classifier: need one label >= 0 per image, found {len(images)} images, "
                         f"{len(labels)} labels, min label {labels.min().item()}")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitClassifier(channels=images.shape[1], resolution=images.shape[-1], num_classes=num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps):  # each batch decoded on its own: streamed (ImageNet) sets are never loaded whole
        index = torch.randint(len(images), (batch_size,), generator=generator)
        x = data_lib.to_float(data_lib.take(images, index))                 # [B, C, H, W]
        loss = F.cross_entropy(model(_augment(x, generator)), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval().requires_grad_(False)


@torch.no_grad()
def classifier_accuracy(model: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Top-1 accuracy on (images, labels); None for no images (an empty held-out split)."""
    if len(images) == 0:
        return None
    hits = [(model(data_lib.take(images, index)).argmax(dim=1) == labels[index]).sum()
            for index in torch.arange(len(images)).split(ACCURACY_BATCH)]
    return (torch.stack(hits).sum() / len(images)).item()


def save_classifier(path, model: DigitClassifier, **meta) -> pathlib.Path:
    """Atomic torch.save of weights + constructor arguments (+ e.g. held-out accuracy)."""
    payload = dict(format=FORMAT, state_dict=model.state_dict(), meta=meta,
                   kwargs=dict(channels=model.channels, resolution=model.resolution,
                               num_classes=model.num_classes, width=model.width))
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_classifier(path) -> DigitClassifier:
    """Read a classifier written by `save_classifier` (weights_only)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier file not found: {path} (the data stage writes it)")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: expected a ddo_lib classifier file (format {FORMAT!r})")
    model = DigitClassifier(**payload["kwargs"])
    model.load_state_dict(payload["state_dict"])
    model.meta = payload["meta"]
    return model.eval().requires_grad_(False)
