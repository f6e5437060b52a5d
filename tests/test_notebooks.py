"""Papermill smoke runs of the real notebooks (smoke=True), in a temporary output folder, step by step:
01 data → 02 reference → 03 rounds → 04 evaluation → 05 report, 06 studies and 07 refine on those outputs."""
import json
import pathlib
import shutil

import numpy as np
import papermill
import pytest
import torch
import yaml
from PIL import Image

from ddo_lib import data as data_lib
from ddo_lib.edm import reference
from ddo_lib.pipeline import families, subsets

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


def run(name: str, tmp: pathlib.Path, **parameters) -> None:
    (tmp / "executed").mkdir(exist_ok=True)
    papermill.execute_notebook(str(NOTEBOOKS / name), str(tmp / "executed" / name),
                               parameters=dict(smoke=True, **parameters), kernel_name="python3",
                               cwd=str(REPO), progress_bar=False)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Run 01_data once for the module: returns the temporary folder with its outputs."""
    tmp = tmp_path_factory.mktemp("nb")
    run("01_data.ipynb", tmp, out_train=str(tmp / "train.npz"), out_held_out=str(tmp / "held.npz"),
        out_classifier=str(tmp / "classifier.pt"), out_grid=str(tmp / "grid.png"),
        out_metrics=str(tmp / "data.json"))
    return tmp


def assert_picture(path: pathlib.Path, *, min_width: int = 100, min_height: int = 80) -> None:
    """A real PNG of a plausible size that is not one flat colour."""
    with Image.open(path) as image:
        assert image.format == "PNG", path
        assert image.width >= min_width and image.height >= min_height, (path, image.size)
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.std() > 1.0, f"{path}: blank image"


def test_01_data_writes_disjoint_splits(prepared):
    train = data_lib.load_dataset(prepared / "train.npz")
    held = data_lib.load_dataset(prepared / "held.npz")
    assert len(train.images) + len(held.images) == 1797
    assert train.images.shape[1:] == (1, 8, 8) and train.label_dim == 10
    assert_picture(prepared / "grid.png")


@pytest.fixture(scope="module")
def referenced(prepared):
    """Run 02_reference (smoke) on the prepared data."""
    tmp = prepared
    run("02_reference.ipynb", tmp, train_data=str(tmp / "train.npz"),
        out_checkpoint=str(tmp / "reference_edm.pt"), out_state=str(tmp / "state.pt"),
        out_grid=str(tmp / "ref_grid.png"), out_curve=str(tmp / "loss.png"),
        out_history=str(tmp / "loss.csv"), out_metrics=str(tmp / "ref_edm.json"))
    return tmp


def test_02_reference_smoke_pretrains_and_saves(referenced):
    tmp = referenced
    loaded = reference.load(tmp / "reference_edm.pt")
    channels = yaml.safe_load((REPO / "params.yaml").read_text())["reference"]["model_channels"]
    assert loaded.init_kwargs["img_resolution"] == 8 and loaded.init_kwargs["label_dim"] == 10
    assert loaded.init_kwargs["model_channels"] == min(channels, 16)  # smoke never grows the network
    steps = [int(line.split(",")[0]) for line in (tmp / "loss.csv").read_text().splitlines()[1:]]
    assert max(steps) == 20  # smoke: 20 pretraining steps instead of params.yaml's 3000
    x = torch.zeros(2, 1, 8, 8)
    out = loaded.net(x, torch.tensor([1.0, 1.0]), torch.eye(10)[:2])
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert_picture(tmp / "ref_grid.png")
    assert_picture(tmp / "loss.png")
    assert (tmp / "loss.csv").read_text().startswith("step,loss,lr")


def run_rounds(tmp: pathlib.Path, family: str, sections: dict[str, str]) -> None:
    """Run 03 for every (run name -> params section) on the family's reference."""
    for section in sections.values():
        run("03_ddo_rounds.ipynb", tmp, section=section, train_data=str(tmp / "train.npz"),
            classifier=str(tmp / "classifier.pt"), reference_checkpoint=str(tmp / f"reference_{family}.pt"),
            work_dir=str(tmp / section), out_curves=str(tmp / f"{section}.png"),
            out_history=str(tmp / f"{section}.csv"), out_grid=str(tmp / f"{section}_grid.png"),
            out_metrics=str(tmp / f"{section}.json"))


def run_evaluation(tmp: pathlib.Path, family: str, sections: dict[str, str]) -> dict[str, dict]:
    """Run 04 on the runs of `sections`; return the metric records by model."""
    run("04_evaluate.ipynb", tmp, train_data=str(tmp / "train.npz"), held_out_data=str(tmp / "held.npz"),
        classifier=str(tmp / "classifier.pt"), reference_checkpoint=str(tmp / f"reference_{family}.pt"),
        reference_metrics=str(tmp / f"ref_{family}.json"),
        runs={name: str(tmp / section) for name, section in sections.items()},
        out_metrics_dir=str(tmp / "eval" / family), out_grid=str(tmp / f"samples_{family}.png"))
    return {p.stem: json.loads(p.read_text()) for p in (tmp / "eval" / family).glob("*.json")}


@pytest.fixture(scope="module")
def rounds(referenced):
    run_rounds(referenced, "edm", {"ddo": "ddo", "mle": "mle"})
    return referenced


def test_03_rounds_keep_the_best_model_of_every_round(rounds):
    for section in ("ddo", "mle"):
        assert (rounds / section / "round0" / "best.pt").exists() and (rounds / section / "round1" / "best.pt").exists()
        summary = json.loads((rounds / f"{section}.json").read_text())
        assert summary["rounds"] == 2 and summary["mode"] == section
        assert_picture(rounds / f"{section}.png")
    assert (rounds / "ddo" / "round0" / "pool.pt").exists()


@pytest.fixture(scope="module")
def evaluated(rounds):
    return run_evaluation(rounds, "edm", {"ddo": "ddo", "mle": "mle"})


def test_04_evaluate_writes_one_record_per_model(evaluated, rounds):
    assert set(evaluated) == {"reference", "ddo_round1", "ddo_round2", "mle_round1", "mle_round2",
                              "real_held_out_vs_train"}
    for record in evaluated.values():
        assert {"metric", "value", "extractor", "num_images", "round", "compute_fraction"} <= set(record)
    assert evaluated["reference"]["family"] == "edm" and len(evaluated["reference"]["spread_values"]) == 2
    assert_picture(rounds / "samples_edm.png")


def test_05_report_writes_tables_durations_and_html(evaluated, rounds):
    tmp = rounds
    readme = tmp / "README.md"
    readme.write_text("x\n<!-- results:begin -->\nold\n<!-- results:end -->\ny\n")
    executed = [str(tmp / "executed" / name) for name in ("01_data.ipynb", "02_reference.ipynb")]
    run("05_report.ipynb", tmp, eval_dir=str(tmp / "eval"), readme=str(readme), out_plot=str(tmp / "round.png"),
        out_table=str(tmp / "results.md"), out_durations=str(tmp / "durations.md"),
        out_html_dir=str(tmp / "html"), toy_findings="", executed=executed)
    assert "ddo_round1" in (tmp / "results.md").read_text()
    assert readme.read_text() == "x\n<!-- results:begin -->\nold\n<!-- results:end -->\ny\n"  # smoke: untouched
    assert "| 01_data |" in (tmp / "durations.md").read_text()
    html = (tmp / "html" / "02_reference.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "The reference model" in html
    assert "M parameters" in html  # the cells' printed output is on the page, not only their code
    assert_picture(tmp / "round.png")


def test_06_studies_aggregates_seed_and_variant_records(evaluated, rounds):
    tmp = rounds
    readme = tmp / "README.md"
    for folder in ("seeds/s1", "variants/ns"):  # stand-in study records
        shutil.copytree(tmp / "eval" / "edm", tmp / "study" / folder, dirs_exist_ok=True)
    run("06_studies.ipynb", tmp, main_eval_dir=str(tmp / "eval" / "edm"), seeds_dir=str(tmp / "study" / "seeds"),
        variants_dir=str(tmp / "study" / "variants"), readme=str(readme), out_summary=str(tmp / "summary.json"),
        out_table=str(tmp / "studies.md"), out_seeds_plot=str(tmp / "seeds.png"),
        out_variants_plot=str(tmp / "variants.png"), refine_table="")
    assert json.loads((tmp / "summary.json").read_text())["seeds"] == [0, 1]
    assert "| ns |" in (tmp / "studies.md").read_text()
    assert_picture(tmp / "seeds.png")


def test_07_refine_scores_baselines_and_the_size_axis(rounds):
    tmp = rounds
    (subset,) = subsets.write_subsets(tmp / "train.npz", [0.5], seed=1, out_dir=tmp / "subsets")
    size_run = dict(train=str(subset), ddo=str(tmp / "ddo" / "round0" / "best.pt"),  # stand-ins for subset runs
                    mle=str(tmp / "mle" / "round0" / "best.pt"), pool=str(tmp / "ddo" / "round0" / "pool.pt"))
    run("07_refine.ipynb", tmp, train_data=str(tmp / "train.npz"), held_out_data=str(tmp / "held.npz"),
        classifier=str(tmp / "classifier.pt"), reference_checkpoint=str(tmp / "reference_edm.pt"),
        ddo_best=str(tmp / "ddo" / "round0" / "best.pt"), mle_best=str(tmp / "mle" / "round0" / "best.pt"),
        pool=str(tmp / "ddo" / "round0" / "pool.pt"), size_runs={"f50": size_run}, out_metrics=str(tmp / "refine.json"),
        out_table=str(tmp / "refine.md"), out_plot=str(tmp / "refine.png"), out_size_plot=str(tmp / "size.png"))
    refined = json.loads((tmp / "refine.json").read_text())
    half = len(data_lib.load_dataset(subset).images)
    assert {"reference_value", "ddo_fd_gap", "dg_w1.0_seconds_per_image", "sir_control_value",
            "implicit_ddo_gap", f"implicit_ddo_n{half}_gap", f"implicit_mle_n{half}_gap",
            f"ddo_n{half}_fd_gap"} <= set(refined)
    assert_picture(tmp / "size.png")
    assert_picture(tmp / "refine.png")


def test_var_family_runs_through_the_same_notebooks(prepared):
    tmp = prepared
    run("02_reference.ipynb", tmp, family="var", train_data=str(tmp / "train.npz"),
        out_checkpoint=str(tmp / "reference_var.pt"), out_state=str(tmp / "state_var.pt"),
        out_grid=str(tmp / "ref_grid_var.png"), out_curve=str(tmp / "loss_var.png"),
        out_history=str(tmp / "loss_var.csv"), out_metrics=str(tmp / "ref_var.json"))
    summary = json.loads((tmp / "ref_var.json").read_text())
    assert summary["family"] == "var" and summary["nll_nats_per_image"] > 0
    sections = {"ddo": "var_ddo", "mle": "var_mle"}
    run_rounds(tmp, "var", sections)
    records = run_evaluation(tmp, "var", sections)
    assert {"reference", "ddo_round2", "mle_round2"} <= set(records)
    assert all(r["family"] == "var" for name, r in records.items() if name != "real_held_out_vs_train")


@pytest.mark.parametrize("resolution", [16, 32])
def test_var_reference_follows_the_data_resolution(tmp_path, resolution):
    """`dvc exp run -S data.source=<16 or 32 px .npz>`: the VAR reference stage builds a tokenizer with one
    level per halving down to the last token map, instead of failing on non-8-px data."""
    images, labels = data_lib.load_digits_dataset(resolution)
    data_lib.save_dataset(tmp_path / "train.npz", images[:300], labels[:300])
    run("02_reference.ipynb", tmp_path, family="var", train_data=str(tmp_path / "train.npz"),
        out_checkpoint=str(tmp_path / "reference.pt"), out_state=str(tmp_path / "state.pt"),
        out_grid=str(tmp_path / "grid.png"), out_curve=str(tmp_path / "loss.png"),
        out_history=str(tmp_path / "loss.csv"), out_metrics=str(tmp_path / "ref.json"))
    loaded = families.load_reference(tmp_path / "reference.pt")
    assert loaded.tokenizer.image_size == resolution
    assert len(loaded.tokenizer_kwargs["ch_mult"]) == {16: 3, 32: 4}[resolution]
    assert json.loads((tmp_path / "ref.json").read_text())["nll_nats_per_image"] > 0
    assert_picture(tmp_path / "grid.png")
