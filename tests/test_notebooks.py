"""Papermill smoke runs of the real notebooks (smoke=True), in a temporary output folder."""
import pathlib

import papermill
import pytest
import torch
import yaml

from ddo_lib import data as data_lib
from ddo_lib import reference

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
        out_grid=str(tmp / "grid.png"), out_metrics=str(tmp / "data.json"))
    return tmp


def test_01_data_writes_disjoint_splits(prepared):
    train = data_lib.load_dataset(prepared / "train.npz")
    held = data_lib.load_dataset(prepared / "held.npz")
    assert len(train.images) + len(held.images) == 1797
    assert train.images.shape[1:] == (1, 8, 8) and train.label_dim == 10
    assert (prepared / "grid.png").stat().st_size > 1000


def test_02_reference_smoke_pretrains_and_saves(prepared):
    tmp = prepared
    run("02_reference.ipynb", tmp, train_data=str(tmp / "train.npz"),
        out_checkpoint=str(tmp / "reference.pt"), out_state=str(tmp / "state.pt"),
        out_grid=str(tmp / "ref_grid.png"), out_curve=str(tmp / "loss.png"),
        out_history=str(tmp / "loss.csv"), out_metrics=str(tmp / "ref.json"))
    loaded = reference.load(tmp / "reference.pt")
    smoke_channels = yaml.safe_load((REPO / "params.yaml").read_text())["reference"]
    assert loaded.init_kwargs["img_resolution"] == 8 and loaded.init_kwargs["label_dim"] == 10
    assert loaded.init_kwargs["model_channels"] != smoke_channels["model_channels"]  # smoke shrank it
    x = torch.zeros(2, 1, 8, 8)
    out = loaded.net(x, torch.tensor([1.0, 1.0]), torch.eye(10)[:2])
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert (tmp / "ref_grid.png").stat().st_size > 1000
    assert (tmp / "loss.csv").read_text().startswith("step,loss,lr")
