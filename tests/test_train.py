"""DDO rounds: invariants, resume, bad input, NaN handling, MLE control, DDP equivalence."""
import copy
import dataclasses
import math
import os

import pytest
import torch
import torch.multiprocessing as mp

from ddo_lib import data as data_lib
from ddo_lib import train
from ddo_lib.config import DDOConfig
from ddo_lib.edm.family import EDMFamily
from ddo_lib.edm.precond import network_from_official
from ddo_lib.objective import ddo_loss

TINY = dict(img_resolution=8, img_channels=1, label_dim=10, model_type="SongUNet", model_channels=16,
            channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], dropout=0.1,
            embedding_type="positional", encoder_type="standard", decoder_type="standard",
            channel_mult_noise=1, resample_filter=[1, 1])
CFG = DDOConfig(rounds=2, steps_per_round=4, batch_size=8, pool_size=16, pool_steps=3, eval_every=2,
                log_every=1, checkpoint_every=1, lr=1e-3, lr_warmup_steps=1, beta=0.1, alpha=2.0)


def tiny_reference(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = network_from_official("EDMPrecond", TINY)
    with torch.no_grad():  # move the zero-initialised output layers so the net is not trivial
        for p in net.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return net.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def dataset():
    images, labels = data_lib.load_digits_dataset(8)
    return data_lib.make_dataset(images[:200], labels[:200], name="digits-200")


def family():
    return EDMFamily(num_steps=3, batch_size=16)


def fake_metric(net, round_index):
    """A deterministic stand-in metric: the mean absolute parameter value of the EMA."""
    return float(sum(p.abs().sum() for p in net.parameters()))


def test_log_ratio_is_exactly_zero_at_theta_equal_ref(dataset):
    ref = tiny_reference()
    net = copy.deepcopy(ref)
    x = data_lib.to_float(dataset.images[:6])
    labels = data_lib.one_hot(dataset.labels[:6], 10)
    draws = family().draw(torch.Generator().manual_seed(0), x)
    logr = family().log_ratio(net, ref, x, labels, draws)
    assert logr.shape == (6,) and torch.equal(logr, torch.zeros(6))
    loss_real, loss_fake = ddo_loss(logr[:3], logr[3:], alpha=3.0, beta=0.1)
    torch.testing.assert_close((loss_real + loss_fake), torch.full((3,), 4 * math.log(2)))


def test_log_ratio_detects_a_changed_network_and_only_theta_gets_gradients(dataset):
    ref = tiny_reference()
    net = copy.deepcopy(ref).requires_grad_(True)
    with torch.no_grad():
        net.model.dec["8x8_aux_conv"].bias.add_(0.1)
    x = data_lib.to_float(dataset.images[:4])
    draws = family().draw(torch.Generator().manual_seed(1), x)
    logr = family().log_ratio(net, ref, x, data_lib.one_hot(dataset.labels[:4], 10), draws)
    assert (logr != 0).all()
    logr.sum().backward()
    assert net.model.dec["8x8_aux_conv"].bias.grad is not None
    assert all(p.grad is None for p in ref.parameters())


def test_rounds_run_and_log_discriminator_statistics(dataset, tmp_path):
    states = train.run_rounds(family(), tiny_reference(), dataset, CFG, metric_fn=fake_metric,
                              work_dir=tmp_path, progress=False)
    assert [s.done for s in states] == [True, True]
    rows = [r for r in states[0].history if "loss" in r]
    assert len(rows) == CFG.steps_per_round
    assert {"accuracy", "margin"} <= set(rows[0])
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert (tmp_path / "round1" / "pool.pt").exists()
    # the best EMA is the minimum of the metric over the evaluated points
    metrics = [r["metric"] for r in states[0].history if "metric" in r]
    assert states[0].best_metric == min(metrics)


def test_resume_after_interruption_is_bit_identical(dataset, tmp_path):
    straight = train.run_rounds(family(), tiny_reference(), dataset, CFG, metric_fn=fake_metric,
                                work_dir=tmp_path / "a", progress=False)
    partial = train.run_rounds(family(), tiny_reference(), dataset, CFG, metric_fn=fake_metric,
                               work_dir=tmp_path / "b", progress=False, stop_after=3)
    assert not partial[-1].done
    resumed = train.run_rounds(family(), tiny_reference(), dataset, CFG, metric_fn=fake_metric,
                               work_dir=tmp_path / "b", progress=False)
    for a, b in zip(straight, resumed):
        assert a.history == b.history
        for key, value in a.ema.state_dict().items():
            assert torch.equal(value, b.ema.state_dict()[key]), key


def test_a_finished_round_keeps_only_its_result(dataset, tmp_path):
    first = train.run_rounds(family(), tiny_reference(), dataset, CFG, metric_fn=fake_metric, work_dir=tmp_path,
                             progress=False)
    saved = torch.load(tmp_path / "round0" / "state.pt", weights_only=True)
    assert saved["done"] and not {"net", "ema", "optimizer"} & set(saved)
    again = train.run_rounds(family(), tiny_reference(), dataset, CFG, metric_fn=fake_metric, work_dir=tmp_path,
                             progress=False)  # read back, nothing trained
    for a, b in zip(first, again):
        assert a.history == b.history and a.best_step == b.best_step
        best_a, best_b = train.best_network(a).state_dict(), train.best_network(b).state_dict()
        assert all(torch.equal(best_a[key], best_b[key]) for key in best_a)


def test_checkpoints_are_also_written_by_the_clock(dataset, tmp_path, monkeypatch):
    clock = iter(range(0, 10**6, 90))  # every reading of the clock is 90 s after the previous one
    monkeypatch.setattr(train.time, "monotonic", lambda: next(clock))
    cfg = dataclasses.replace(CFG, checkpoint_every=1000, checkpoint_minutes=1.0)
    train.run_rounds(family(), tiny_reference(), dataset, cfg, work_dir=tmp_path, progress=False, stop_after=2)
    assert torch.load(tmp_path / "round0" / "state.pt", weights_only=True)["step"] == 2
    steps_only = dataclasses.replace(cfg, checkpoint_minutes=None)
    train.run_rounds(family(), tiny_reference(), dataset, steps_only, work_dir=tmp_path / "steps", progress=False,
                     stop_after=2)
    assert not (tmp_path / "steps" / "round0" / "state.pt").exists()


def test_mle_control_mode_runs_the_same_loop(dataset):
    cfg = dataclasses.replace(CFG, mode="mle", rounds=1)
    (state,) = train.run_rounds(family(), tiny_reference(), dataset, cfg, progress=False)
    assert state.done and all("accuracy" not in r for r in state.history)
    assert any(not torch.equal(a, b) for a, b in zip(state.net.parameters(), tiny_reference().parameters()))


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(dataset, tmp_path):
    class NaNAfterTwo(EDMFamily):
        calls = 0

        def log_ratio(self, net, ref, x, labels, draws):
            NaNAfterTwo.calls += 1
            logr = super().log_ratio(net, ref, x, labels, draws)
            return logr * float("nan") if NaNAfterTwo.calls > 2 else logr

    cfg = dataclasses.replace(CFG, rounds=1)
    with pytest.raises(FloatingPointError, match="step 2"):
        train.run_rounds(NaNAfterTwo(num_steps=3, batch_size=16), tiny_reference(), dataset, cfg,
                         work_dir=tmp_path, progress=False)
    saved = torch.load(tmp_path / "round0" / "state.pt", weights_only=True)
    assert saved["step"] == 2 and all(torch.isfinite(v).all() for v in saved["net"].values())


def test_different_architectures_are_refused():
    from ddo_lib.family import check_same_architecture

    other = network_from_official("EDMPrecond", dict(TINY, model_channels=32))
    with pytest.raises(ValueError, match="different architectures"):
        check_same_architecture(other, tiny_reference())


def test_bad_fake_pool_is_refused(dataset):
    good = torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64)
    train.check_pool(*good, dataset)
    with pytest.raises(ValueError, match="expected uint8"):
        train.check_pool(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), good[1], dataset)
    with pytest.raises(ValueError, match="labels must lie"):
        train.check_pool(good[0], torch.full((4,), 10), dataset)
    with pytest.raises(ValueError, match="expected labels"):
        train.check_pool(good[0], torch.zeros(3, dtype=torch.int64), dataset)


def _ddp_worker(rank: int, world_size: int, port: int, out: str, work_dir: str, fakes: str = "pool") -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        images, labels = data_lib.load_digits_dataset(8)
        dataset = data_lib.make_dataset(images[:200], labels[:200], name="digits-200")
        cfg = dataclasses.replace(CFG, rounds=1, steps_per_round=3, fakes=fakes)
        (state,) = train.run_rounds(family(), tiny_reference(), dataset, cfg, progress=False, work_dir=work_dir)
        if rank == 0:
            torch.save(state.ema.state_dict(), out)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process(dataset, tmp_path, free_port):
    cfg = dataclasses.replace(CFG, rounds=1, steps_per_round=3)
    (single,) = train.run_rounds(family(), tiny_reference(), dataset, cfg, progress=False)
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, free_port, out, str(tmp_path / "ddp")), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    for key, value in single.ema.state_dict().items():
        torch.testing.assert_close(ddp[key], value, rtol=1e-4, atol=1e-6, msg=key)
    # The pool went through per-rank uint8 shard files (removed afterwards) and equals the 1-process pool.
    pool = torch.load(tmp_path / "ddp" / "round0" / "pool.pt", weights_only=True)
    expected, _, _ = train.generate_pool(family(), tiny_reference(), size=cfg.pool_size, label_dim=dataset.label_dim,
                                         seed=cfg.seed, round_index=0)
    assert pool["images"].dtype == torch.uint8 and torch.equal(pool["images"], expected)
    assert not any((tmp_path / "ddp" / "round0" / "pool_shards").iterdir())


def test_a_multi_process_pool_needs_a_shared_folder(dataset, monkeypatch):
    monkeypatch.setattr(train, "world", lambda: (0, 2))
    with pytest.raises(ValueError, match="shared folder"):
        train.generate_pool(family(), tiny_reference(), size=4, label_dim=dataset.label_dim, seed=0, round_index=0)


def test_token_and_guidance_options_are_refused_for_edm(dataset):
    family = EDMFamily(num_steps=2, batch_size=4)
    cfg = DDOConfig(rounds=1, steps_per_round=1, batch_size=4, pool_size=4)
    with pytest.raises(ValueError, match="token family"):
        train.run_rounds(family, tiny_reference(), dataset, dataclasses.replace(cfg, fake_tokens="sampled"))
    with pytest.raises(ValueError, match="fake_cfg applies to VAR"):
        train.run_rounds(family, tiny_reference(), dataset, dataclasses.replace(cfg, fake_cfg=1.0))


def test_a_round_does_not_rescore_its_reference(dataset):
    """Round k's step 0 is round k−1's best EMA: its known metric is reused, not recomputed."""
    scored = []

    def metric(net, round_index):
        scored.append(round_index)
        return fake_metric(net, round_index)

    states = train.run_rounds(family(), tiny_reference(), dataset, CFG, metric_fn=metric, progress=False)
    per_round = CFG.steps_per_round // CFG.eval_every
    assert scored == [0] * (per_round + 1) + [1] * per_round
    step0 = next(r for r in states[1].history if r["step"] == 0)
    assert step0["metric"] == states[0].best_metric
    assert fake_metric(train.best_network(states[0]), 1) == states[0].best_metric  # the reuse is exact


@pytest.mark.parametrize("mode", ["ddo", "mle"])
def test_micro_batches_accumulate_the_whole_batch_gradient(dataset, mode):
    """Gradient accumulation over micro-batches of 3 rows (8 = 3 + 3 + 2) gives the whole batch's loss,
    statistics and gradient (compared before Adam, whose first step amplifies float noise in ~0 gradients)."""
    ref = tiny_reference()
    cfg = dataclasses.replace(CFG, mode=mode)
    pool = train.generate_pool(family(), ref, size=16, label_dim=10, seed=0, round_index=0) if mode == "ddo" else None
    batch = train.step_inputs(family(), dataset, pool, cfg, 0, 0)
    results = []
    for micro_batch in (None, 3):
        net = train.disable_dropout(copy.deepcopy(ref)).train().requires_grad_(True)
        if mode == "ddo":
            def objective(model, part):
                return train.ddo_objective(family(), model, ref, part, cfg)
        else:
            def objective(model, part):
                return train.mle_objective(family(), model, part)
        loss, stats = train.accumulated_loss(objective, net, batch, micro_batch)
        results.append((loss, stats, {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}))
    (loss, stats, grads), (loss3, stats3, grads3) = results
    assert loss3.item() == pytest.approx(loss.item(), rel=1e-6)
    assert stats.keys() == stats3.keys() and all(stats3[k] == pytest.approx(float(stats[k]), rel=1e-5, abs=1e-6)
                                                 for k in stats)
    assert grads.keys() == grads3.keys()
    for key, value in grads.items():
        torch.testing.assert_close(grads3[key], value, rtol=1e-4, atol=1e-6 * max(value.abs().max().item(), 1e-3),
                                   msg=key)


def test_micro_batch_must_be_positive(dataset):
    with pytest.raises(ValueError, match="micro_batch must be >= 1"):
        train.run_rounds(family(), tiny_reference(), dataset, dataclasses.replace(CFG, micro_batch=0))


def test_bf16_autocast_trains_in_fp32_state(dataset):
    """bf16 forwards only: the loss, the parameters, the optimizer state and the EMA stay float32, and the
    result stays close to the fp32 run (a few steps of a tiny net)."""
    cfg = dataclasses.replace(CFG, rounds=1, steps_per_round=2)
    (fp32,) = train.run_rounds(family(), tiny_reference(), dataset, cfg, progress=False)
    (bf16,) = train.run_rounds(family(), tiny_reference(), dataset, cfg, progress=False, precision="bf16")
    assert all(p.dtype == torch.float32 for p in bf16.net.parameters())
    assert all(v.dtype == torch.float32 for v in bf16.ema.state_dict().values() if v.is_floating_point())
    assert all(s["exp_avg"].dtype == torch.float32 for s in bf16.optimizer.state.values())
    assert all(math.isfinite(row["loss"]) for row in bf16.history if "loss" in row)
    drift = max((a - b).abs().max().item() for a, b in zip(fp32.ema.parameters(), bf16.ema.parameters()))
    assert 0 < drift < 1e-2


def test_rounds_run_on_the_requested_device(dataset):
    """`device` moves θ, ref and every batch; on a machine without CUDA the CPU path is the only one."""
    cfg = dataclasses.replace(CFG, rounds=1, steps_per_round=1)
    (state,) = train.run_rounds(family(), tiny_reference(), dataset, cfg, progress=False, device="cpu")
    assert next(state.net.parameters()).device.type == "cpu"
    with pytest.raises((RuntimeError, AssertionError)):
        if not torch.cuda.is_available():
            train.run_rounds(family(), tiny_reference(), dataset, cfg, progress=False, device="cuda")
        else:
            raise AssertionError("CUDA present: the GPU path is exercised by benchmarks/bench_gpu.py")


def test_parameters_without_gradient_are_frozen_for_ddp(dataset):
    """EDM's CIFAR-10 networks carry `map_augment` (augment_dim 9); without augmentation labels it gets no
    gradient, and DDP would wait for it forever: freeze_unused finds and freezes exactly such parameters."""
    from ddo_lib.edm import network_from_official

    net = network_from_official("EDMPrecond", dict(img_resolution=8, img_channels=1, label_dim=10, model_type="SongUNet",
                                                   model_channels=8, channel_mult=[1], num_blocks=1,
                                                   attn_resolutions=[], augment_dim=9))
    ref = copy.deepcopy(net).requires_grad_(False)
    cfg = dataclasses.replace(CFG, rounds=1, steps_per_round=1)
    pool = train.generate_pool(family(), ref, size=8, label_dim=dataset.label_dim, seed=0, round_index=0)
    batch = train.step_inputs(family(), dataset, pool, cfg, 0, 0)
    unused = train.freeze_unused(net, lambda model, part: train._objective(family(), model, ref, part, cfg, "fp32"),
                                 batch)
    assert unused == ["model.map_augment.weight"]
    assert not net.model.map_augment.weight.requires_grad
    assert all(p.requires_grad for name, p in net.named_parameters() if name not in unused)
    assert all(p.grad is None for p in net.parameters())


def test_online_fakes_are_sampled_from_ref_with_the_real_labels(dataset):
    """fakes='online' (official VAR recipe): step s's fakes are ref's samples for `online_seeds(seed, k, s)` with
    the real rows' labels, a pure function of (seed, round, step)."""
    from ddo_lib.seeds import online_seeds

    cfg = dataclasses.replace(CFG, fakes="online")
    ref = tiny_reference()
    fakes = train.OnlineFakes(family(), ref)
    batch = train.step_inputs(family(), dataset, fakes, cfg, 1, 3)
    assert torch.equal(batch.fake_labels, batch.real_labels)
    real_index = data_lib.batch_indices(len(dataset), cfg.batch_size, cfg.seed + 7, 3)
    expected = family().sample(ref, online_seeds(cfg.seed, 1, 3, cfg.batch_size, cfg.steps_per_round),
                               dataset.labels[real_index])
    assert torch.equal(batch.fake, data_lib.to_float(expected))
    again = train.step_inputs(family(), dataset, fakes, cfg, 1, 3)
    assert torch.equal(again.fake, batch.fake) and torch.equal(again.draws["noise"], batch.draws["noise"])
    assert not torch.equal(train.step_inputs(family(), dataset, fakes, cfg, 1, 4).fake, batch.fake)


def test_online_rounds_write_no_pool_and_resume_bit_identically(dataset, tmp_path):
    cfg = dataclasses.replace(CFG, fakes="online", rounds=1)
    (whole,) = train.run_rounds(family(), tiny_reference(), dataset, cfg, work_dir=tmp_path / "a", progress=False)
    assert not (tmp_path / "a" / "round0" / "pool.pt").exists()
    train.run_rounds(family(), tiny_reference(), dataset, cfg, work_dir=tmp_path / "b", progress=False, stop_after=2)
    (resumed,) = train.run_rounds(family(), tiny_reference(), dataset, cfg, work_dir=tmp_path / "b", progress=False)
    for key, value in whole.ema.state_dict().items():
        assert torch.equal(resumed.ema.state_dict()[key], value), key


def test_online_fakes_on_two_gloo_processes_match_one_process(dataset, tmp_path, free_port):
    cfg = dataclasses.replace(CFG, rounds=1, steps_per_round=3, fakes="online")
    (single,) = train.run_rounds(family(), tiny_reference(), dataset, cfg, progress=False)
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, free_port, out, str(tmp_path / "ddp"), "online"), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    for key, value in single.ema.state_dict().items():
        torch.testing.assert_close(ddp[key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_an_unknown_fake_source_is_refused(dataset):
    with pytest.raises(ValueError, match="fakes must be 'pool'"):
        train.run_rounds(family(), tiny_reference(), dataset, dataclasses.replace(CFG, fakes="stream"))
