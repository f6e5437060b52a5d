"""EDM2 networks through the DDO generator protocol (EDMFamily with the EDM2 sampler)."""
import copy

import torch

from ddo_lib import data as data_lib
from ddo_lib import train
from ddo_lib.config import DDOConfig
from ddo_lib.edm.family import EDMFamily
from ddo_lib.edm.loss import denoising_error
from ddo_lib.edm.networks_edm2 import Precond
from ddo_lib.family import renormalize_weights


def tiny_edm2() -> torch.nn.Module:
    torch.manual_seed(0)
    net = Precond(8, 1, 10, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[])
    with torch.no_grad():   # EDM2's output gain starts at 0: move it so the denoiser depends on the weights
        for name, p in net.named_parameters():
            if name.endswith("out_gain"):
                p.fill_(0.5)
    return net.eval().requires_grad_(False)


def test_edm2_log_ratio_is_zero_at_theta_equal_ref_and_trains_one_round():
    images, labels = data_lib.load_digits_dataset(8)
    dataset = data_lib.make_dataset(images[:64], labels[:64], name="digits-64")
    raw = tiny_edm2()
    ref = renormalize_weights(copy.deepcopy(raw))
    family = EDMFamily(sampler="edm2", num_steps=3, batch_size=16)
    x = data_lib.to_float(dataset.images[:6])
    draws = family.draw(torch.Generator().manual_seed(1), x)
    onehot = data_lib.one_hot(dataset.labels[:6], 10)
    unprepared = family.log_ratio(copy.deepcopy(raw).train(), raw, x, onehot, draws)
    assert unprepared.abs().max() > 1e-4          # a fresh EDM2 net is not at the normalisation fixed point
    theta = copy.deepcopy(ref).train().requires_grad_(True)
    logr = family.log_ratio(theta, ref, x, onehot, draws)
    error = denoising_error(ref, x, draws["sigma"], draws["noise"], onehot, sigma_data=ref.sigma_data)  # [6]
    assert (logr.abs() <= 4 * torch.finfo(torch.float32).eps * error).all()   # float rounding only
    assert logr.abs().max() < 0.02 * unprepared.abs().max()
    logr.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in theta.parameters())
    cfg = DDOConfig(rounds=1, steps_per_round=2, batch_size=4, pool_size=8, pool_steps=3, eval_every=1,
                    log_every=1, lr=1e-3, lr_warmup_steps=1, beta=0.5)
    states = train.run_rounds(family, ref, dataset, cfg, progress=False)
    assert states[0].done and states[0].step == 2
    changed = [not torch.equal(a, b) for a, b in zip(states[0].net.state_dict().values(), ref.state_dict().values())]
    assert any(changed)
