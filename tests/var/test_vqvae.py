"""VAR multi-scale VQVAE against the official fixtures var_tiny_vae.pt / var_tiny.pt (fixtures README §1, §2, §7, §8)."""
import pytest
import torch

from ddo_lib.var import vqvae as vq

ATOL = 1e-4  # fixtures README §2: VQVAE f and reconstructions (official batch-split noise ≤ 8e-6)


def dequantize(v: dict) -> dict:
    """Fixtures README §7: int8 grid q·2**e back to float32, in the official key order."""
    return {k: (v["state_dict_int8"][k].float() * 2.0 ** v["state_dict_exp2"][k]) if k in v["state_dict_int8"]
            else v["state_dict_float32"][k] for k in v["state_dict_keys"]}


@pytest.fixture(scope="module")
def vae_fixture(official_fixture):
    return official_fixture("var_tiny_vae.pt")


@pytest.fixture(scope="module")
def case(official_fixture):
    return official_fixture("var_tiny.pt")["teacher_forcing"]


@pytest.fixture(scope="module")
def state_dict(vae_fixture):
    return dequantize(vae_fixture)


@pytest.fixture(scope="module")
def vqvae(vae_fixture, state_dict):
    net = vq.vqvae_from_official(vae_fixture["init_kwargs"])
    net.load_state_dict(state_dict, strict=True)
    return net


@pytest.fixture(scope="module")
def images(case):
    return case["images_uint8"].to(torch.float32) / 127.5 - 1


@pytest.fixture(scope="module")
def encoded(vqvae, images):
    with torch.no_grad():
        f = vqvae.encode(images)
        tokens, f_hats = vqvae.quantize.f_to_tokens(f)
    return f, tokens, f_hats


def test_dequantised_weights_match_recorded_sums(vae_fixture, state_dict):
    for key, tensor in state_dict.items():
        assert tensor.dtype == torch.float32
        assert tensor.double().sum().item() == pytest.approx(vae_fixture["tensor_sums_float64"][key], abs=1e-9)


def test_state_dict_keys_shapes_and_counts(vae_fixture, vqvae):
    sd = vqvae.state_dict()
    assert list(sd) == vae_fixture["state_dict_keys"]  # official registration order
    assert {k: tuple(t.shape) for k, t in sd.items()} == {k: tuple(s) for k, s in vae_fixture["shapes"].items()}
    assert [k for k, _ in vqvae.named_buffers()] == vae_fixture["buffer_keys"] == [vq.EMA_HIT]
    assert [k for k, _ in vqvae.named_parameters()] == vae_fixture["parameter_keys"]
    assert sum(p.numel() for p in vqvae.parameters()) == vae_fixture["num_parameters"] == 4_375_003
    assert sum(t.numel() for t in sd.values()) == vae_fixture["num_state_dict_elements"]
    assert not vqvae.training and not any(p.requires_grad for p in vqvae.parameters())  # test_mode


def test_encoder_output_f(encoded, case):
    f = encoded[0]
    assert f.shape == (4, 8, 4, 4)
    torch.testing.assert_close(f, case["f_BChw"], atol=ATOL, rtol=0)


def test_tokens_exact_and_running_f_hat(vqvae, images, encoded, case):
    tokens = vq.image_to_tokens(vqvae, images)
    assert [t.shape for t in tokens] == [(4, 1), (4, 4), (4, 9), (4, 16)]
    assert all(t.dtype == torch.int64 for t in tokens)
    assert [t.tolist() for t in tokens] == [t.tolist() for t in case["idx_Bl"]]  # exact
    for ours, theirs in zip(encoded[2], case["fhat_per_scale"]):
        torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


def test_teacher_forcing_input(vqvae, case):
    x = vq.tokens_to_teacher_forcing_input(vqvae, case["idx_Bl"])
    assert x.shape == case["x_BLCv_wo_first_l"].shape == (4, 29, 8) and x.dtype == torch.float32
    torch.testing.assert_close(x, case["x_BLCv_wo_first_l"], atol=ATOL, rtol=0)


def test_sampler_steps_rebuild_teacher_forcing_input_and_f_hat(vqvae, case, encoded):
    """next_autoregressive_input, applied scale by scale, gives the same inputs and final f̂."""
    f_hat, maps = vq.empty_f_hat(vqvae, 4), []
    for si, (pn, idx) in enumerate(zip(vqvae.v_patch_nums, case["idx_Bl"])):
        h = vq.codebook(vqvae)[idx].transpose(1, 2).reshape(4, 8, pn, pn)
        f_hat, next_map = vq.next_autoregressive_input(vqvae, si, f_hat, h)
        maps.append(next_map.flatten(2).transpose(1, 2))
    torch.testing.assert_close(torch.cat(maps[:-1], 1), case["x_BLCv_wo_first_l"], atol=ATOL, rtol=0)
    assert torch.equal(maps[-1].transpose(1, 2).reshape(4, 8, 4, 4), f_hat)  # last scale returns f̂ itself
    torch.testing.assert_close(f_hat, encoded[2][-1], atol=ATOL, rtol=0)
    torch.testing.assert_close(vq.tokens_to_f_hat(vqvae, case["idx_Bl"]), f_hat, atol=1e-6, rtol=0)


def test_reconstruction(vqvae, images, case):
    with torch.no_grad():
        from_tokens = vq.tokens_to_image(vqvae, case["idx_Bl"])
        from_images = vq.reconstruct(vqvae, images[1:3])
    assert from_tokens.shape == (4, 3, 64, 64)
    torch.testing.assert_close(from_tokens, case["recon_idxBl_to_img"], atol=ATOL, rtol=0)
    torch.testing.assert_close(from_images, case["recon_idxBl_to_img"][1:3], atol=ATOL, rtol=0)
    assert from_tokens.abs().max().item() == 1.0  # clamped (README: ~8 % of pixels at ±1)


def test_tokens_are_batch_size_independent(vqvae, images, case):
    for i in (0, 3):
        alone = vq.image_to_tokens(vqvae, images[i:i + 1])
        assert [t[0].tolist() for t in alone] == [t[i].tolist() for t in case["idx_Bl"]]


@pytest.mark.parametrize("num_scales, expected", [
    (10, [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]),                # official VAR `models/quant.py` (float64 tie-break at scales 2 and 7)
    (14, [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]),    # official VAR `models/quant.py`
    (4, [0, 1, 2, 3]),                                   # fixtures README §7 phi_index_per_scale
])
def test_phi_index_per_scale(num_scales, expected):
    assert vq.phi_index_per_scale(num_scales, 4) == expected


def test_quantizer_uses_the_official_phi_table(vqvae, official_fixture):
    table = official_fixture("var_tiny.pt")["phi_index_per_scale"]
    phis = list(vqvae.quantize.quant_resi.qresi_ls)
    assert [phis.index(vqvae.quantize.phi(si)) for si in range(4)] == table


def test_official_256px_config_parameter_count():
    """vae_ch160v4096z32.pth config (official VAR `models/vqvae.py`): ≈108.9M = encoder 44.1M + decoder 64.7M + quantiser 0.17M."""
    with torch.device("meta"):
        net = vq.vqvae_from_official(dict(vocab_size=4096, z_channels=32, ch=160, dropout=0.0, beta=0.25,
                                          using_znorm=False, quant_conv_ks=3, quant_resi=0.5, share_quant_resi=4,
                                          v_patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), test_mode=True))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert round(count(net) / 1e5) == 1089
    assert (round(count(net.encoder) / 1e5), round(count(net.decoder) / 1e5)) == (441, 647)
    assert round(count(net.quantize) / 1e4) == 17
    shapes = {k: tuple(t.shape) for k, t in net.state_dict().items()}
    assert shapes[vq.EMA_HIT] == (10, 4096) and shapes["quantize.embedding.weight"] == (4096, 32)
    assert shapes["encoder.down.4.attn.1.qkv.weight"] == (1920, 640, 1, 1)
    assert shapes["encoder.conv_out.weight"] == (32, 640, 3, 3)
    assert [k for k in shapes if "nin_shortcut.weight" in k] == [
        "encoder.down.2.block.0.nin_shortcut.weight", "encoder.down.4.block.0.nin_shortcut.weight",
        "decoder.up.1.block.0.nin_shortcut.weight", "decoder.up.3.block.0.nin_shortcut.weight"]
    assert {k for k in shapes if ".attn." in k and k.endswith("qkv.weight")} == {
        *(f"encoder.down.4.attn.{j}.qkv.weight" for j in range(2)),
        *(f"decoder.up.4.attn.{j}.qkv.weight" for j in range(3))}
    assert all(shapes[f"quantize.quant_resi.qresi_ls.{i}.weight"] == (32, 32, 3, 3) for i in range(4))
    assert vq.phi_index_per_scale(10, 4) == net.quantize.phi_index


def test_ema_hit_buffer_with_another_scale_count_is_kept(vae_fixture, state_dict):
    """Fixtures README §8 item 11: a checkpoint buffer with another number of scales is silently replaced."""
    kwargs = {**vae_fixture["init_kwargs"], "v_patch_nums": (1, 2, 4)}
    net = vq.vqvae_from_official(kwargs)
    theirs = state_dict[vq.EMA_HIT]
    net.load_state_dict(state_dict, strict=True)
    assert net.quantize.ema_vocab_hit_SV.shape == (3, 64)
    assert state_dict[vq.EMA_HIT] is theirs  # the caller's dict is not modified
    same = vq.vqvae_from_official(vae_fixture["init_kwargs"])
    same.load_state_dict({**state_dict, vq.EMA_HIT: torch.ones(4, 64)}, strict=True)
    assert torch.equal(same.quantize.ema_vocab_hit_SV, torch.ones(4, 64))  # same count: loaded as usual


def test_training_forward_without_distributed():
    """Straight-through f̂, VQ loss = mean_k (1 + β)·mse(f̂_k, f) in value, codebook-hit EMA; no process group."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = vq.VQVAE(vocab_size=16, z_channels=8, ch=32, v_patch_nums=(1, 2), test_mode=False).train()
        images = torch.rand(2, 3, 32, 32) * 2 - 1
    recon, loss = net(images)
    with torch.no_grad():
        f = net.encode(images)
        tokens, f_hats = net.quantize.f_to_tokens(f)
    expected = sum((1 + 0.25) * torch.mean((fh - f) ** 2) for fh in f_hats) / 2
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-5)
    assert recon.shape == (2, 3, 32, 32)
    (recon.square().mean() + loss).backward()
    for name in ("encoder.conv_in.weight", "quantize.embedding.weight", "quantize.quant_resi.qresi_ls.0.weight",
                 "decoder.conv_out.weight"):
        assert net.get_parameter(name).grad.abs().sum() > 0, name
    hits = net.quantize.ema_vocab_hit_SV
    assert torch.equal(hits[0], tokens[0].flatten().bincount(minlength=16).float())  # first record: a copy
    assert hits[1].sum().item() == pytest.approx(0.1 * 2 * 4)  # later records: EMA with momentum 0.9


@pytest.mark.parametrize("share, quant_resi, keys", [
    (0, 0.5, ["quantize.quant_resi.0.weight", "quantize.quant_resi.3.bias"]),  # one φ per scale
    (1, 0.5, ["quantize.quant_resi.qresi.weight", "quantize.quant_resi.qresi.bias"]),  # one shared φ
    (4, 0.0, []),  # |quant_resi| ≤ 1e-6: φ = identity, no keys
])
def test_phi_sharing_variants(vae_fixture, share, quant_resi, keys):
    net = vq.vqvae_from_official({**vae_fixture["init_kwargs"], "share_quant_resi": share, "quant_resi": quant_resi})
    phi_keys = [k for k in net.state_dict() if ".quant_resi." in k]
    assert phi_keys[:1] + phi_keys[-1:] == keys
    h = torch.randn(1, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    if quant_resi == 0.0:
        assert torch.equal(net.quantize.phi(2)(h), h)


def test_nearest_code_is_l2_argmin(vqvae):
    z = torch.randn(50, 8, generator=torch.Generator().manual_seed(1))
    E = vq.codebook(vqvae)
    assert torch.equal(vqvae.quantize.nearest_code(z), torch.cdist(z.double(), E.double()).argmin(dim=1))


def test_bad_inputs_are_rejected(vqvae, images, case):
    with pytest.raises(ValueError, match=r"\[B, 3, 64, 64\]"):
        vq.image_to_tokens(vqvae, images[:, :, :32, :32])
    with pytest.raises(ValueError, match="3, 64, 64"):
        vq.reconstruct(vqvae, images[:, :1])
    with pytest.raises(TypeError, match="floating-point"):
        vq.image_to_tokens(vqvae, case["images_uint8"])
    tokens = case["idx_Bl"]
    with pytest.raises(ValueError, match="list of 4"):
        vq.tokens_to_teacher_forcing_input(vqvae, tokens[:3])
    with pytest.raises(ValueError, match=r"tokens\[1\] must be \[B=4, 4\]"):
        vq.tokens_to_image(vqvae, [tokens[0], tokens[2], tokens[2], tokens[3]])
    with pytest.raises(TypeError, match="int64"):
        vq.tokens_to_image(vqvae, [t.int() for t in tokens])
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        vq.tokens_to_image(vqvae, [tokens[0] + 64, *tokens[1:]])
    with pytest.raises(ValueError, match="unknown VQVAE arguments"):
        vq.vqvae_from_official({"vocab_size": 64, "channels": 32})
    with pytest.raises(ValueError, match="divisible by 32"):
        vq.VQVAE(ch=48, v_patch_nums=(1, 2))
    with pytest.raises(ValueError, match="v_patch_nums"):
        vq.VQVAE(ch=32, v_patch_nums=(1, 2.5))
