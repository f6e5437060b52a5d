"""Final evaluation bookkeeping: identical networks are scored once, records keep every model."""
import copy

import numpy as np
import pytest
import torch

from ddo_lib import data as data_lib
from ddo_lib.eval import features
from ddo_lib.pipeline import evaluation as evaluate
from ddo_lib.pipeline.params import EvaluateConfig


class NoiseFamily:
    """Images = clamp(128 + 40·bias + seeded noise): deterministic in (net, seed); counts sample calls."""

    def __init__(self):
        self.calls = 0

    def sample(self, net, seeds, labels):
        self.calls += 1
        rows = [torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(s)) for s in seeds]
        return (128 + 40 * net.bias.detach() + 30 * torch.stack(rows)).clamp(0, 255).to(torch.uint8)


def test_identical_networks_are_scored_once_and_keep_their_rows(tmp_path):
    images, labels = data_lib.load_digits_dataset(8)
    real = data_lib.make_dataset(images[:200], labels[:200], name="real")
    torch.manual_seed(0)
    path = features.save_classifier(tmp_path / "c.pt", features.DigitClassifier(channels=1, resolution=8,
                                                                               num_classes=10))
    ref = torch.nn.Linear(1, 1)
    same, other = copy.deepcopy(ref), copy.deepcopy(ref)
    with torch.no_grad():
        other.bias.add_(1.0)
    models = [evaluate.Evaluated("reference", ref, 0, 0.0), evaluate.Evaluated("ddo_round1", same, 1, 0.1),
              evaluate.Evaluated("ddo_round2", other, 2, 0.2)]
    family = NoiseFamily()
    cfg = EvaluateConfig(num_images=60, seed_offsets=(0, 1000))
    records = evaluate.evaluate_models(family, models, real, path, cfg)
    assert family.calls == 2 * 2  # two distinct networks × two seed offsets
    assert [r["model"] for r in records] == ["reference", "ddo_round1", "ddo_round2"]
    assert records[0]["value"] == records[1]["value"] != records[2]["value"]
    assert records[1]["round"] == 1 and records[1]["compute_fraction"] == 0.1
    alone = evaluate.evaluate_models(NoiseFamily(), models[2:], real, path, cfg)
    assert alone[0]["value"] == records[2]["value"]


def test_fid_metric_scores_with_inception_and_cached_reference_statistics(tmp_path, inception_weights_file):
    """`evaluate.metric: fid`: Inception features of the generated images against reference statistics that
    are computed from the real images once and cached at `reference_stats`; precision/recall in blocks."""
    images, labels = data_lib.load_digits_dataset(8)
    real = data_lib.make_dataset(images[:16], labels[:16], name="real")
    net = torch.nn.Linear(1, 1)
    cfg = EvaluateConfig(num_images=8, metric="fid", batch_size=6, inception_weights=str(inception_weights_file),
                         reference_stats=str(tmp_path / "stats.npz"), precision_recall_images=6, spread_repeats=2)
    (record,) = evaluate.evaluate_models(NoiseFamily(), [evaluate.Evaluated("reference", net, 0, 0.0)], real, None, cfg)
    assert (tmp_path / "stats.npz").is_file()
    assert record["metric"] == "fid" and record["extractor"] == "inception-v3-compat" and record["num_images"] == 8
    assert record["value"] > 0 and 0 <= record["precision"] <= 1 and record["precision_recall_images"] == 6
    assert record["reference_stats"] == str(tmp_path / "stats.npz")
    with np.load(tmp_path / "stats.npz") as archive:
        assert archive["mu"].shape == (2048,) and archive["sigma"].shape == (2048, 2048)


def test_fid_needs_reference_statistics():
    images, labels = data_lib.load_digits_dataset(8)
    real = data_lib.make_dataset(images[:4], labels[:4], name="real")
    with pytest.raises(ValueError, match="reference_stats"):
        evaluate.scorer(EvaluateConfig(metric="fid"), real, None)


def test_an_unknown_metric_is_an_error_not_a_label():
    images, labels = data_lib.load_digits_dataset(8)
    real = data_lib.make_dataset(images[:4], labels[:4], name="real")
    with pytest.raises(ValueError, match=r"evaluate.metric must be one of \['fd_digits', 'fid'\], found 'FID'"):
        evaluate.scorer(EvaluateConfig(metric="FID"), real, None)
