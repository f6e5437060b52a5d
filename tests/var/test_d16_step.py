"""A VAR-d16-shaped pair (official key names and sizes, random weights: 310M-parameter transformer, 109M VQVAE)
written in the released file format, loaded by path and trained for one DDO step on the CPU with online fakes
(Zheng et al. 2025, Sec. 4 "VAR"; the official VAR DDO recipe)."""
import math

import pytest
import torch

from ddo_lib import data as data_lib
from ddo_lib import train
from ddo_lib.config import DDOConfig
from ddo_lib.var import reference as var_reference
from ddo_lib.var.transformer import VAR, init_weights, official_var_kwargs
from ddo_lib.var.vqvae import VQVAE


@pytest.fixture(scope="module")
def d16_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("d16")
    torch.manual_seed(0)
    kwargs = {k: v for k, v in official_var_kwargs(16).items() if not k.endswith("_if_available")}
    var = init_weights(VAR(**kwargs), torch.Generator().manual_seed(0), init_adaln_gamma=1e-3)
    torch.save(var.state_dict(), folder / "var_d16.pth")
    torch.save(VQVAE().state_dict(), folder / "vae_ch160v4096z32.pth")   # vocab 4096, z 32, ch 160
    del var
    return folder / "var_d16.pth", folder / "vae_ch160v4096z32.pth"


def test_a_d16_pair_loads_by_path_and_takes_one_ddo_step(d16_files):
    cfg = var_reference.VARReferenceConfig(checkpoint=str(d16_files[0]), vqvae=str(d16_files[1]))
    ref = var_reference.load_official(cfg, label_dim=1000, resolution=256)
    assert ref.meta["depth"] == 16 and sum(p.numel() for p in ref.net.parameters()) == 310_283_520
    assert ref.net.L == 680
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8, generator=generator)
    dataset = data_lib.make_dataset(images, torch.tensor([3, 997]), name="random-256", label_dim=1000)
    family = var_reference.family(ref, batch_size=2)
    ddo = DDOConfig(rounds=1, steps_per_round=1, batch_size=1, alpha=50.0, beta=0.02, lr=1e-5, lr_warmup_steps=0,
                    fakes="online", match_labels=True, eval_every=10, log_every=1, ema_halflife_images=1000)
    (state,) = train.run_rounds(family, ref.net, dataset, ddo, progress=False)
    row = state.history[-1]
    assert state.done and math.isfinite(row["loss"])
    # θ started at ref, so every log-ratio was 0: the loss is the closed form (1 + α)·log 2 / max(α, 1) for a
    # conditional row, or max(α, 1)·log 2 / max(α, 1) for a label-dropped one (official row weights).
    assert row["loss"] == pytest.approx(51 * math.log(2) / 50, rel=1e-5) or row["loss"] == pytest.approx(math.log(2))
    moved = [name for name, p in state.net.named_parameters() if not torch.equal(p, ref.net.state_dict()[name])]
    assert "head.weight" in moved and len(moved) > 100
