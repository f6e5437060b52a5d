"""Repository hygiene: clean notebooks, consistent pins, CI calling the README test command."""
import ast
import json
import pathlib
import re

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 2


def test_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS:
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                assert cell.get("outputs") == [], f"{path.name}: a code cell has outputs"
                assert cell.get("execution_count") is None, f"{path.name}: execution_count is set"


def test_notebooks_have_one_literal_parameters_cell():
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text())["cells"]
        tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: expected one 'parameters' cell, found {len(tagged)}"
        for node in ast.parse("".join(tagged[0]["source"])).body:
            assert isinstance(node, ast.Assign), f"{path.name}: parameters cell must hold assignments only"
            ast.literal_eval(node.value)  # raises on anything but literals (numbers, strings, lists, dicts)


def test_notebooks_stay_thin():
    for path in NOTEBOOKS:
        source = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"]
                           if c["cell_type"] == "code")
        for node in ast.walk(ast.parse(source)):
            assert not isinstance(node, ast.ClassDef), f"{path.name}: class {node.name} in a notebook"
            if isinstance(node, ast.FunctionDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= 10, f"{path.name}: function {node.name} has {length} lines"


def _requirements() -> list[str]:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_torch_stack_pinned_exactly():
    pins = dict(line.split("==") for line in _requirements())
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1" and pins["torch-fidelity"] == "0.4.0"


def test_environment_yml_installs_requirements():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-r requirements.txt" in pip_section


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^(python3 dev\.py \w+)\s*$", quickstart, flags=re.M)
    assert commands == ["python3 dev.py repro", "python3 dev.py test"]
    assert "python3 dev.py test" in (REPO / ".ci" / "run").read_text().splitlines()


def test_dvc_analytics_and_updates_off():
    config = (REPO / ".dvc" / "config").read_text()
    assert re.search(r"analytics\s*=\s*false", config) and re.search(r"check_update\s*=\s*false", config)


def test_stages_pass_booleans_as_yaml():
    """papermill `-p smoke false` would hand the notebook the truthy string 'false'."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        cmd = (stage.get("do") or stage)["cmd"]
        assert "-p smoke" not in cmd, name
        assert '-y "smoke: ${smoke}"' in cmd, name


@pytest.mark.parametrize("family", [("reference", "ddo", "mle", "plateau"),
                                    ("var_reference", "var_ddo", "var_mle", "var_plateau")])
def test_default_profile_keeps_its_compute_rules(family):
    """Issue [3/5]: each round ≤ 5 % of pretraining; the control spends DDO's steps with the same batch, EMA
    and selection; the plateau run continues MLE for twice DDO's rows through θ (2·rounds·steps·2B)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    pretrain, ddo, mle, plateau = (params[name] for name in family)
    for run in (ddo, mle):
        assert run["steps_per_round"] <= 0.05 * pretrain["steps"] + 1e-9
    same = ("rounds", "steps_per_round", "batch_size", "ema_halflife_images", "eval_every", "seed")
    assert {k: ddo[k] for k in same} == {k: mle[k] for k in same}
    assert plateau["mode"] == mle["mode"] == "mle" and ddo["mode"] == "ddo"
    assert plateau["rounds"] * plateau["steps_per_round"] == 4 * ddo["rounds"] * ddo["steps_per_round"]
    assert {k: plateau[k] for k in ("lr", "batch_size", "ema_halflife_images")} == \
        {k: mle[k] for k in ("lr", "batch_size", "ema_halflife_images")}
