"""The prepared GPU benchmark runs its whole code path on tiny networks on the CPU (`--quick`) and writes one
JSON with every field; numbers are not asserted (speed is measured by the script, not by tests)."""
import json
import math
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_bench_gpu_quick_writes_every_field(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--device", "cpu", "--quick",
                    "--networks", "cifar10-ddpmpp", "--modes", "fp32", "bf16", "--out", str(out)],
                   check=True, capture_output=True, timeout=600, cwd=REPO)
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["quick"] is True
    assert [row["mode"] for row in result["rows"]] == ["fp32", "bf16"]
    for row in result["rows"]:
        assert row["sample_images_per_second"] > 0 and row["ddo_real_rows_per_second"] > 0
        assert row["steps"] == 4 and row["sampler"] == "edm"
    assert result["rows"][0]["max_abs_uint8_difference_vs_fp32"] == 0
    assert result["rows"][1]["max_abs_uint8_difference_vs_fp32"] is not None


def test_bench_gpu_quick_var_rows(tmp_path):
    """VAR rows: every (precision, attention) pair, sane speeds and ratios, accuracy against fp32 present."""
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--device", "cpu", "--quick",
                    "--networks", "var-d16", "--modes", "fp32", "bf16", "--out", str(out)],
                   check=True, capture_output=True, timeout=600, cwd=REPO)
    rows = json.loads(out.read_text())["rows"]
    assert [(row["mode"], row["attention"]) for row in rows] == [("fp32", "mask"), ("fp32", "prefix"),
                                                                 ("bf16", "mask"), ("bf16", "prefix")]
    for row in rows:
        assert row["network"] == "var-d16" and row["tokens_per_image"] == 30 and row["cfg"] == 1.0
        assert row["ddo_real_rows_per_second"] > 0 and row["mle_real_rows_per_second"] > 0
        assert math.isfinite(row["ddo_over_mle_step_time"]) and row["forward_backward_ms"] > 0
        assert row["max_micro_batch_real_rows"] == row["micro_batch_cap"] == 4  # the CPU never runs out
        assert row["step_batch_real_rows"] == 2 and 0 <= row["logp_max_abs_difference_vs_fp32"] < 0.1
        sampled = row["attention"] == "mask"  # the KV-cache sampler and the tokenizer do not use the kernel
        assert (row["sample_images_per_second"] is not None) == sampled
        if sampled:
            assert row["sample_images_per_second"] > 0 and row["tokenize_images_per_second"] > 0
            assert 0 <= row["sample_token_agreement_vs_fp32"] <= 1
            assert 0 <= row["tokenize_token_agreement_vs_fp32"] <= 1
        else:
            assert math.isfinite(row["forward_backward_time_vs_mask"]) and math.isfinite(row["ddo_step_time_vs_mask"])
    assert rows[0]["logp_max_abs_difference_vs_fp32"] == 0 and rows[0]["sample_token_agreement_vs_fp32"] == 1


def test_largest_micro_batch_doubles_until_out_of_memory():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import torch

    import bench_gpu

    tried = []

    def step_at(rows):
        tried.append(rows)
        if rows > 5:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    assert bench_gpu.largest_micro_batch(step_at, 64, torch.device("cpu")) == (4, None)
    assert tried == [1, 2, 4, 8]
    tried.clear()
    assert bench_gpu.largest_micro_batch(step_at, 3, torch.device("cpu")) == (2, None) and tried == [1, 2]


def test_cost_model_counts_flops_and_does_the_arithmetic():
    """forward_flops against the closed form of a linear layer; preset_costs against hand arithmetic."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import torch

    import cost_model

    assert cost_model.forward_flops(torch.nn.Linear(16, 8), torch.zeros(3, 16)) == 2 * 3 * 16 * 8
    preset = dict(launch=dict(precision="fp32"),
                  ddo=dict(batch_size=4, steps_per_round=10, pool_steps=3, pool_size=6, eval_every=5, rounds=2),
                  evaluate=dict(num_images=7, seed_offsets=[0, 7], sample_steps=2))
    row = cost_model.preset_costs(preset, 100, 1000, gpus=2, mfu=0.5)
    assert row["train_pflops"] * 1e15 == pytest.approx(8 * 4 * 100 * 10)  # θ fwd+bwd, ref fwd on 2B rows
    assert row["pool_pflops"] * 1e15 == pytest.approx(6 * 5 * 100)        # NFE = 2 * 3 - 1
    assert row["selection_pflops"] * 1e15 == pytest.approx(2 * 500 * 5 * 100)
    assert row["evaluation_pflops_per_model"] * 1e15 == pytest.approx(14 * (3 * 100 + 1000))
    rate = 2 * 494.7e12 * 0.5
    assert row["wall_hours_per_round"] == pytest.approx((32000 + 3000 + 500000) / rate / 3600)
    assert row["gpu_hours_per_round"] == pytest.approx(2 * row["wall_hours_per_round"])
