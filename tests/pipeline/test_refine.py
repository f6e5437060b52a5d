"""Explicit-discriminator baselines and generalization-gap measurements (ddo_lib.pipeline.refine)."""
import copy

import pytest
import torch

from ddo_lib import data as data_lib
from ddo_lib.config import ReferenceConfig
from ddo_lib.edm.family import EDMFamily
from ddo_lib.edm.precond import network_from_official
from ddo_lib.edm.reference import reference_init_kwargs
from ddo_lib.pipeline import params, refine, subsets


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


def test_accuracy_se_is_the_binomial_standard_error():
    real, fake = torch.tensor([1.0, -1.0, 1.0, 1.0]), torch.tensor([-1.0, -1.0])
    assert refine.accuracy_se(real, fake) == pytest.approx(0.5 * (0.75 * 0.25 / 4) ** 0.5)
    # Monte Carlo oracle: the sd of the balanced accuracy over repeated samples at p_r = 0.7, p_f = 0.6
    generator = torch.Generator().manual_seed(0)
    draws = [refine.accuracy(torch.where(torch.rand(200, generator=generator) < 0.7, 1.0, -1.0),
                             torch.where(torch.rand(100, generator=generator) < 0.6, -1.0, 1.0)) for _ in range(3000)]
    expected = 0.5 * (0.7 * 0.3 / 200 + 0.6 * 0.4 / 100) ** 0.5
    assert torch.tensor(draws).std().item() == pytest.approx(expected, rel=0.06)


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
    assert gap == dict(sigma=None, train_images=16, train_accuracy=0.5, held_out_accuracy=0.5, gap=0.0,
                       gap_se=pytest.approx((0.25 * (0.25 / 16 + 0.25 / 16) + 0.25 * (0.25 / 8 + 0.25 / 8)) ** 0.5))


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
    flat = refine.summary(rows, gaps, params.RefineConfig())
    assert flat["sir_gamma1.0_effective_sample_size"] == 120.0 and flat["explicit_w8_sigma0.05_gap"] == 0.35
    assert flat["implicit_ddo_train_accuracy"] == 0.6


def test_smoke_config_is_small():
    cfg = params.RefineConfig().smoke()
    assert cfg.steps < 10 and cfg.num_images <= 40
    assert refine.discriminator_config(cfg, 8).width == 8
    with pytest.raises(ValueError):
        refine.discriminator_config(params.RefineConfig(steps=0), 8)


def test_size_axis_refits_the_discriminator_on_smaller_training_sets():
    images_all, labels_all = data_lib.load_digits_dataset(8)
    train = data_lib.make_dataset(images_all[:40], labels_all[:40], name="t", label_dim=10)
    held = data_lib.make_dataset(images_all[40:50], labels_all[40:50], name="h", label_dim=10)
    pool, fresh = (images_all[50:70], labels_all[50:70]), (images_all[70:80], labels_all[70:80])
    cfg = params.RefineConfig(steps=3, batch_size=8, dg_width=8, gap_sigmas=(0.1, 0.5), train_fractions=(0.25, 0.5))
    fitted = refine.fit_size_axis(train, pool, cfg)
    assert sorted(fitted) == [10, 20] and all(len(part.images) == n for n, (part, _) in fitted.items())
    rows = refine.size_axis_gaps(fitted, held, pool, fresh, cfg)
    assert [(r["discriminator"], r["train_images"], r["sigma"]) for r in rows] == [
        ("explicit w8 n10", 10, 0.1), ("explicit w8 n10", 10, 0.5),
        ("explicit w8 n20", 20, 0.1), ("explicit w8 n20", 20, 0.5)]
    assert all(0.0 <= r["train_accuracy"] <= 1.0 and r["gap"] == r["train_accuracy"] - r["held_out_accuracy"]
               for r in rows)
    assert "| explicit w8 n10 | 10 | 0.1 |" in refine.gap_table(rows)
    with pytest.raises(ValueError, match="train_fractions"):
        refine.fit_size_axis(train, pool, params.RefineConfig(train_fractions=(1.0,)))


def test_size_axis_uses_the_shared_subsets(monkeypatch):
    """The explicit discriminator of each size is fitted on `subsets.fraction_subset(train, f, seed + 1)`."""
    images_all, labels_all = data_lib.load_digits_dataset(8)
    train = data_lib.make_dataset(images_all[:40], labels_all[:40], name="t", label_dim=10)
    seen = []

    def fake_fit(real, fake, **kwargs):
        seen.append(real)
        return Brightness(0.0), None

    monkeypatch.setattr(refine, "train_discriminator", fake_fit)
    cfg = params.RefineConfig(train_fractions=(0.25,), gap_sigmas=(0.1,), seed=5)
    fitted = refine.fit_size_axis(train, (images_all[:4], labels_all[:4]), cfg)
    assert torch.equal(seen[0], subsets.fraction_subset(train, 0.25, 6).images)
    assert torch.equal(fitted[10][0].images, seen[0])


def test_implicit_size_gaps_name_each_network_by_its_training_size():
    images_all, labels_all = data_lib.load_digits_dataset(8)
    part = data_lib.make_dataset(images_all[:12], labels_all[:12], name="p", label_dim=10)
    held = data_lib.make_dataset(images_all[12:20], labels_all[12:20], name="h", label_dim=10)
    torch.manual_seed(0)
    ref = network_from_official("EDMPrecond", reference_init_kwargs(ReferenceConfig(model_channels=8), resolution=8,
                                                                    channels=1, label_dim=10)).eval()
    moved = copy.deepcopy(ref)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pool, fresh = (images_all[20:32], labels_all[20:32]), (images_all[32:40], labels_all[32:40])
    rows = refine.implicit_size_gaps(EDMFamily(), ref, {"ddo": moved, "mle": copy.deepcopy(ref)}, part, held, pool,
                                     fresh, beta=0.5, seed=0)
    assert [(r["discriminator"], r["train_images"]) for r in rows] == [("implicit (ddo) n12", 12),
                                                                      ("implicit (mle) n12", 12)]
    assert rows[1]["gap"] == 0.0 and rows[1]["train_accuracy"] == 0.5  # θ = ref: chance on both sides
    assert rows[0]["train_accuracy"] != 0.5                              # a moved θ separates something
    assert rows[0] == dict(discriminator="implicit (ddo) n12", **refine.implicit_gap(
        EDMFamily(), moved, ref, part, held, pool, fresh, beta=0.5, seed=0))


def test_size_series_groups_rows_into_curves_over_the_training_size(tmp_path):
    gaps = [dict(discriminator="explicit w32", sigma=0.2, train_images=1438, gap=0.2),
            dict(discriminator="explicit w32 n360", sigma=0.2, train_images=360, gap=0.5),
            dict(discriminator="explicit w32 n360", sigma=0.5, train_images=360, gap=0.3),
            dict(discriminator="implicit (ddo)", sigma=None, train_images=1438, gap=0.05),
            dict(discriminator="implicit (ddo) n360", sigma=None, train_images=360, gap=0.1, gap_se=0.03),
            dict(discriminator="explicit w8", sigma=0.2, train_images=1438, gap=0.09)]
    series = refine.size_series(gaps)
    assert series == {"explicit w32 σ=0.2": [(360, 0.5, 0.0), (1438, 0.2, 0.0)],
                      "explicit w32 σ=0.5": [(360, 0.3, 0.0)],
                      "implicit (ddo)": [(360, 0.1, 0.03), (1438, 0.05, 0.0)],
                      "explicit w8 σ=0.2": [(1438, 0.09, 0.0)]}
    assert refine.gap_table([dict(gaps[4], train_accuracy=0.6, held_out_accuracy=0.5)]).endswith(
        "| implicit (ddo) n360 | 360 | – | 0.600 | 0.500 | +0.100 ± 0.030 |\n")
    assert refine.plot_size_axis(gaps, tmp_path / "size.png").stat().st_size > 1000


def test_refinement_variants_are_named_by_weight_exponent_and_size():
    candidates = torch.cat([images(20, 10), images(230, 10)])
    labels = torch.zeros(20, dtype=torch.long)
    cfg = params.RefineConfig(num_images=5, sir_exponents=(0.5, 2.0), sir_sigma=0.1)
    picked = refine.sir_variants(candidates, labels, Brightness(0.0), cfg, suffix="_n360")
    assert list(picked) == ["sir_gamma0.5_n360", "sir_gamma2.0_n360"]
    assert all(len(r.images) == 5 for r in picked.values())
    assert picked["sir_gamma2.0_n360"].images.float().mean() > 200  # the tilt prefers the bright candidates
    guided = refine.guided_variants(Brightness(0.5), Brightness(0.0), (1.0, 2.0))  # a stand-in net
    assert list(guided) == ["dg_w1.0", "dg_w2.0"] and guided["dg_w2.0"].weight == 2.0


def test_score_refuses_a_training_set_smaller_than_the_held_out_set():
    images_all, labels_all = data_lib.load_digits_dataset(8)
    small = data_lib.make_dataset(images_all[:5], labels_all[:5], name="s", label_dim=10)
    held = data_lib.make_dataset(images_all[5:15], labels_all[5:15], name="h", label_dim=10)
    with pytest.raises(ValueError, match="5 training images < 10 held-out"):
        refine.score("ddo_n5", images_all[:10], held, small, held, extractor=None, seed=0)


def test_sample_each_samples_a_network_listed_twice_once():
    class CountingFamily:
        calls = 0

        def sample(self, net, seeds, labels):
            CountingFamily.calls += 1
            return torch.full((len(seeds), 1, 8, 8), net.threshold.item(), dtype=torch.uint8)

    ref, other = Brightness(3.0), Brightness(7.0)
    samples = refine.sample_each(CountingFamily(), {"reference": ref, "ddo": other, "reference_n360": ref},
                                 range(4), torch.zeros(4, dtype=torch.long))
    assert CountingFamily.calls == 2 and list(samples) == ["reference", "ddo", "reference_n360"]
    assert samples["reference_n360"] is samples["reference"] and int(samples["ddo"][0][0, 0, 0, 0]) == 7
