"""VAR transformer and exact likelihoods against the official var_tiny.pt fixture (fixtures README §7)."""
import copy

import pytest
import torch

from ddo_lib.var.likelihood import (
    concat_tokens,
    log_likelihood,
    log_likelihood_from_tokens,
    token_log_probs,
    var_log_ratio,
)
from ddo_lib.var.transformer import (
    IMAGENET_PATCH_NUMS_512,
    VAR,
    block_causal_bias,
    init_weights,
    official_var_kwargs,
    var_from_official,
)
from ddo_lib.var.vqvae import vqvae_from_official


@pytest.fixture(scope="module")
def fixture(official_fixture):
    return official_fixture("var_tiny.pt")


@pytest.fixture(scope="module")
def var(fixture):
    net = var_from_official(fixture["var_init_kwargs"], vocab_size=64, z_channels=8)
    net.load_state_dict(fixture["var_state_dict"], strict=True)
    return net.eval()


def test_state_dict_keys_shapes_and_parameter_count(fixture):
    meta = fixture["var_keys"]
    net = var_from_official(fixture["var_init_kwargs"], vocab_size=64, z_channels=8)
    sd = net.state_dict()
    assert list(sd) == meta["state_dict_keys"]
    assert {k: tuple(v.shape) for k, v in sd.items()} == meta["shapes"]
    assert {k: str(v.dtype).removeprefix("torch.") for k, v in sd.items()} == meta["dtypes"]
    assert [k for k, _ in net.named_parameters()] == meta["parameter_keys"]
    assert [k for k, _ in net.named_buffers()] == meta["buffer_keys"]
    assert sum(p.numel() for p in net.parameters()) == meta["num_parameters"] == 641_732
    # The buffers are built, not only loaded: they already equal the official ones.
    official = fixture["var_state_dict"]
    assert torch.equal(sd["lvl_1L"], official["lvl_1L"])
    assert torch.equal(sd["attn_bias_for_masking"], official["attn_bias_for_masking"])
    assert torch.equal(block_causal_bias((1, 2, 3, 4)), official["attn_bias_for_masking"])
    assert net.L == fixture["L"] and net.first_l == fixture["first_l"]
    assert [tuple(be) for be in net.begin_ends] == [tuple(be) for be in fixture["begin_ends"]]


def test_block_causal_mask_content():
    bias = block_causal_bias((1, 2))[0, 0]  # L = 5
    visible = bias == 0
    assert visible[0].tolist() == [True, False, False, False, False]
    assert visible[1:].all()  # second scale sees itself bidirectionally and the first scale
    assert torch.isneginf(bias[~visible]).all()


@pytest.mark.parametrize("which", ["", "_null"])
def test_teacher_forced_logits_match_official(var, fixture, which):
    tf = fixture["teacher_forcing"]
    labels = tf["label_B" if not which else "null_label_B"]
    with torch.no_grad():
        logits = var(labels, tf["x_BLCv_wo_first_l"])
    assert logits.dtype == torch.float32 and logits.shape == (4, 30, 64)
    torch.testing.assert_close(logits, tf["logits_BLV" + which], atol=1e-5, rtol=0)


def test_uncond_mask_equals_null_labels(var, fixture):
    tf = fixture["teacher_forcing"]
    mask = torch.tensor([True, False, True, False])
    with torch.no_grad():
        logits = var(tf["label_B"], tf["x_BLCv_wo_first_l"], uncond_mask=mask)
    torch.testing.assert_close(logits[mask], tf["logits_BLV_null"][mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[~mask], tf["logits_BLV"][~mask], atol=1e-5, rtol=0)


def test_forward_draws_no_global_randomness(var, fixture):
    tf = fixture["teacher_forcing"]
    state = torch.get_rng_state()
    with torch.no_grad():
        first = var(tf["label_B"], tf["x_BLCv_wo_first_l"])
        second = var(tf["label_B"], tf["x_BLCv_wo_first_l"])
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, second)


@pytest.mark.parametrize("which", ["", "_null"])
def test_token_log_probs_and_sums_match_official(var, fixture, which):
    tf = fixture["teacher_forcing"]
    labels = tf["label_B" if not which else "null_label_B"]
    with torch.no_grad():
        per_token = token_log_probs(var, labels, tf["idx_Bl"], tf["x_BLCv_wo_first_l"])
        total = log_likelihood_from_tokens(var, labels, torch.cat(tf["idx_Bl"], 1), tf["x_BLCv_wo_first_l"])
    torch.testing.assert_close(per_token, tf["logp_per_token" + which], atol=1e-5, rtol=0)
    torch.testing.assert_close(total, tf["logp_sum" + which], atol=1e-4, rtol=0)


def test_log_likelihood_from_images_matches_official(var, fixture, official_fixture):
    v = official_fixture("var_tiny_vae.pt")
    sd = {k: v["state_dict_int8"][k].float() * 2.0 ** v["state_dict_exp2"][k] if k in v["state_dict_int8"]
          else v["state_dict_float32"][k] for k in v["state_dict_keys"]}
    vqvae = vqvae_from_official(v["init_kwargs"])
    vqvae.load_state_dict(sd, strict=True)
    tf = fixture["teacher_forcing"]
    images = tf["images_uint8"].to(torch.float32) / 127.5 - 1
    with torch.no_grad():
        logp = log_likelihood(var, vqvae.eval(), images, tf["label_B"])
        logp_null = log_likelihood(var, vqvae, images, tf["label_B"], uncond_mask=torch.ones(4, dtype=torch.bool))
    torch.testing.assert_close(logp, tf["logp_sum"], atol=1e-4, rtol=0)
    torch.testing.assert_close(logp_null, tf["logp_sum_null"], atol=1e-4, rtol=0)


def test_log_likelihood_is_batch_size_independent(var, fixture):
    tf = fixture["teacher_forcing"]
    with torch.no_grad():
        batched = log_likelihood_from_tokens(var, tf["label_B"], tf["idx_Bl"], tf["x_BLCv_wo_first_l"])
        single = torch.cat([
            log_likelihood_from_tokens(var, tf["label_B"][i:i + 1], [t[i:i + 1] for t in tf["idx_Bl"]],
                                       tf["x_BLCv_wo_first_l"][i:i + 1]) for i in range(4)])
    torch.testing.assert_close(single, batched, atol=1e-4, rtol=0)


def test_log_ratio_is_exactly_zero_at_reference_and_differentiates_net_only(var, fixture):
    tf = fixture["teacher_forcing"]
    net, ref = copy.deepcopy(var), copy.deepcopy(var)
    mask = torch.tensor([False, True, False, False])
    delta = var_log_ratio(net, ref, tf["label_B"], tf["idx_Bl"], tf["x_BLCv_wo_first_l"], uncond_mask=mask)
    assert delta.shape == (4,) and torch.equal(delta, torch.zeros(4))
    delta.sum().backward()
    assert net.head.weight.grad is not None and net.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in ref.parameters())
    with torch.no_grad():
        net.head.bias.add_(0.1 * torch.arange(64.0))
        moved = var_log_ratio(net, ref, tf["label_B"], tf["idx_Bl"], tf["x_BLCv_wo_first_l"])
    assert (moved.abs() > 1e-3).all()


def test_official_parameter_counts():
    expected = {16: 310_283_520, 20: 600_917_136, 24: 1_033_399_360, 30: 2_010_020_356}
    with torch.device("meta"):
        for depth, count in expected.items():
            net = var_from_official(official_var_kwargs(depth))
            assert (net.C, net.num_heads, net.L) == (64 * depth, depth, 680)
            assert sum(p.numel() for p in net.parameters()) == count
        shared = var_from_official(official_var_kwargs(36, shared_aln=True, patch_nums=IMAGENET_PATCH_NUMS_512))
    assert round(sum(p.numel() for p in shared.parameters()) / 1e9, 2) == 2.35  # official VAR d36-s (shared AdaLN) ≈ 2.35B
    assert shared.L == 2240 and "blocks.0.ada_gss" in shared.state_dict()
    assert "shared_ada_lin.1.weight" in shared.state_dict() and "blocks.0.ada_lin.1.weight" not in shared.state_dict()


def test_shared_adaln_model_runs_and_init_uses_only_the_generator():
    kwargs = dict(vocab_size=16, z_channels=4, num_classes=3, depth=2, embed_dim=64, num_heads=2,
                  shared_aln=True, patch_nums=(1, 2))
    nets = [VAR(**kwargs) for _ in range(3)]
    for net, seed in zip(nets, (0, 0, 1)):
        init_weights(net, torch.Generator().manual_seed(seed))
    assert all(torch.equal(a, b) for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values()))
    assert not torch.equal(nets[0].pos_1LC, nets[2].pos_1LC)
    logits = nets[0].eval()(torch.tensor([0, 3]), torch.randn(2, 4, 4))
    assert logits.shape == (2, 5, 16) and torch.isfinite(logits).all()


def test_bad_inputs_are_rejected(var, fixture):
    tf = fixture["teacher_forcing"]
    x_in = tf["x_BLCv_wo_first_l"]
    with pytest.raises(ValueError, match="labels must lie"):
        var(torch.tensor([0, 1, 2, 11]), x_in)
    with pytest.raises(ValueError, match="labels must lie"):
        var(torch.tensor([0, 1, 2, -1]), x_in)
    with pytest.raises(TypeError, match="int64"):
        var(tf["label_B"].float(), x_in)
    with pytest.raises(ValueError, match="teacher-forcing input"):
        var(tf["label_B"], x_in[:, :-1])
    with pytest.raises(ValueError, match="uncond_mask"):
        var(tf["label_B"], x_in, uncond_mask=torch.tensor([1, 0, 0, 0]))
    with pytest.raises(ValueError, match="per-scale lengths"):
        concat_tokens(var, [t[:, :-1] if i == 3 else t for i, t in enumerate(tf["idx_Bl"])])
    with pytest.raises(ValueError, match=r"int64 \[B, 30\]"):
        concat_tokens(var, torch.cat(tf["idx_Bl"], 1)[:, :29])
    with pytest.raises(ValueError, match="indices must lie"):
        concat_tokens(var, torch.full((4, 30), 64))
    with pytest.raises(TypeError, match="unknown VAR arguments"):
        var_from_official({**fixture["var_init_kwargs"], "depht": 3})


def _random_var(patch_nums, **kwargs) -> VAR:
    """A small VAR whose attention branches matter (γ init 1, not the official 1e-5)."""
    net = VAR(vocab_size=16, z_channels=4, num_classes=3, depth=2, embed_dim=32, num_heads=2,
              patch_nums=patch_nums, **kwargs)
    return init_weights(net, torch.Generator().manual_seed(0), init_adaln_gamma=1.0)


def _logits_and_grads(net: VAR, labels, x_in) -> tuple[torch.Tensor, dict]:
    net.zero_grad(set_to_none=True)
    logits = net(labels, x_in)
    (logits * torch.linspace(-1, 1, logits.shape[-1])).sum().backward()
    return logits.detach(), {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("patch_nums", [(1, 2, 3, 4), (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)])
def test_prefix_attention_equals_the_mask(patch_nums):
    """Mask-free SDPA per scale (`attention='prefix'`) = one SDPA with the block-causal bias: logits, gradients."""
    net = _random_var(patch_nums).train()
    generator = torch.Generator().manual_seed(1)
    labels = torch.tensor([0, 3])
    x_in = torch.randn(2, net.L - net.first_l, 4, generator=generator)
    masked, masked_grads = _logits_and_grads(net, labels, x_in)
    net.attention = "prefix"
    prefix, prefix_grads = _logits_and_grads(net, labels, x_in)
    torch.testing.assert_close(prefix, masked, atol=1e-5, rtol=1e-5)
    assert masked_grads.keys() == prefix_grads.keys() and len(masked_grads) == len(list(net.parameters()))
    for name, grad in masked_grads.items():
        torch.testing.assert_close(prefix_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    with torch.no_grad():  # the test is sensitive to visibility: unmasked attention gives other hidden states
        x = torch.randn(2, net.L, net.C, generator=generator)
        cond = net.class_emb(labels)
        unmasked = net.forward_blocks(x, cond, None)
        blocked = net.forward_blocks(x, cond, None, scale_ends=net.scale_ends)
        torch.testing.assert_close(blocked, net.forward_blocks(x, cond, net.attn_bias_for_masking))
    assert (unmasked - blocked).abs().max() > 1e-2


def test_prefix_attention_on_the_official_fixture(var, fixture):
    """An official checkpoint loaded with default arguments switches kernels; the state dict is unchanged."""
    net = copy.deepcopy(var)
    keys = list(net.state_dict())
    net.attention = "prefix"
    assert var.attention == "mask" and list(net.state_dict()) == keys
    tf = fixture["teacher_forcing"]
    with torch.no_grad():
        logits = net(tf["label_B"], tf["x_BLCv_wo_first_l"])
    torch.testing.assert_close(logits, tf["logits_BLV"], atol=1e-5, rtol=0)


def test_unknown_attention_is_rejected(var):
    with pytest.raises(ValueError, match="attention must be one of"):
        _random_var((1, 2), attention="flash")
    net = copy.deepcopy(var)
    with pytest.raises(ValueError, match="attention must be one of"):
        net.attention = "Prefix"
    assert net.attention == "mask"
    with pytest.raises(ValueError, match="scale_ends replaces attn_bias"):
        net.forward_blocks(torch.zeros(1, net.L, net.C), net.class_emb(torch.tensor([0])),
                           net.attn_bias_for_masking, scale_ends=net.scale_ends)
