"""Paper presets: every preset validates against the configs, applying one rewrites params.yaml atomically
and keeps the sections it does not set, and bad presets are refused with the file and section named."""
import pathlib
import subprocess
import sys

import pytest
import yaml

from ddo_lib.config import ConfigError
from ddo_lib.pipeline import params, presets

REPO = pathlib.Path(__file__).resolve().parents[2]
PAPER = {"cifar10-cond": 1.30, "cifar10-uncond": 1.38, "imagenet64-edm2-s": 0.97}


def test_the_paper_presets_exist():
    assert set(PAPER) <= set(presets.available(REPO))


@pytest.mark.parametrize("name", sorted(PAPER))
def test_every_preset_validates_and_carries_the_paper_setting(name):
    sections = presets.load(name, REPO)
    assert {"launch", "data", "reference", "ddo", "mle", "plateau", "evaluate"} <= set(sections)
    evaluate = sections["evaluate"]
    assert evaluate["metric"] == "fid" and evaluate["num_images"] == 50000
    assert evaluate["seed_offsets"] == [0, 50000, 100000] and evaluate["paper_value"] == PAPER[name]
    ddo, mle = sections["ddo"], sections["mle"]
    same = ("rounds", "steps_per_round", "batch_size", "ema_halflife_images", "eval_every")
    assert ddo["mode"] == "ddo" and mle["mode"] == "mle" and {k: ddo[k] for k in same} == {k: mle[k] for k in same}
    assert sections["plateau"]["steps_per_round"] == 4 * ddo["rounds"] * ddo["steps_per_round"]


def test_applying_a_preset_keeps_the_other_sections_and_loads(tmp_path):
    target = tmp_path / "params.yaml"
    target.write_text((REPO / "params.yaml").read_text())
    presets.apply("cifar10-cond", target, REPO)
    written = yaml.safe_load(target.read_text())
    assert written["toy2d"] == yaml.safe_load((REPO / "params.yaml").read_text())["toy2d"]
    assert params.load_section(params.EvaluateConfig, target, "evaluate").metric == "fid"
    assert written["launch"]["device"] == "cuda"


def test_bad_presets_are_refused_and_params_yaml_is_left_as_it_was(tmp_path):
    root = tmp_path / "repo"
    (root / "presets").mkdir(parents=True)
    (root / "presets" / "typo.yaml").write_text("ddo:\n  rounds: 2\n  lr_typo: 1.0\n")
    (root / "presets" / "section.yaml").write_text("evaluation:\n  num_images: 5\n")
    (root / "presets" / "value.yaml").write_text("launch:\n  device: tpu\n")
    target = tmp_path / "params.yaml"
    target.write_text("smoke: false\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: ddo: unknown keys \['lr_typo'\]"):
        presets.apply("typo", target, root)
    with pytest.raises(ConfigError, match=r"unknown sections \['evaluation'\]"):
        presets.apply("section", target, root)
    with pytest.raises(ConfigError, match="launch.device"):
        presets.apply("value", target, root)
    with pytest.raises(FileNotFoundError, match="no preset 'nope'"):
        presets.apply("nope", target, root)
    assert target.read_text() == "smoke: false\n"


def test_the_command_line_reports_errors_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ddo_lib.pipeline.presets", "nope", "--params",
                             str(tmp_path / "p.yaml")], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and result.stderr.startswith("error: no preset 'nope'")
