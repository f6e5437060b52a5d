"""VAR next-scale sampler against the official sampling cases of var_tiny.pt (fixtures README §7)."""
import pytest
import torch

from ddo_lib.var import vqvae as vq
from ddo_lib.var.likelihood import guided_token_log_probs
from ddo_lib.var.sampler import guidance_ramp, guided_logits, sample, top_k_top_p_filter
from ddo_lib.var.transformer import var_from_official

CASE_NAMES = ["cfg0", "cfg1.5", "cfg1.5_topk8_topp0.9", "cfg1.5_labels_drawn"]


@pytest.fixture(scope="module")
def fixture(official_fixture):
    return official_fixture("var_tiny.pt")


@pytest.fixture(scope="module")
def var(fixture):
    net = var_from_official(fixture["var_init_kwargs"], vocab_size=64, z_channels=8)
    net.load_state_dict(fixture["var_state_dict"], strict=True)
    return net.eval()


def load_tiny_vqvae(official_fixture):
    """The official tiny VQVAE: int8-grid weights dequantised as fixtures README §7 prescribes."""
    v = official_fixture("var_tiny_vae.pt")
    sd = {k: v["state_dict_int8"][k].float() * 2.0 ** v["state_dict_exp2"][k] if k in v["state_dict_int8"]
          else v["state_dict_float32"][k] for k in v["state_dict_keys"]}
    net = vq.vqvae_from_official(v["init_kwargs"])
    net.load_state_dict(sd, strict=True)
    return net.eval()


@pytest.fixture(scope="module")
def vqvae(official_fixture):
    return load_tiny_vqvae(official_fixture)


def _run(var, vqvae, case, **overrides):
    kwargs = dict(labels=case["label_B"], batch_size=case["B"], g_seed=case["g_seed"], cfg=case["cfg"],
                  top_k=case["top_k"], top_p=case["top_p"], more_smooth=case["more_smooth"])
    return sample(var, vqvae, **{**kwargs, **overrides})


@pytest.mark.parametrize("index", range(4), ids=CASE_NAMES)
def test_official_sampling_cases_are_reproduced(var, vqvae, fixture, index):
    case = fixture["sampling_cases"][index]
    out = _run(var, vqvae, case, record_logits=True)
    assert [t.tolist() for t in out.tokens] == [t.tolist() for t in case["idx_Bl"]]  # exact
    if case["label_B"] is None:
        assert torch.equal(out.labels, case["labels_drawn"])
    masked = case.get("masked_logits_per_scale", case["guided_logits_per_scale"])
    for ours, theirs in zip(out.logits, masked):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.f_hat, case["f_hat_from_idx"], atol=1e-5, rtol=0)
    if case["images_0_1"] is not None:
        torch.testing.assert_close((out.images + 1) / 2, case["images_0_1"], atol=1e-4, rtol=0)
    # Recorded log-probs are those of the official (guided, masked) logits at the drawn tokens.
    expected = torch.cat([m.log_softmax(-1).gather(-1, t[..., None])[..., 0] for m, t in zip(masked, case["idx_Bl"])], 1)
    torch.testing.assert_close(out.log_probs, expected, atol=1e-5, rtol=0)


def test_kv_cache_equals_full_recompute(var, vqvae, fixture):
    case = fixture["sampling_cases"][2]
    cached = _run(var, vqvae, case, decode=False)
    recomputed = _run(var, vqvae, case, decode=False, use_kv_cache=False)
    assert all(torch.equal(a, b) for a, b in zip(cached.tokens, recomputed.tokens))
    torch.testing.assert_close(cached.log_probs, recomputed.log_probs, atol=1e-5, rtol=0)


def test_per_sample_seeds_equal_upstream_single_sample_runs(var, vqvae):
    labels, seeds = torch.tensor([1, 7, 3]), [42, 7, 5]
    settings = dict(cfg=1.5, top_k=8, top_p=0.9, decode=False)
    batched = sample(var, vqvae, labels=labels, seeds=seeds, **settings)
    for i, seed in enumerate(seeds):
        alone = sample(var, vqvae, labels=labels[i:i + 1], seeds=[seed], **settings)
        upstream = sample(var, vqvae, labels=labels[i:i + 1], g_seed=seed, **settings)
        for a, b, c in zip(batched.tokens, alone.tokens, upstream.tokens):
            assert torch.equal(a[i:i + 1], b) and torch.equal(b, c)
    drawn = sample(var, vqvae, labels=None, seeds=[123, 124], decode=False)
    assert drawn.labels.tolist() == [sample(var, vqvae, labels=None, g_seed=s, batch_size=1, decode=False).labels.item()
                                     for s in (123, 124)]


def _teacher_forcing(vqvae, tokens):
    return vq.tokens_to_teacher_forcing_input(vqvae, tokens)


def test_cfg_ramp_semantics(var, vqvae, fixture):
    assert guidance_ramp(1.0, 4) == [0.0, 1 / 3, 2 / 3, 1.0] and guidance_ramp(0.0, 4) == [0.0] * 4
    cond, uncond = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    assert torch.equal(guided_logits(cond, uncond, 0.0), cond)
    for index in (0, 1):  # cfg 0 and cfg 1.5: guided = (1 + t)·cond − t·uncond with teacher-forced logits
        case = fixture["sampling_cases"][index]
        with torch.no_grad():
            x_in = _teacher_forcing(vqvae, case["idx_Bl"])
            logits_cond = var(case["label_B"], x_in)
            logits_uncond = var(torch.full_like(case["label_B"], var.num_classes), x_in)
        for (begin, end), t, theirs in zip(var.begin_ends, guidance_ramp(case["cfg"], 4),
                                          case["guided_logits_per_scale"]):
            ours = guided_logits(logits_cond[:, begin:end], logits_uncond[:, begin:end], t)
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
            if case["cfg"] == 0:
                torch.testing.assert_close(logits_cond[:, begin:end], theirs, atol=1e-5, rtol=0)


def test_top_k_top_p_filter_matches_official_masking(fixture):
    case = fixture["sampling_cases"][2]
    for guided, masked in zip(case["guided_logits_per_scale"], case["masked_logits_per_scale"]):
        ours = top_k_top_p_filter(guided, top_k=case["top_k"], top_p=case["top_p"])
        assert torch.equal(torch.isinf(ours), torch.isinf(masked))
        assert torch.equal(ours[~torch.isinf(ours)], masked[~torch.isinf(masked)])
    assert torch.isinf(case["masked_logits_per_scale"][-1]).any()  # the filters bite in this case


def test_sampled_log_probs_equal_teacher_forced_rescoring(var, vqvae, fixture):
    case = fixture["sampling_cases"][2]
    out = _run(var, vqvae, case, decode=False)
    with torch.no_grad():
        rescored = guided_token_log_probs(var, out.labels, out.tokens, _teacher_forcing(vqvae, out.tokens),
                                          cfg=case["cfg"], top_k=case["top_k"], top_p=case["top_p"])
    assert torch.isfinite(rescored).all()
    torch.testing.assert_close(out.log_probs, rescored, atol=1e-5, rtol=0)


def test_more_smooth_and_integer_labels(var, vqvae):
    smooth = sample(var, vqvae, labels=-1, batch_size=2, g_seed=3, cfg=1.0, more_smooth=True)
    again = sample(var, vqvae, labels=-1, batch_size=2, g_seed=3, cfg=1.0, more_smooth=True)
    hard = sample(var, vqvae, labels=-1, batch_size=2, g_seed=3, cfg=1.0)
    assert smooth.labels.tolist() == [var.num_classes] * 2
    assert torch.equal(smooth.images, again.images) and torch.isfinite(smooth.images).all()
    assert torch.equal(smooth.tokens[0], hard.tokens[0])  # the first draw precedes any Gumbel noise
    assert not torch.allclose(smooth.f_hat, hard.f_hat)


def test_bad_inputs_are_rejected(var, vqvae, fixture):
    labels = torch.tensor([1, 2])
    other = var_from_official({**fixture["var_init_kwargs"], "patch_nums": (1, 2, 4)}, vocab_size=64, z_channels=8)
    with pytest.raises(ValueError, match="VAR/VQVAE mismatch"):
        sample(other, vqvae, labels=labels, g_seed=0)
    with pytest.raises(ValueError, match="exactly one of g_seed"):
        sample(var, vqvae, labels=labels, g_seed=0, seeds=[0, 1])
    with pytest.raises(ValueError, match="exactly one of g_seed"):
        sample(var, vqvae, labels=labels)
    with pytest.raises(ValueError, match="3 seeds for a batch of 2"):
        sample(var, vqvae, labels=labels, seeds=[0, 1, 2])
    with pytest.raises(ValueError, match="labels must lie"):
        sample(var, vqvae, labels=torch.tensor([1, 11]), g_seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        sample(var, vqvae, labels=None, g_seed=0)
    with pytest.raises(ValueError, match="top_k must be"):
        sample(var, vqvae, labels=labels, g_seed=0, top_k=-1)
