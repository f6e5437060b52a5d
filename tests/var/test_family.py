"""VAR behind the DDO protocol: exact log-ratios, shared label dropout, row weights, gradient at θ = ref (docs/theory.md §4), rounds."""
import copy
import dataclasses
import itertools
import math

import pytest
import torch

from ddo_lib import data as data_lib
from ddo_lib import train
from ddo_lib.config import DDOConfig
from ddo_lib.family import disable_dropout
from ddo_lib.objective import CURVATURE, ddo_loss
from ddo_lib.var.family import VARFamily
from ddo_lib.var.reference import SmallVQVAE
from ddo_lib.var.transformer import VAR, init_weights
from ddo_lib.var.vqvae import tokens_to_teacher_forcing_input

PATCH_NUMS = (1, 2, 4)  # 8×8 images → 4×4 latent, L = 21


def tiny_tokenizer(patch_nums=PATCH_NUMS, vocab_size=8, ch_mult=(1, 2), seed=0) -> SmallVQVAE:
    torch.manual_seed(seed)
    return SmallVQVAE(in_channels=1, ch=32, ch_mult=ch_mult, num_res_blocks=1, z_channels=4,
                      vocab_size=vocab_size, patch_nums=patch_nums).eval().requires_grad_(False)


def tiny_var(patch_nums=PATCH_NUMS, vocab_size=8, seed=0, **kwargs) -> VAR:
    """A random VAR whose blocks and head are far from their near-identity initialisation."""
    var = VAR(vocab_size=vocab_size, z_channels=4, num_classes=10, depth=2, embed_dim=32, num_heads=2,
              patch_nums=patch_nums, **{"drop_path_rate": 0.0, **kwargs})
    generator = torch.Generator().manual_seed(seed)
    init_weights(var, generator)
    with torch.no_grad():
        for p in var.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator))
    return var.eval().requires_grad_(False)




@pytest.fixture(scope="module")
def dataset():
    images, labels = data_lib.load_digits_dataset(8)
    return data_lib.make_dataset(images[:64], labels[:64], name="digits-64")


@pytest.fixture(scope="module")
def family():
    return VARFamily(tiny_tokenizer(), uncond_rate=0.5, batch_size=4)


def batch(dataset, rows, start=0):
    x = data_lib.to_float(dataset.images[start:start + rows])
    return x, data_lib.one_hot(dataset.labels[start:start + rows], 10)


def test_family_is_named_and_validates_options():
    assert VARFamily(tiny_tokenizer()).name == "var"
    with pytest.raises(ValueError, match="uncond_rate"):
        VARFamily(tiny_tokenizer(), uncond_rate=1.0)


def test_log_ratio_is_exactly_zero_at_theta_equal_ref(family, dataset):
    ref = tiny_var()
    x, labels = batch(dataset, 8)
    draws = family.draw(torch.Generator().manual_seed(0), x)
    assert draws["uncond"].any() and not draws["uncond"].all()
    logr = family.log_ratio(copy.deepcopy(ref).train(), ref, x, labels, draws)
    assert logr.dtype == torch.float32 and torch.equal(logr, torch.zeros(8))


def test_log_ratio_is_the_exact_difference_of_sequence_log_likelihoods(family, dataset):
    ref, net = tiny_var(seed=0), tiny_var(seed=1).requires_grad_(True)
    x, labels = batch(dataset, 6)
    draws = family.draw(torch.Generator().manual_seed(1), x)
    logr = family.log_ratio(net, ref, x, labels, draws)
    expected = family.mle_loss(ref, x, labels, draws) - family.mle_loss(net, x, labels, draws)
    torch.testing.assert_close(logr, expected.detach(), rtol=0, atol=1e-4)
    logr.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    assert all(p.grad is None for p in ref.parameters())


def test_likelihood_is_batch_size_independent(family, dataset):
    var = tiny_var()
    x, labels = batch(dataset, 12)
    draws = family.draw(torch.Generator().manual_seed(2), x)
    whole = family.mle_loss(var, x, labels, draws)
    parts = torch.cat([family.mle_loss(var, x[i:i + 5], labels[i:i + 5], {"uncond": draws["uncond"][i:i + 5]})
                       for i in range(0, 12, 5)])
    single = torch.cat([family.mle_loss(var, x[i:i + 1], labels[i:i + 1], {"uncond": draws["uncond"][i:i + 1]})
                        for i in range(12)])
    torch.testing.assert_close(parts, whole, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(single, whole, rtol=1e-6, atol=1e-4)


def test_masked_rows_see_the_null_class_in_theta_and_ref(family, dataset):
    ref = tiny_var()
    x, labels = batch(dataset, 10)
    uncond = torch.tensor([True, False] * 5)
    net = copy.deepcopy(ref)
    with torch.no_grad():
        net.class_emb.weight[10].add_(0.5)  # change only the null class
    logr = family.log_ratio(net, ref, x, labels, {"uncond": uncond})
    assert (logr[uncond] != 0).all() and torch.equal(logr[~uncond], torch.zeros(5))
    net = copy.deepcopy(ref)
    digit = int(labels[1].argmax())
    with torch.no_grad():
        net.class_emb.weight[digit].add_(0.5)  # change only the class of row 1 (unmasked)
    logr = family.log_ratio(net, ref, x, labels, {"uncond": uncond})
    changed = (labels.argmax(dim=1) == digit) & ~uncond
    assert (logr[changed] != 0).all() and torch.equal(logr[~changed], torch.zeros(int((~changed).sum())))


def test_label_dropout_mask_comes_from_the_generator_and_is_shared_by_real_and_fake(family):
    x = torch.zeros(20_000, 1, 8, 8)
    first = family.draw(torch.Generator().manual_seed(3), x)["uncond"]
    second = family.draw(torch.Generator().manual_seed(3), x)["uncond"]
    assert first.dtype == torch.bool and torch.equal(first, second)
    assert abs(first.float().mean().item() - 0.5) < 4 * math.sqrt(0.25 / 20_000)
    default = VARFamily(tiny_tokenizer()).draw(torch.Generator().manual_seed(3), x)["uncond"]
    assert abs(default.float().mean().item() - 0.1) < 4 * math.sqrt(0.09 / 20_000)
    shared = train._repeat_draws({"uncond": first[:6]})["uncond"]  # [real rows; fake rows]
    assert torch.equal(shared[:6], shared[6:])


@pytest.mark.parametrize("alpha", [5.0, 0.5])
def test_row_weights_drop_fakes_of_unconditional_rows(family, alpha):
    uncond = torch.tensor([True, False, False, True])
    w_real, w_fake = family.row_weights({"uncond": uncond}, alpha)
    assert w_real.tolist() == [max(alpha, 1.0), 1.0, 1.0, max(alpha, 1.0)]
    assert w_fake.tolist() == [0.0, 1.0, 1.0, 0.0]


def _grad(loss, net):
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(net.parameters()))])


def test_ddo_objective_gradient_at_ref_is_the_weighted_mle_gradient_difference(family, dataset):
    """∇L = β f''(1)/max(α,1)·[mean(w_r ∇CE_real) − α·mean(w_f ∇CE_fake)] at θ = ref (docs/theory.md §4)."""
    ref = tiny_var()
    net = copy.deepcopy(ref).train().requires_grad_(True)
    real, real_labels = batch(dataset, 6)
    fake, fake_labels = batch(dataset, 6, start=30)
    draws = {"uncond": torch.tensor([True, False, False, True, False, False])}
    inputs = train.StepInputs(real, real_labels, fake, fake_labels, draws)
    cfg = DDOConfig(alpha=4.0, beta=0.05)
    loss, stats = train.ddo_objective(family, net, ref, inputs, cfg)
    w_real, w_fake = family.row_weights(draws, cfg.alpha)
    scale = cfg.beta * CURVATURE["bce"][0] / max(cfg.alpha, 1.0)
    torch.testing.assert_close(loss, (w_real.mean() + cfg.alpha * w_fake.mean()) * math.log(2) / cfg.alpha)
    ce_real = (w_real * family.mle_loss(net, real, real_labels, draws)).mean()
    ce_fake = (w_fake * family.mle_loss(net, fake, fake_labels, draws)).mean()
    expected = scale * (_grad(ce_real, net) - cfg.alpha * _grad(ce_fake, net))
    torch.testing.assert_close(_grad(loss, net), expected, rtol=1e-4, atol=1e-7)
    assert stats["margin"] == 0.0


@pytest.mark.parametrize("variant", ["bce", "kl", "pearson", "ns"])
def test_exact_expected_gradient_at_ref_is_minus_beta_curvature_times_the_mle_score(variant):
    """Enumerating all V^L token sequences: Σ p = 1, and with fakes ~ p_ref the DDO gradient at θ = ref is
    −β f''(1)/max(α,1)·mean(w_r ∇log p(real)): the α-weighted fake term drops out (docs/theory.md §4)."""
    patch_nums, vocab = (1, 2), 3                                            # L = 5: 243 sequences
    ref = tiny_var(patch_nums, vocab, seed=4)
    net = copy.deepcopy(ref).train().requires_grad_(True)
    family = VARFamily(tiny_tokenizer(patch_nums, vocab, ch_mult=(1,)))
    every = torch.tensor(list(itertools.product(range(vocab), repeat=5)))      # [243, 5]
    x_in = tokens_to_teacher_forcing_input(family.tokenizer, [every[:, :1], every[:, 1:]])
    no_mask = torch.zeros(len(every), dtype=torch.bool)
    for label in (3, 10):                                                    # a class and the null class
        logp = family.sequence_log_prob(ref, torch.full((len(every),), label), every, x_in, no_mask)
        assert abs(torch.logsumexp(logp, 0).item()) < 1e-5
    real, real_labels = every[[7, 100, 201, 42]], torch.tensor([3, 3, 5, 1])
    uncond = torch.tensor([False, True, False, False])
    fake_labels = torch.full((len(every),), 3)
    with torch.no_grad():                                                    # exact fake distribution of class 3
        p_ref = family.sequence_log_prob(ref, fake_labels, every, x_in, no_mask).exp()
    alpha, beta = 6.0, 0.1
    w_real, _ = family.row_weights({"uncond": uncond}, alpha)
    logr_real = family.log_ratio_tokens(net, ref, real_labels, real, x_in[[7, 100, 201, 42]], uncond)
    logr_fake = family.log_ratio_tokens(net, ref, fake_labels, every, x_in, no_mask)
    loss_real, _ = ddo_loss(logr_real, logr_real.detach(), alpha=alpha, beta=beta, variant=variant)
    _, loss_fake = ddo_loss(logr_fake.detach(), logr_fake, alpha=alpha, beta=beta, variant=variant)
    loss = ((w_real * loss_real).mean() + (p_ref * loss_fake).sum()) / max(alpha, 1.0)
    score = (w_real * family.sequence_log_prob(net, real_labels, real, x_in[[7, 100, 201, 42]], uncond)).mean()
    expected = -beta * CURVATURE[variant][0] / max(alpha, 1.0) * _grad(score, net)
    torch.testing.assert_close(_grad(loss, net), expected, rtol=1e-4, atol=1e-6)


def test_sampling_is_per_seed_and_batch_size_independent(family):
    var = tiny_var()
    seeds, labels = [3, 1, 4, 1, 5, 9, 2], torch.tensor([0, 1, 2, 1, 4, 5, 6])
    small = family.sample(var, seeds, labels, batch_size=2)
    large = family.sample(var, seeds, labels, batch_size=7)
    assert small.dtype == torch.uint8 and small.shape == (7, 1, 8, 8)
    assert torch.equal(small, large) and torch.equal(small[1], small[3])    # (seed 1, label 1) twice
    assert torch.equal(family.sample(var, [9], labels[5:6]), small[5:6])
    assert family.sample(var, [0, 1], None, cfg=0.0).shape == (2, 1, 8, 8)  # unlabelled: null class


def test_bad_inputs_are_refused(family, dataset):
    ref = tiny_var()
    x, labels = batch(dataset, 4)
    draws = {"uncond": torch.tensor([True, False, False, False])}
    with pytest.raises(ValueError, match="one-hot"):
        family.log_ratio(ref, ref, x, labels * 2, draws)
    with pytest.raises(ValueError, match="uncond_rate=0"):
        family.log_ratio(ref, ref, x, None, draws)
    with pytest.raises(ValueError, match="draws"):
        family.log_ratio(ref, ref, x, labels, {"uncond": torch.zeros(4)})
    with pytest.raises(ValueError, match="sampler options"):
        family.sample(ref, [0], None, num_steps=3)
    noisy = tiny_var(drop_path_rate=0.1).train()
    with pytest.raises(ValueError, match="drop-path"):
        family.log_ratio(noisy, ref, x, labels, draws)
    family.log_ratio(disable_dropout(noisy), ref, x, labels, draws)


CFG = DDOConfig(rounds=1, steps_per_round=2, batch_size=4, pool_size=8, eval_every=1, log_every=1,
                checkpoint_every=1, lr=1e-3, lr_warmup_steps=1, alpha=3.0, beta=0.02)


@pytest.mark.parametrize("mode", ["ddo", "mle"])
def test_two_step_rounds_run_in_both_modes(family, dataset, tmp_path, mode):
    cfg = dataclasses.replace(CFG, mode=mode)
    ref = tiny_var()
    (state,) = train.run_rounds(family, ref, dataset, cfg, metric_fn=lambda net, k: 0.0,
                                work_dir=tmp_path, progress=False)
    rows = [r for r in state.history if "loss" in r]
    assert state.done and len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    assert any(not torch.equal(a, b) for a, b in zip(state.net.parameters(), ref.parameters()))
    if mode == "ddo":  # step 0 runs at θ = ref: Δ = 0 and the loss is the weighted (1+α)·log 2 / max(α, 1)
        w_real, w_fake = family.row_weights(train.step_inputs(family, dataset, None, cfg, 0, 0).draws, cfg.alpha)
        expected = (w_real.mean() + cfg.alpha * w_fake.mean()).item() * math.log(2) / cfg.alpha
        assert rows[0]["loss"] == pytest.approx(expected, rel=1e-6) and rows[0]["margin"] == 0.0
        assert (tmp_path / "round0" / "pool.pt").exists()
    else:
        assert "accuracy" not in rows[0] and rows[0]["loss"] > 0


# ------------------------------------------------------------- option: score the sampled token indices
def test_sample_with_tokens_returns_the_drawn_indices_of_the_sampled_images(family):
    from ddo_lib.edm.sampler import to_uint8
    from ddo_lib.var.vqvae import tokens_to_image
    var = tiny_var()
    seeds, labels = [5, 6, 7], torch.tensor([1, 2, 3])
    images, tokens = family.sample_with_tokens(var, seeds, labels, batch_size=2)
    assert tokens.dtype == torch.int64 and tokens.shape == (3, sum(p * p for p in PATCH_NUMS))
    assert torch.equal(images, family.sample(var, seeds, labels))
    assert torch.equal(to_uint8(tokens_to_image(family.tokenizer, family.split_scales(tokens))), images)
    reencoded, _ = family.tokens(data_lib.to_float(images))
    assert not torch.equal(reencoded, tokens)  # the round trip changes tokens: the option is not a no-op


def test_log_ratio_scores_given_tokens_and_re_encodes_the_minus_one_rows(family, dataset):
    ref, net = tiny_var(seed=0), tiny_var(seed=1)
    x, labels = batch(dataset, 4)
    draws = {"uncond": torch.tensor([False, True, False, False])}
    _, sampled = family.sample_with_tokens(ref, [0, 1, 2, 3], labels.argmax(dim=1))
    given = sampled.clone()
    given[[0, 2]] = -1
    mixed = family.log_ratio(net, ref, x, labels, dict(draws, tokens=given))
    plain = family.log_ratio(net, ref, x, labels, draws)
    scored = family.log_ratio_tokens(net, ref, labels.argmax(dim=1), sampled,
                                     tokens_to_teacher_forcing_input(family.tokenizer, family.split_scales(sampled)),
                                     draws["uncond"])
    torch.testing.assert_close(mixed[[0, 2]], plain[[0, 2]], rtol=0, atol=0)
    torch.testing.assert_close(mixed[[1, 3]], scored[[1, 3]], rtol=1e-6, atol=1e-5)
    assert not torch.allclose(mixed[[1, 3]], plain[[1, 3]])
    partly = given.clone()
    partly[1, 0] = -1
    with pytest.raises(ValueError, match="all ≥ 0"):
        family.log_ratio(net, ref, x, labels, dict(draws, tokens=partly))
    with pytest.raises(ValueError, match="token indices"):
        family.log_ratio(net, ref, x, labels, dict(draws, tokens=given.clamp(min=0) + 100))
    with pytest.raises(ValueError, match="int64"):
        family.log_ratio(net, ref, x, labels, dict(draws, tokens=given[:, :-1]))


def test_only_the_minus_one_rows_go_through_the_tokenizer(family, dataset, monkeypatch):
    """Given rows are not re-encoded (no wasted tokenizer pass); without `tokens` every row is."""
    ref, net = tiny_var(seed=0), tiny_var(seed=1)
    x, labels = batch(dataset, 4)
    draws = {"uncond": torch.zeros(4, dtype=torch.bool)}
    _, sampled = family.sample_with_tokens(ref, [0, 1, 2, 3], labels.argmax(dim=1))
    encoded_rows = []
    original = type(family).tokens

    def spy(self, images):
        encoded_rows.append(images.shape[0])
        return original(self, images)

    monkeypatch.setattr(type(family), "tokens", spy)
    given = sampled.clone()
    given[[0, 2]] = -1
    family.log_ratio(net, ref, x, labels, dict(draws, tokens=given))
    family.log_ratio(net, ref, x, labels, dict(draws, tokens=sampled))
    family.log_ratio(net, ref, x, labels, draws)
    assert encoded_rows == [2, 4]


def test_sampled_token_rounds_store_the_indices_and_use_them(family, dataset, tmp_path):
    cfg = dataclasses.replace(CFG, fake_tokens="sampled", fake_cfg=0.0)
    ref = tiny_var()
    (state,) = train.run_rounds(family, ref, dataset, cfg, metric_fn=lambda net, k: 0.0,
                                work_dir=tmp_path, progress=False)
    saved = torch.load(tmp_path / "round0" / "pool.pt", weights_only=True)
    images, tokens = family.sample_with_tokens(ref, train.pool_seeds(cfg.seed, 0, cfg.pool_size),
                                               saved["labels"], cfg=0.0)
    assert torch.equal(saved["images"], images) and torch.equal(saved["tokens"], tokens)
    assert state.done and all(math.isfinite(r["loss"]) for r in state.history if "loss" in r)
    pool = (saved["images"], saved["labels"], saved["tokens"])
    step = train.step_inputs(family, dataset, pool, cfg, 0, 1)
    assert step.fake_tokens is not None and step.fake_tokens.shape == (cfg.batch_size, tokens.shape[1])
    reencoded = dataclasses.replace(cfg, fake_tokens="reencode")
    loss_sampled, _ = train.ddo_objective(family, tiny_var(seed=1), ref, step, cfg)
    loss_reencoded, _ = train.ddo_objective(family, tiny_var(seed=1), ref, dataclasses.replace(step, fake_tokens=None),
                                            reencoded)
    assert not torch.isclose(loss_sampled, loss_reencoded)


def test_fake_options_are_validated(family, dataset):
    with pytest.raises(ValueError, match="'reencode' or 'sampled'"):
        train.run_rounds(family, tiny_var(), dataset, dataclasses.replace(CFG, fake_tokens="indices"))


def test_official_drop_path_is_switched_off_by_the_family_agnostic_helper():
    """`official_var_kwargs` gives drop-path 0.1·depth/24 (15 DropPath modules at depth 16); the trainer's
    `disable_dropout` must leave none active, or the log-ratio would be random (shown at depth 2, the same
    module types; plus attention and MLP dropout)."""
    from ddo_lib.family import stochastic_modules
    from ddo_lib.var.transformer import official_var_kwargs, var_from_official

    kwargs = dict(official_var_kwargs(2, num_classes=10, patch_nums=(1, 2)), drop_rate=0.1, attn_drop_rate=0.1)
    net = var_from_official(kwargs).train()
    assert stochastic_modules(net)  # drop-path, attention and MLP dropout are all there before
    assert stochastic_modules(disable_dropout(net)) == []


def test_tokens_stay_fp32_inside_a_bf16_autocast(family, dataset):
    """The tokens are the data: a bf16 training step (ddo_lib.launch autocast) must not change the codebook
    argmin of the real images."""
    x = data_lib.to_float(dataset.images[:16])
    tokens, inputs = family.tokens(x)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        tokens_bf16, inputs_bf16 = family.tokens(x)
    assert torch.equal(tokens, tokens_bf16) and inputs_bf16.dtype == torch.float32
    assert torch.equal(inputs, inputs_bf16)
