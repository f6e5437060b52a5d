"""Every GPU preset, shrunk, end to end on the CPU: its real file formats, its notebooks, and the rounds under
`torchrun` with 2 gloo processes giving the metrics of 1 process.

Per preset: data in the preset's format (a CIFAR-10 python tarball with 10,000 images per batch file, an EDM
dataset zip, or an ImageNet folder tree of JPEGs, streamed), a tiny reference in the released format (an
official-format pickle of the `edm_ddpmpp_tiny` / `edm2_tiny` architectures at the data's resolution and
label count, or the official tiny VAR as a `var.pth` + `vae.pth` pair), a random-weight Inception file in
torch-fidelity's layout, and reference statistics in EDM's `.npz`, EDM2's `.pkl` or ADM's `.npz` format. The
preset's own params.yaml sections are used with the smoke sizes of the notebooks; only paths, `launch` and a
few sizes are changed here. VAR-d30's preset differs from VAR-d16's only in sizes and paper numbers
(`test_the_d30_preset_differs_from_d16_only_in_size`), so only d16 runs here.
"""
import csv
import json
import pathlib
import pickle

import numpy as np
import papermill
import pytest
import torch
import yaml

from ddo_lib.edm import load_official, network_from_official
from ddo_lib.eval import fid
from ddo_lib.pipeline import presets
from data_formats import write_cifar_tarball, write_edm_zip
from image_folders import write_imagenet_folder
from official_format import Persistent, edm_data, write_official
from official_var import write_official_var_pair

REPO = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
CLASSES = 10
MINIATURES = [name for name in presets.available() if name != "imagenet256-var-d30"]


def cifar_tarball(path: pathlib.Path) -> None:
    """60,000 images (10,000 per batch file, as the real archive): 10 random base images repeated (class =
    base index), so the archive compresses to a few MB (10 images fit gzip's 32 KB window)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (CLASSES, 3072), dtype=np.uint8)
    batches = []
    for _ in range(6):
        index = rng.integers(0, len(base), 10000)
        batches.append((base[index], (index % CLASSES).tolist()))
    write_cifar_tarball(path, batches)


def edm_zip(path: pathlib.Path, resolution: int, count: int = 40) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, resolution, resolution), dtype=torch.uint8, generator=generator)
    write_edm_zip(path, images, torch.arange(count) % CLASSES)


def official_pickle(path: pathlib.Path, fixture: dict, *, resolution: int, label_dim: int) -> None:
    """A random-weight network of the fixture's architecture (16 channels) at the data's shape, pickled as
    released."""
    kwargs = {**fixture["init_kwargs"], "img_resolution": resolution, "label_dim": label_dim, "model_channels": 16}
    torch.manual_seed(0)
    net = network_from_official(fixture["class_name"], kwargs)
    if fixture["class_name"] == "Precond":  # EDM2: float16 EMA inside an EasyDict, with its loss
        ema = net.half()

        def make(fake):
            return fake.EasyDict(ema=ema, loss_fn=Persistent("EDM2Loss", {"P_mean": -0.8, "P_std": 1.6}),
                                 dataset_kwargs=fake.EasyDict(resolution=resolution))

        write_official(path, make, ema, "Precond", kwargs)
    else:
        write_official(path, edm_data(net), net, "EDMPrecond", {**kwargs, "sigma_data": np.float64(0.5)})


def reference_stats(path: pathlib.Path, inception_weights: pathlib.Path, images: torch.Tensor) -> None:
    """Inception statistics of a few real images (+ 1e-3·I), in EDM's npz or EDM2's pkl format."""
    features = fid.inception_features(fid.inception(inception_weights), images, batch_size=len(images)).double()
    mu = features.mean(0).numpy()
    sigma = (torch.cov(features.T) + 1e-3 * torch.eye(features.shape[1], dtype=torch.float64)).numpy()
    if path.suffix == ".npz":
        fid.save_reference_stats(path, mu, sigma)
    else:
        path.write_bytes(pickle.dumps({"fid": {"mu": mu, "sigma": sigma}}, protocol=4))


def family_of(params: dict) -> str:
    return params["families"][0]


def miniature(name: str, tmp: pathlib.Path, official_fixture, inception_weights: pathlib.Path) -> dict:
    """The preset's params with the miniature's files and sizes."""
    params = presets.load(name)
    if family_of(params) == "var":
        return var_miniature(params, tmp, inception_weights)
    conditional = params["data"]["use_labels"]
    if params["data"]["source"].endswith(".tar.gz"):
        source, fixture, resolution = tmp / "cifar-10-python.tar.gz", official_fixture("edm_ddpmpp_tiny.pt"), 32
        cifar_tarball(source)
        held_out = 0.0005                                  # 3 images per class
        stats = tmp / "cifar10-32x32.npz"
    else:
        resolution = 64
        source, fixture = tmp / f"imagenet-{resolution}x{resolution}.zip", official_fixture("edm2_tiny.pt")
        edm_zip(source, resolution)
        held_out = 0.0                                     # the paper's setting: train on everything
        stats = tmp / "img64.pkl"
    checkpoint = tmp / "official.pkl"
    official_pickle(checkpoint, fixture, resolution=resolution, label_dim=CLASSES if conditional else 0)
    reference_stats(stats, inception_weights, probe_images(resolution))
    params["data"].update(source=str(source), held_out_fraction=held_out)
    params["reference"]["checkpoint"] = str(checkpoint)
    return with_common_settings(params, inception_weights, stats)


def var_miniature(params: dict, tmp: pathlib.Path, inception_weights: pathlib.Path) -> dict:
    """ImageNet layout (10 classes of non-square JPEGs, resized and randomly cropped to 64 px as VAR's trainer
    does), the official tiny VAR pair (64-px tokenizer: 16 x patch_nums[-1]), ADM-format statistics; micro-
    batches of 2 rows so the online fakes go through gradient accumulation too."""
    source = write_imagenet_folder(tmp / "imagenet", classes=CLASSES, per_class=4, size=(80, 72))
    checkpoint, vqvae = write_official_var_pair(tmp / "checkpoints")
    stats = tmp / "VIRTUAL_imagenet256_labeled.npz"
    reference_stats(stats, inception_weights, probe_images(64))
    params["data"].update(source=str(source), resolution=64)
    params["var_reference"].update(checkpoint=str(checkpoint), vqvae=str(vqvae), checkpoint_depth=2)
    for section in ("var_ddo", "var_mle", "var_plateau"):   # 4 steps must move the EMA the selection scores
        params[section].update(micro_batch=2, lr=2e-3, ema_halflife_images=8)
    return with_common_settings(params, inception_weights, stats)


def probe_images(resolution: int) -> torch.Tensor:
    return torch.randint(0, 256, (16, 3, resolution, resolution), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(1))


def with_common_settings(params: dict, inception_weights: pathlib.Path, stats: pathlib.Path) -> dict:
    params["launch"].update(device="cpu", nproc=1, precision="fp32")
    params["evaluate"].update(inception_weights=str(inception_weights), reference_stats=str(stats),
                              seed_offsets=[0], precision_recall_images=20)
    params["smoke"] = True
    return params


def run(notebook: str, tmp: pathlib.Path, **parameters) -> pathlib.Path:
    out = tmp / "executed" / f"{notebook}-{len(list((tmp / 'executed').glob('*')))}.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS / notebook), str(out), parameters=dict(smoke=True, **parameters),
                               kernel_name="python3", cwd=str(REPO), progress_bar=False)
    return out


def rounds_and_evaluation(tmp: pathlib.Path, params: dict, nproc: int) -> tuple[dict, dict, pathlib.Path]:
    """Notebooks 03 (ddo section) and 04 with `launch.nproc = nproc`; the train summary and eval records."""
    params_file = tmp / f"params-{nproc}.yaml"
    params_file.write_text(yaml.safe_dump({**params, "launch": {**params["launch"], "nproc": nproc}}))
    work = tmp / f"ddo-{nproc}"
    section = "var_ddo" if family_of(params) == "var" else "ddo"
    notebook = run("03_ddo_rounds.ipynb", tmp, params_file=str(params_file), section=section,
                   train_data=str(tmp / "train.npz"), classifier=str(tmp / "classifier.pt"),
                   reference_checkpoint=str(tmp / "reference.pt"), work_dir=str(work),
                   out_curves=str(tmp / f"curves-{nproc}.png"), out_history=str(tmp / f"history-{nproc}.csv"),
                   out_grid=str(tmp / f"grid-{nproc}.png"), out_metrics=str(tmp / f"train-{nproc}.json"))
    run("04_evaluate.ipynb", tmp, params_file=str(params_file), train_data=str(tmp / "train.npz"),
        held_out_data=str(tmp / "held.npz"), classifier=str(tmp / "classifier.pt"),
        reference_checkpoint=str(tmp / "reference.pt"), reference_metrics=str(tmp / "reference.json"),
        runs={"ddo": str(work)}, out_metrics_dir=str(tmp / f"eval-{nproc}"), out_grid=str(tmp / f"samples-{nproc}.png"))
    records = {p.stem: json.loads(p.read_text()) for p in (tmp / f"eval-{nproc}").glob("*.json")}
    return json.loads((tmp / f"train-{nproc}.json").read_text()), records, notebook


@pytest.mark.parametrize("name", MINIATURES)
def test_preset_miniature_two_processes_equal_one(name, tmp_path, official_fixture, inception_weights_file):
    (tmp_path / "executed").mkdir()
    params = miniature(name, tmp_path, official_fixture, inception_weights_file)
    params_file = tmp_path / "params-1.yaml"
    params_file.write_text(yaml.safe_dump(params))
    run("01_data.ipynb", tmp_path, params_file=str(params_file), out_train=str(tmp_path / "train.npz"),
        out_held_out=str(tmp_path / "held.npz"), out_classifier=str(tmp_path / "classifier.pt"),
        out_grid=str(tmp_path / "data.png"), out_metrics=str(tmp_path / "data.json"))
    run("02_reference.ipynb", tmp_path, params_file=str(params_file), family=family_of(params),
        train_data=str(tmp_path / "train.npz"), out_checkpoint=str(tmp_path / "reference.pt"),
        out_state=str(tmp_path / "state.pt"), out_grid=str(tmp_path / "reference.png"),
        out_curve=str(tmp_path / "loss.png"), out_history=str(tmp_path / "loss.csv"),
        out_metrics=str(tmp_path / "reference.json"))
    data_summary = json.loads((tmp_path / "data.json").read_text())
    assert data_summary["label_dim"] == (CLASSES if params["data"]["use_labels"] else 0)

    one_train, one, _ = rounds_and_evaluation(tmp_path, params, 1)
    two_train, two, notebook = rounds_and_evaluation(tmp_path, params, 2)

    assert "launching ddo_lib.pipeline.stages:train_rounds on 2 processes" in notebook.read_text()
    losses = [[row["loss"] for row in csv.DictReader((tmp_path / f"history-{n}.csv").open())] for n in (1, 2)]
    assert [float(v) for v in losses[1] if v] == pytest.approx([float(v) for v in losses[0] if v], rel=1e-4)
    for k in range(2):
        assert two_train[f"round{k}_best_step"] == one_train[f"round{k}_best_step"]
        assert two_train[f"round{k}_best_selection_fd"] == pytest.approx(one_train[f"round{k}_best_selection_fd"],
                                                                         rel=1e-4)
    assert set(one) == set(two) == {"reference", "ddo_round1", "ddo_round2"} | (
        {"real_held_out_vs_train"} if params["data"]["held_out_fraction"] else set())
    for model, record in one.items():
        assert record["metric"] == "fid" and record["extractor"] == "inception-v3-compat"
        assert model == "real_held_out_vs_train" or (record["num_images"] == 40 and record["seed_offset"] == 0)
        assert two[model]["value"] == pytest.approx(record["value"], rel=1e-4), model
    for nproc in (1, 2):  # the hand-off to the official tools
        assert (tmp_path / f"ddo-{nproc}" / "final.safetensors").is_file()
        if family_of(params) == "var":   # VAR: the released format is a plain state dict (safetensors here)
            continue
        net, extras = load_official(tmp_path / f"ddo-{nproc}" / "final.pkl")
        assert extras["class_name"] == official_fixture(
            "edm2_tiny.pt" if "edm2" in name else "edm_ddpmpp_tiny.pt")["class_name"]
        assert (tmp_path / f"ddo-{nproc}" / "final.safetensors").is_file()


def test_the_d30_preset_differs_from_d16_only_in_size():
    d16, d30 = presets.load("imagenet256-var-d16"), presets.load("imagenet256-var-d30")
    differences = {(section, key) for section in d16 if isinstance(d16[section], dict)
                   for key in d16[section] if d16[section][key] != d30[section][key]}
    assert differences == {("var_reference", "checkpoint"), ("var_reference", "checkpoint_depth"),
                           ("var_ddo", "alpha"), ("var_ddo", "micro_batch"), ("var_mle", "micro_batch"),
                           ("var_plateau", "micro_batch"), ("evaluate", "paper_value")}
    assert d30["var_reference"]["checkpoint_depth"] == 30 and d30["families"] == d16["families"] == ["var"]
