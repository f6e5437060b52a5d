"""The two floors and the pipeline's bookkeeping: the library never imports `ddo_lib.pipeline`, no import
circles, every DVC stage lists exactly the `ddo_lib` modules its notebook imports (transitively), every
notebook's default parameters equal those of the first stage that runs it, and notebooks stay thin."""
import ast
import json
import pathlib
import re
import shlex

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ddo_lib"
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
PIPELINES = [REPO / "dvc.yaml", REPO / "studies" / "dvc.yaml"]


# --- Import graph ------------------------------------------------------------------------------------

def module_file(name: str) -> pathlib.Path | None:
    base = REPO / pathlib.Path(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else None


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str) -> set[str]:
    """Every ddo_lib module a source imports, wherever the import statement sits (function-local included)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)):
            found.add(node.args[0].value)  # importlib.import_module("ddo_lib.…")
    return {name for name in found if name.split(".")[0] == "ddo_lib" and module_file(name)}


def direct_imports(name: str) -> set[str]:
    """A module's own imports plus its parent packages (importing a.b.c runs a/__init__ and a/b/__init__)."""
    parts = name.split(".")
    parents = {".".join(parts[:i]) for i in range(1, len(parts))}
    return (imports_of(module_file(name).read_text()) | parents) - {name}


def closure(names) -> set[pathlib.Path]:
    """The files of every module reachable from `names`."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += direct_imports(name)
    return {module_file(name).relative_to(REPO) for name in seen}


LIBRARY = [p for p in PACKAGE.rglob("*.py") if "pipeline" not in p.relative_to(PACKAGE).parts]


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(REPO)))
def test_library_never_imports_the_pipeline(path):
    bad = sorted(m for m in imports_of(path.read_text()) if m == "ddo_lib.pipeline" or m.startswith("ddo_lib.pipeline."))
    assert not bad, f"{path.relative_to(REPO)} imports {bad}: the library must not depend on ddo_lib.pipeline"


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(REPO)))
def test_library_draws_no_figures(path):
    assert "matplotlib" not in path.read_text(), f"{path.relative_to(REPO)}: plotting belongs to ddo_lib.pipeline"


def test_no_import_circles():
    graph = {module_name(p): {m for m in direct_imports(module_name(p))} for p in PACKAGE.rglob("*.py")}
    # A package importing its own submodules (ddo_lib/edm/__init__.py) is not a circle.
    edges = {a: {b for b in targets if not a.startswith(b + ".") and not b.startswith(a + ".")}
             for a, targets in graph.items()}
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


def test_the_closure_sees_function_local_and_dynamic_imports():
    """The checker itself: an import hidden inside a function, or made by name, still counts."""
    assert imports_of("def f():\n    from ddo_lib.pipeline import report\n") == {"ddo_lib.pipeline",
                                                                               "ddo_lib.pipeline.report"}
    assert imports_of("importlib.import_module('ddo_lib.edm.networks_edm2')") == {"ddo_lib.edm.networks_edm2"}


# --- DVC stages --------------------------------------------------------------------------------------

def expand(stage_name: str, stage: dict):
    """(name, stage) for every stage a DVC template generates (`foreach` over a dict or a list)."""
    if "foreach" not in stage:
        yield stage_name, stage
        return
    items = stage["foreach"]
    pairs = items.items() if isinstance(items, dict) else ((item, item) for item in items)
    for key, item in pairs:
        text = json.dumps(stage["do"])
        text = text.replace("${key}", str(key))
        if isinstance(item, dict):
            for field, value in item.items():
                text = text.replace("${item.%s}" % field, str(value))
        else:
            text = text.replace("${item}", str(item))
        yield f"{stage_name}@{key}", json.loads(text)


def stages():
    for pipeline in PIPELINES:
        for name, stage in yaml.safe_load(pipeline.read_text())["stages"].items():
            for full, expanded in expand(name, stage):
                yield pipeline, full, expanded


def stage_code(stage: dict) -> set[str] | None:
    """The ddo_lib modules a stage runs: its notebook's imports, or the module of `python3 -m`."""
    cmd = stage["cmd"]
    notebook = re.search(r"papermill (notebooks/\S+\.ipynb)", cmd)
    if notebook:
        cells = json.loads((REPO / notebook.group(1)).read_text())["cells"]
        return imports_of("\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code"))
    module = re.search(r"python3 -m (ddo_lib\S*)", cmd)
    return {module.group(1)} if module else None


def compact(files: set[pathlib.Path]) -> set[str]:
    """Files, with a subpackage folder of ddo_lib in place of its files when every one is needed."""
    out = {str(f) for f in files}
    for folder in sorted({f.parent for f in files if f.parent != pathlib.Path("ddo_lib")}):
        members = {p.relative_to(REPO) for p in (REPO / folder).rglob("*.py")}
        if members <= files:
            out = {f for f in out if not f.startswith(f"{folder}/")} | {str(folder)}
    return out


ALL_STAGES = list(stages())


@pytest.mark.parametrize("pipeline,name,stage", ALL_STAGES, ids=[s[1] for s in ALL_STAGES])
def test_stage_deps_are_the_import_closure(pipeline, name, stage):
    code = stage_code(stage)
    listed = {d for d in stage.get("deps", []) if d.startswith("ddo_lib")}
    if code is None:
        assert not listed, f"{name}: runs no ddo_lib code but lists {sorted(listed)}"
        return
    expected = compact(closure(code))
    assert listed == expected, (f"{pipeline.relative_to(REPO)} stage {name}: ddo_lib deps should be exactly\n"
                                + "\n".join(f"      - {d}" for d in sorted(expected))
                                + f"\nmissing: {sorted(expected - listed)}\nnot imported: {sorted(listed - expected)}")


# --- Notebook defaults -------------------------------------------------------------------------------

def parameters_cell(path: pathlib.Path) -> dict:
    cells = json.loads(path.read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    return {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse("".join(cell["source"])).body}


def papermill_value(text: str):
    """papermill's `-p` conversion of a command-line value."""
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def passed_parameters(cmd: str, smoke: bool) -> tuple[str, dict]:
    """(notebook, {name: value}) that a stage's papermill command passes."""
    tokens = shlex.split(cmd.replace("${smoke}", str(smoke).lower()))
    start = tokens.index("papermill")
    notebook, found, i = tokens[start + 1], {}, start + 3
    while i < len(tokens):
        if tokens[i] == "-p":
            found[tokens[i + 1]] = papermill_value(tokens[i + 2])
            i += 3
        elif tokens[i] == "-y":
            found.update(yaml.safe_load(tokens[i + 1]))
            i += 2
        else:
            i += 1
    return notebook, found


def first_stages() -> dict[str, tuple[str, dict]]:
    """{notebook: (stage name, passed parameters)} of the first stage (dvc.yaml, then studies) running it."""
    smoke = yaml.safe_load((REPO / "params.yaml").read_text())["smoke"]
    first = {}
    for _, name, stage in ALL_STAGES:
        if "papermill" in stage["cmd"]:
            notebook, passed = passed_parameters(stage["cmd"], smoke)
            first.setdefault(notebook, (name, passed))
    return first


def test_every_notebook_is_a_stage():
    assert {f"notebooks/{p.name}" for p in NOTEBOOKS} == set(first_stages())


@pytest.mark.parametrize("notebook", sorted(first_stages()))
def test_notebook_defaults_equal_its_first_stage(notebook):
    """'Run All' in JupyterLab after `dvc repro` redoes the stage: no default points elsewhere."""
    name, passed = first_stages()[notebook]
    defaults = parameters_cell(REPO / notebook)
    unknown = sorted(set(passed) - set(defaults))
    assert not unknown, f"{name} passes parameters {unknown} that {notebook} does not declare"
    differing = {k: (defaults[k], v) for k, v in passed.items() if defaults[k] != v}
    assert not differing, f"{notebook} defaults differ from stage {name} (default, passed): {differing}"


def test_the_defaults_check_can_fail():
    _, passed = passed_parameters('papermill a.ipynb b.ipynb -p x 3 -y "smoke: false" -p name data/x.pt', False)
    assert passed == {"x": 3, "smoke": False, "name": "data/x.pt"}


# --- Thin notebooks ----------------------------------------------------------------------------------

MAX_STATEMENTS_PER_CELL = 12
MAX_LOOPS_PER_NOTEBOOK = 1


def thin_problems(cells: list[str]) -> list[str]:
    """What makes a notebook's code not thin: classes, long functions, nested loops (a loop inside a loop or
    a comprehension with several `for`), more than one loop statement, cells crowded with statements."""
    problems, loops = [], 0
    for source in cells:
        tree = ast.parse(source)
        statements = [node for node in tree.body if not isinstance(node, (ast.Import, ast.ImportFrom))]
        if len(statements) > MAX_STATEMENTS_PER_CELL:
            problems.append(f"a cell with {len(statements)} statements besides imports")
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                problems.append(f"class {node.name}")
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno >= 10:
                problems.append(f"function {node.name}")
            if isinstance(node, (ast.For, ast.While)):
                loops += 1
                if any(isinstance(inner, (ast.For, ast.While, ast.comprehension)) for inner in ast.walk(node)
                       if inner is not node):
                    problems.append(f"nested loop at line {node.lineno}")
            if isinstance(node, (ast.ListComp, ast.DictComp, ast.SetComp, ast.GeneratorExp)) and len(node.generators) > 1:
                problems.append(f"comprehension with {len(node.generators)} loops at line {node.lineno}")
    if loops > MAX_LOOPS_PER_NOTEBOOK:
        problems.append(f"{loops} loop statements")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_stay_thin(path):
    cells = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"]
             if c["cell_type"] == "code" and "parameters" not in c.get("metadata", {}).get("tags", [])]
    assert not thin_problems(cells), f"{path.name}: {thin_problems(cells)} — move the logic into ddo_lib"


def test_the_old_refine_notebook_would_fail_the_thin_rule():
    """Notebook 07 as it was before its loops moved into `ddo_lib.pipeline.refine.run_study`."""
    old = [
        "discriminators = {}\nfor width in widths:\n    discriminators[width] = fit(width)\n"
        "gaps = [gap(d, s) for width, d in discriminators.items() for s in sigmas]\n",
        "for run in size_runs.values():\n    part = load(run)\n    for name in ('ddo', 'mle'):\n        nets[name] = part\n",
        "for size, (part, d) in fitted.items():\n    nets.update(guided(d))\n",
    ]
    problems = thin_problems(old)
    assert any("nested loop" in p for p in problems) and any("comprehension" in p for p in problems)
    assert any("loop statements" in p for p in problems)
