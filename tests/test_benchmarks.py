"""The prepared GPU benchmark runs its whole code path on tiny networks on the CPU (`--quick`) and writes one
JSON with every field; numbers are not asserted (speed is measured by the script, not by tests)."""
import json
import pathlib
import subprocess
import sys

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
