"""Sampling for metrics, and the selection metric that picks the best EMA step inside DDO rounds.

Selection scores the Fréchet distance in classifier features against the training images on its own
seeds (`ddo_lib.seeds.selection_seeds`), so the evaluation seeds never choose a model.
"""
from __future__ import annotations

import torch

from ddo_lib import data as data_lib
from ddo_lib import seeds as seeds_lib
from ddo_lib.eval import features, metrics

SELECTION_IMAGES = 500        # images per selection evaluation (smoke: 40)
SELECTION_REAL_IMAGES = 10000  # at most this many training images (evenly spaced) give the real statistics


LABEL_PROTOCOLS = ("balanced", "random")


def generate_for_metric(family, net, *, seeds: range, label_dim: int, label_protocol: str = "balanced",
                        positions: list[int] | None = None) -> torch.Tensor:
    """uint8 images [N, C, H, W] for the N `seeds` (or only for `seeds[p]`, p in `positions`: one rank's
    share of a sharded metric, with the labels those seeds have in the whole set).

    label_protocol 'balanced': class i mod C for the i-th seed (DDO's EDM2 sampler, VAR's 50 per class);
    'random': the class drawn from each seed's own generator (EDM `generate.py`, the CIFAR-10 protocol;
    EDM family only)."""
    if label_protocol not in LABEL_PROTOCOLS:
        raise ValueError(f"label_protocol must be one of {list(LABEL_PROTOCOLS)}, found {label_protocol!r}")
    positions = list(range(len(seeds))) if positions is None else list(positions)
    chosen = [seeds[p] for p in positions]
    if label_protocol == "random" and label_dim:
        if getattr(family, "name", "") != "edm":
            raise ValueError(f"label_protocol 'random' draws the class from the seed as EDM does; the "
                             f"{getattr(family, 'name', type(family).__name__)} family needs 'balanced'")
        return family.sample(net, chosen, None)
    labels = torch.tensor(positions, dtype=torch.int64) % label_dim if label_dim else None
    return family.sample(net, chosen, labels)


def selection_metric(family, classifier_path, dataset, *, smoke: bool = False,
                     num_images: int = SELECTION_IMAGES):
    """A MetricFn(net, round) -> Fréchet distance in classifier features vs the training images (at most
    SELECTION_REAL_IMAGES of them, evenly spaced: all of the digits, a fifth of CIFAR-10). The real
    statistics are computed at the first call (only the process that scores pays for them)."""
    extractor = features.load_classifier(classifier_path)
    real = []
    chosen = seeds_lib.selection_seeds(40 if smoke else num_images)
    subset = torch.linspace(0, len(dataset.images) - 1, min(len(dataset.images), SELECTION_REAL_IMAGES)).long()

    def metric(net: torch.nn.Module, round_index: int) -> float:
        if not real:
            real.extend(metrics.feature_statistics(metrics.extract_features(extractor, dataset.images[subset])))
        images = generate_for_metric(family, net, seeds=chosen, label_dim=dataset.label_dim)
        fake = metrics.feature_statistics(metrics.extract_features(extractor, images))
        return metrics.frechet_distance(*fake, *real)

    return metric
