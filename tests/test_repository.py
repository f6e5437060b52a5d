"""Repository hygiene: clean notebooks, consistent pins, CI calling the README test command."""
import ast
import json
import pathlib
import re

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_notebooks_are_numbered_in_reading_order():
    """NN_verb_object.ipynb, numbered 00, 01, … without gaps or duplicates."""
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert all(re.fullmatch(r"\d\d_[a-z0-9]+(_[a-z0-9]+)*\.ipynb", p.name) for p in NOTEBOOKS), NOTEBOOKS
    assert numbers == list(range(len(NOTEBOOKS)))


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


def _requirements() -> list[str]:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_requirements_agree_with_the_package_and_the_environment():
    """requirements.txt pins exactly what pyproject.toml declares, and the running environment is that one
    (a drifted venv or an edit to one file only fails here)."""
    import importlib.metadata
    import tomllib

    pins = dict(line.split("==") for line in _requirements())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    for requirement in declared:
        name, _, version = requirement.partition("==")
        assert name in pins, f"pyproject.toml declares {name}, requirements.txt does not pin it"
        if version:
            assert pins[name] == version, f"{name}: pyproject {version} vs requirements {pins[name]}"
    for name, version in pins.items():
        assert importlib.metadata.version(name) == version, f"installed {name} differs from its pin {version}"


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
    """Compute rules: each round ≤ 5 % of pretraining; the control spends DDO's steps with the same batch, EMA
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


def test_readme_is_a_short_recipe_whose_links_and_snippet_work():
    readme = (REPO / "README.md").read_text()
    assert len(readme) <= 15_000, f"README has {len(readme)} characters (limit 15,000: details go to docs/)"
    for link in re.findall(r"\]\(([^)#]+)\)", readme):
        assert (REPO / link).exists(), f"README links to {link}, which does not exist"
    assert "| stage (executed notebook) | wall-clock |" not in readme  # generated into metrics/ instead
    snippet = readme.split("```python\n", 1)[1].split("```", 1)[0]
    imports = [line for line in snippet.splitlines() if line.startswith(("from ", "import "))]
    namespace: dict = {}
    exec("\n".join(imports), namespace)  # every name the snippet imports exists
    config_line = next(line for line in snippet.splitlines() if line.startswith("cfg = "))
    exec(config_line, namespace)  # the DDOConfig it builds is valid
    import inspect

    assert "work_dir" in inspect.signature(namespace["train"].run_rounds).parameters


def test_docs_name_tests_that_exist():
    """Every `tests/…py::test_name` that docs/ cite (a bare `::name` refers to the file named before it)."""
    for doc in sorted((REPO / "docs").glob("*.md")):
        current = None
        for match in re.finditer(r"`(tests/[\w/]+\.py)?::(\w+)`", doc.read_text()):
            current = match.group(1) or current
            assert current is not None, f"{doc.name}: ::{match.group(2)} without a file"
            source = (REPO / current).read_text()
            assert re.search(rf"def {match.group(2)}\b", source), f"{doc.name} cites {current}::{match.group(2)}"
