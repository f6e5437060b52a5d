"""Explicit-discriminator baselines and generalization-gap measurements (ddo_lib.refine)."""
import copy

import pytest
import torch

from ddo_lib import data as data_lib
from ddo_lib import refine
from ddo_lib.edm.family import EDMFamily
from ddo_lib.edm.precond import network_from_official
from ddo_lib.reference import reference_init_kwargs
from ddo_lib.config import ReferenceConfig


class Brightness(torch.nn.Module):
    """A stand-in discriminator: logit = mean pixel − threshold (labels and σ ignored)."""

    label_dim = 0

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = torch.nn.Parameter(torch.tensor(threshold))

    def forward(self, x, sigma, labels=None):
        return x.mean(dim=(1, 2, 3)) - self.threshold


def images(value: int, n: int) -> torch.Tensor:
    return torch.full((n, 1, 8, 8), value, dtype=torch.uint8)


def test_accuracy_counts_ties_as_half():
    assert refine.accuracy(torch.tensor([1.0, 2.0]), torch.tensor([-1.0])) == 1.0
    assert refine.accuracy(torch.tensor([-1.0]), torch.tensor([1.0])) == 0.0
    assert refine.accuracy(torch.zeros(3), torch.zeros(5)) == 0.5


def test_discriminator_gap_separates_train_and_held_out_behaviour():
    labels = torch.zeros(4, dtype=torch.long)
    train = data_lib.make_dataset(images(250, 4), labels, name="bright-train", label_dim=1)
    held = data_lib.make_dataset(images(100, 4), labels, name="dim-held", label_dim=1)
    pool, fresh = (images(10, 4), labels), (images(200, 4), labels)
    gap = refine.discriminator_gap(Brightness(0.0), train, held, pool, fresh, sigma=0.1)
    assert gap["train_accuracy"] == 1.0 and gap["held_out_accuracy"] == 0.0 and gap["gap"] == 1.0
    assert gap["train_images"] == 4


def test_implicit_discriminator_is_at_chance_when_theta_equals_ref():
    images_all, labels_all = data_lib.load_digits_dataset(8)
    train = data_lib.make_dataset(images_all[:16], labels_all[:16], name="t")
    held = data_lib.make_dataset(images_all[16:24], labels_all[16:24], name="h", label_dim=10)
    torch.manual_seed(0)
    ref = network_from_official("EDMPrecond", reference_init_kwargs(ReferenceConfig(model_channels=8), resolution=8,
                                                                    channels=1, label_dim=10)).eval()
    pool, fresh = (images_all[24:40], labels_all[24:40]), (images_all[40:48], labels_all[40:48])
    gap = refine.implicit_gap(EDMFamily(), copy.deepcopy(ref), ref, train, held, pool, fresh, beta=0.5, seed=0)
    assert gap == dict(sigma=None, train_images=16, train_accuracy=0.5, held_out_accuracy=0.5, gap=0.0)


def test_sir_prefers_what_the_discriminator_likes_and_the_control_does_not():
    candidates = torch.cat([images(20, 50), images(230, 50)])
    labels = torch.cat([torch.zeros(50), torch.ones(50)]).long().repeat(1)[torch.randperm(100, generator=torch.Generator().manual_seed(0))]
    sir = refine.sir_refine(candidates, labels, Brightness(0.0), n_out=20, sigma=0.1, exponent=8.0, seed=0)
    control = refine.random_subset(candidates, labels, n_out=20, seed=0)
    assert sir.images.float().mean() > 200 and 60 < control.images.float().mean() < 190
    assert torch.bincount(sir.labels, minlength=2).tolist() == torch.bincount(control.labels, minlength=2).tolist()


def test_tables_and_summary_name_every_row():
    rows = [dict(model="reference", value=2.0, precision=0.8, recall=0.9, fd_train=3.0, fd_held_out=3.5,
                 fd_gap=0.5, seconds_per_image=0.01),
            dict(model="sir_gamma1.0", value=1.9, precision=0.85, recall=0.85, fd_train=2.9, fd_held_out=3.6,
                 fd_gap=0.7, effective_sample_size=120.0)]
    gaps = [dict(discriminator="explicit w8", sigma=0.05, train_accuracy=0.9, held_out_accuracy=0.55, gap=0.35),
            dict(discriminator="implicit (ddo)", sigma=None, train_accuracy=0.6, held_out_accuracy=0.58, gap=0.02)]
    assert "| sir_gamma1.0 | 1.900 |" in refine.score_table(rows) and "| – |" in refine.score_table(rows)
    assert "| explicit w8 | – | 0.05 | 0.900 | 0.550 | +0.350 |" in refine.gap_table(gaps)
    flat = refine.summary(rows, gaps, refine.RefineConfig())
    assert flat["sir_gamma1.0_effective_sample_size"] == 120.0 and flat["explicit_w8_sigma0.05_gap"] == 0.35
    assert flat["implicit_ddo_train_accuracy"] == 0.6


def test_smoke_config_is_small():
    cfg = refine.RefineConfig().smoke()
    assert cfg.steps < 10 and cfg.num_images <= 40
    assert cfg.discriminator(8).width == 8
    with pytest.raises(ValueError):
        refine.RefineConfig(steps=0).discriminator(8)


def test_size_axis_refits_the_discriminator_on_smaller_training_sets():
    images_all, labels_all = data_lib.load_digits_dataset(8)
    train = data_lib.make_dataset(images_all[:40], labels_all[:40], name="t", label_dim=10)
    held = data_lib.make_dataset(images_all[40:50], labels_all[40:50], name="h", label_dim=10)
    pool, fresh = (images_all[50:70], labels_all[50:70]), (images_all[70:80], labels_all[70:80])
    cfg = refine.RefineConfig(steps=3, batch_size=8, dg_width=8, gap_sigmas=(0.1, 0.5), train_fractions=(0.25, 0.5))
    rows = refine.size_axis_gaps(train, held, pool, fresh, cfg)
    assert [(r["discriminator"], r["train_images"], r["sigma"]) for r in rows] == [
        ("explicit w8 n10", 10, 0.1), ("explicit w8 n10", 10, 0.5),
        ("explicit w8 n20", 20, 0.1), ("explicit w8 n20", 20, 0.5)]
    assert all(0.0 <= r["train_accuracy"] <= 1.0 and r["gap"] == r["train_accuracy"] - r["held_out_accuracy"]
               for r in rows)
    assert "| explicit w8 n10 | 10 | 0.1 |" in refine.gap_table(rows)
    with pytest.raises(ValueError, match="train_fractions"):
        refine.size_axis_gaps(train, held, pool, fresh, refine.RefineConfig(train_fractions=(1.0,)))
