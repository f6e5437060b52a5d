"""MLE pretraining of the reference: learning-rate schedules and exact resumption."""
import math

import pytest
import torch

from ddo_lib import data as data_lib
from ddo_lib.config import ReferenceConfig
from ddo_lib.edm import pretrain
from ddo_lib.edm.precond import network_from_official
from ddo_lib.edm.reference import reference_init_kwargs


def test_scheduled_lr_warmup_constant_and_cosine():
    assert pretrain.scheduled_lr(1.0, 0, 100, 10) == pytest.approx(0.1)
    assert pretrain.scheduled_lr(1.0, 50, 100, 10) == 1.0
    assert pretrain.scheduled_lr(1.0, 9, 100, 10, "cosine") == pytest.approx(1.0)
    assert pretrain.scheduled_lr(1.0, 10, 100, 10, "cosine") == pytest.approx(1.0)
    assert pretrain.scheduled_lr(1.0, 55, 100, 10, "cosine") == pytest.approx(0.5)
    assert pretrain.scheduled_lr(1.0, 100, 100, 10, "cosine") == pytest.approx(0.0, abs=1e-12)
    values = [pretrain.scheduled_lr(2.0, s, 60, 5, "cosine") for s in range(5, 61)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert values[30] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 30 / 55)))
    with pytest.raises(ValueError, match="unknown lr schedule 'linear'"):
        pretrain.scheduled_lr(1.0, 0, 10, 1, "linear")


def _tiny(cfg: ReferenceConfig, dataset):
    torch.manual_seed(0)
    kwargs = reference_init_kwargs(cfg, resolution=8, channels=1, label_dim=10)
    return network_from_official("EDMPrecond", kwargs)


def test_interrupted_cosine_pretraining_resumes_bit_identically(tmp_path, monkeypatch):
    images, labels = data_lib.load_digits_dataset(8, dequantize_seed=0)
    dataset = data_lib.make_dataset(images[:64], labels[:64], name="digits64")
    cfg = ReferenceConfig(model_channels=8, steps=6, batch_size=8, lr_warmup_steps=2, lr_schedule="cosine",
                          log_every=1)
    straight = pretrain.pretrain(_tiny(cfg, dataset), dataset, cfg, progress=False)
    path, real_step = tmp_path / "state.pt", pretrain.mle_step

    def interrupted(net, images, labels, cfg, step, label_dim, **options):
        if step == 4:
            raise KeyboardInterrupt
        return real_step(net, images, labels, cfg, step, label_dim, **options)

    monkeypatch.setattr(pretrain, "mle_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain.pretrain(_tiny(cfg, dataset), dataset, cfg, checkpoint_path=path, checkpoint_every=1,
                          progress=False)
    monkeypatch.setattr(pretrain, "mle_step", real_step)
    resumed = pretrain.pretrain(_tiny(cfg, dataset), dataset, cfg, checkpoint_path=path, checkpoint_every=1,
                                progress=False)
    for key, value in straight.ema.state_dict().items():
        assert torch.equal(value, resumed.ema.state_dict()[key]), key
    assert [row["lr"] for row in resumed.history] == [row["lr"] for row in straight.history]
    assert resumed.history[-1]["lr"] == pytest.approx(pretrain.scheduled_lr(cfg.lr, 5, 6, 2, "cosine"))
