"""Tests for ddo_lib.image_files (lazy ImageNet-style images, VAR preprocessing) and its use in ddo_lib.data.

Oracles: torchvision's `ImageFolder` for file order and labels, torchvision's `Resize(LANCZOS)` +
`CenterCrop` (the transforms of VAR's official data pipeline) and a hand-written PIL resize + crop for
pixels, and the spec's generator default_rng([seed, row, epoch]) for random crop offsets.
"""
import concurrent.futures
import multiprocessing
import pickle
import zipfile

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision import transforms  # v1, as the official VAR pipeline composes them

from ddo_lib import data, image_files
from ddo_lib.image_files import ImageFiles
from data_formats import write_edm_zip  # tests/support
from image_folders import pixels_in_child, write_imagenet_folder, write_imagenet_zip


@pytest.fixture
def folder(tmp_path):
    return write_imagenet_folder(tmp_path / "imagenet", classes=3, per_class=4, size=(12, 10), seed=0)


def _var_oracle(path, resolution: int) -> torch.Tensor:
    """uint8 [3, R, R] by torchvision's transforms as VAR's validation pipeline composes them."""
    transform = transforms.Compose([transforms.Resize(round(1.125 * resolution), transforms.InterpolationMode.LANCZOS),
                                    transforms.CenterCrop(resolution), transforms.PILToTensor()])
    with Image.open(path) as image:
        return transform(image.convert("RGB"))


def _resized(path, resolution: int) -> Image.Image:
    with Image.open(path) as image:
        return transforms.Resize(round(1.125 * resolution), transforms.InterpolationMode.LANCZOS)(image.convert("RGB"))


def _crops(image: Image.Image, resolution: int) -> dict[tuple[int, int], torch.Tensor]:
    """Every R x R crop of an image, by (top, left)."""
    pixels = transforms.functional.pil_to_tensor(image)  # [3, H, W]
    return {(top, left): pixels[:, top:top + resolution, left:left + resolution]
            for top in range(pixels.shape[1] - resolution + 1) for left in range(pixels.shape[2] - resolution + 1)}


# ----------------------------------------------------------------------------------------------------
# Listing: torchvision ImageFolder order and labels.

def test_rows_and_labels_are_imagefolder_order(tmp_path):
    root = write_imagenet_folder(tmp_path / "tree", classes=["n03000000", "n01000000", "n02000000"], per_class=3)
    files = image_files.open_image_files(root, resolution=8)
    oracle = torchvision.datasets.ImageFolder(root / "train")
    assert files.classes == oracle.classes == ["n01000000", "n02000000", "n03000000"]
    assert [str(root / name) for name in files.names] == [path for path, _ in oracle.samples]
    assert files.labels.tolist() == [label for _, label in oracle.samples]
    assert files.labels.dtype == torch.int64 and not any(name.endswith(".txt") for name in files.names)


def test_folder_and_zips_give_identical_rows_and_pixels(tmp_path, folder):
    trees = [image_files.open_image_files(source, resolution=8, crop="random", seed=5)
             for source in (folder, folder / "train", write_imagenet_zip(tmp_path / "a.zip"),
                            write_imagenet_zip(tmp_path / "b.zip", top_level=True))]
    plain = [[name.removeprefix("train/") for name in tree.names] for tree in trees]
    assert all(names == plain[0] for names in plain) and [t.kind for t in trees] == ["folder", "folder", "zip", "zip"]
    for tree in trees[1:]:
        assert tree.classes == trees[0].classes and torch.equal(tree.labels, trees[0].labels)
        assert torch.equal(tree.take(range(len(tree)), epoch=3), trees[0].take(range(len(tree)), epoch=3))


# ----------------------------------------------------------------------------------------------------
# Preprocessing (Tian et al. 2024 (VAR), official data pipeline).

@pytest.mark.parametrize("resolution", [8, 16])
def test_center_crop_equals_var_validation_transform(folder, resolution):
    """Every file kind (grey, CMYK, palette, RGBA, RGB; wide and tall; up- and downsampled)."""
    files = image_files.open_image_files(folder, resolution=resolution)
    oracle = torch.stack([_var_oracle(folder / name, resolution) for name in files.names])
    assert torch.equal(files[:], oracle)
    assert files[:].shape == (12, 3, resolution, resolution) and files[:].dtype == torch.uint8


def test_one_image_by_hand(tmp_path):
    """20 x 13 at R = 8: short side round(9.0) = 9, long int(9·20/13) = 13; left = round(2.5) = 2 (half to
    even, as torchvision's CenterCrop), top = 0."""
    pixels = np.random.default_rng(1).integers(0, 256, (13, 20, 3), dtype=np.uint8)
    (tmp_path / "train" / "n01").mkdir(parents=True)
    Image.fromarray(pixels).save(tmp_path / "train" / "n01" / "a.JPEG")
    with Image.open(tmp_path / "train" / "n01" / "a.JPEG") as image:
        expected = np.asarray(image.convert("RGB").resize((13, 9), Image.LANCZOS).crop((2, 0, 10, 8)))
    files = image_files.open_image_files(tmp_path, resolution=8)
    np.testing.assert_array_equal(files[0].permute(1, 2, 0).numpy(), expected)


def test_random_crop_is_a_crop_at_the_seeded_offset(folder):
    files = image_files.open_image_files(folder, resolution=8, crop="random", seed=7)
    for row, epoch in [(0, 0), (3, 1), (9, 4), (11, 2)]:
        resized = _resized(folder / files.names[row], 8)
        generator = np.random.default_rng([7, row, epoch])
        top, left = generator.integers(resized.height - 8 + 1), generator.integers(resized.width - 8 + 1)
        assert torch.equal(files.take([row], epoch)[0], _crops(resized, 8)[(top, left)])


def test_random_crop_depends_on_seed_row_epoch_only(folder):
    files = image_files.open_image_files(folder, resolution=8, crop="random", seed=7)
    index = [5, 2, 5, 11]
    batch = files.take(index, epoch=2)
    assert torch.equal(batch, files.take(index, epoch=2))                     # deterministic
    assert torch.equal(batch, pickle.loads(pickle.dumps(files)).take(index, 2))  # another process's copy
    assert torch.equal(batch[1], files.take([2], 2)[0]) and torch.equal(batch[0], batch[2])  # batch-independent
    assert torch.equal(files.take(index, epoch=[2, 2, 2, 2]), batch)          # per-row epochs
    assert not torch.equal(files.take(range(12), 0), files.take(range(12), 1))  # a new crop each epoch
    other = image_files.open_image_files(folder, resolution=8, crop="random", seed=8)
    assert not torch.equal(other.take(range(12), 2), files.take(range(12), 2))


def test_random_crop_is_the_center_on_an_axis_already_r(tmp_path):
    """At R = 4 the short side is round(4.5) = 4: no freedom there; a square image is always the center."""
    (tmp_path / "n01").mkdir()
    for name, size in [("square.png", (16, 16)), ("wide.png", (32, 16))]:
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
            tmp_path / "n01" / name)
    center = image_files.open_image_files(tmp_path, resolution=4)
    random = image_files.open_image_files(tmp_path, resolution=4, crop="random", seed=0)
    assert random.names.tolist() == ["n01/square.png", "n01/wide.png"]
    for epoch in range(5):
        assert torch.equal(random.take([0], epoch), center.take([0]))
        assert image_files.crop_offset((8, 4), 4, crop="random", seed=0, row=1, epoch=epoch)[0] == 0
    assert len({random.take([1], epoch).numpy().tobytes() for epoch in range(8)}) > 1


# ----------------------------------------------------------------------------------------------------
# The array interface.

def test_indexing_like_a_uint8_tensor(folder):
    files = image_files.open_image_files(folder, resolution=8, workers=3)
    everything = files[:]
    assert len(files) == 12 and files.shape == (12, 3, 8, 8) and files.dtype == torch.uint8 and files.ndim == 4
    assert torch.equal(files[4], everything[4]) and torch.equal(files[-1], everything[11])
    assert torch.equal(files[torch.tensor(4)], everything[4])
    for index in ([3, 0, 3], torch.tensor([3, 0, 3]), np.array([3, 0, 3])):
        assert torch.equal(files[index], everything[[3, 0, 3]])
    assert torch.equal(files[2:7:2], everything[2:7:2])
    assert torch.equal(files[torch.arange(12) % 2 == 0], everything[::2])
    assert files[[]].shape == (0, 3, 8, 8)
    assert torch.equal(image_files.open_image_files(folder, resolution=8, workers=1)[:], everything)
    with pytest.raises(IndexError, match="out of range"):
        files[[0, 12]]


def test_subset_is_lazy_and_renumbers_rows(folder):
    files = image_files.open_image_files(folder, resolution=8)
    part = files.subset(torch.tensor([7, 1, 9]))
    assert isinstance(part, ImageFiles) and len(part) == 3 and part.labels.tolist() == [1, 0, 2]
    assert torch.equal(part[:], files[[7, 1, 9]])
    with pytest.raises(ValueError, match="read-only"):
        files.names[0] = "elsewhere.JPEG"


def test_zip_handle_is_not_pickled_and_reopened_after_fork(tmp_path, monkeypatch):
    files = image_files.open_image_files(write_imagenet_zip(tmp_path / "tree.zip"), resolution=8)
    first = files[0]
    handle = files._handle
    assert handle is not None and "_handle" not in files.__getstate__()
    monkeypatch.setattr(image_files.os, "getpid", lambda: handle.pid + 1)  # as a forked child sees it
    assert torch.equal(files[0], first) and files._handle is not handle and files._handle.pid == handle.pid + 1


def test_zip_images_index_in_a_spawned_process(tmp_path):
    files = image_files.open_image_files(write_imagenet_zip(tmp_path / "tree.zip"), resolution=8, crop="random")
    expected = files[[3, 1, 3]]  # the parent has the zip open; the child must open its own
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        assert torch.equal(pool.submit(pixels_in_child, files, [3, 1, 3]).result(timeout=60), expected)


# ----------------------------------------------------------------------------------------------------
# Bad input: one clear error naming the offending path.

def test_bad_sources_name_the_path(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        image_files.open_image_files(tmp_path / "nowhere", resolution=8)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        data.load_any(tmp_path / "nowhere", resolution=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=f"{tmp_path / 'empty'}: expected class folders"):
        image_files.open_image_files(tmp_path / "empty", resolution=8)
    (tmp_path / "bare" / "train" / "n01").mkdir(parents=True)
    with pytest.raises(ValueError, match=f"{tmp_path / 'bare' / 'train'}: expected images"):
        image_files.open_image_files(tmp_path / "bare", resolution=8)
    for keywords, message in [(dict(resolution=12), "resolution a power of two, found 12"),
                              (dict(resolution=8, crop="flip"), "crop in .*found 'flip'"),
                              (dict(resolution=8, seed=-1), "non-negative integer seed")]:
        with pytest.raises(ValueError, match=message):
            image_files.open_image_files(folder, **keywords)
    with pytest.raises(ValueError, match="needs a resolution"):
        data.load_any(folder)


def test_unreadable_images_name_the_file(tmp_path, folder):
    bad = folder / "train" / "n01440764" / "n01440764_1.JPEG"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])  # truncated
    files = image_files.open_image_files(folder, resolution=8)       # listing reads no pixels
    with pytest.raises(ValueError, match=f"{bad}: not a readable image"):
        files[:]
    with zipfile.ZipFile(write_imagenet_zip(tmp_path / "tree.zip"), "a") as archive:
        archive.writestr("train/n01440764/zz.JPEG", b"\xff\xd8\xff garbage")
    zipped = image_files.open_image_files(tmp_path / "tree.zip", resolution=8)
    with pytest.raises(ValueError, match=f"{tmp_path / 'tree.zip'}:train/n01440764/zz.JPEG: not a readable image"):
        zipped[zipped.names.tolist().index("train/n01440764/zz.JPEG")]
    (folder / "train" / "n01440764" / "n01440764_0.JPEG").unlink()
    with pytest.raises(FileNotFoundError, match="n01440764_0.JPEG"):
        files[0]


def test_decompression_bomb_guard_stays_on(folder, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)  # 2 x 20 < 12 x 10: PIL refuses, we name the file
    with pytest.raises(ValueError, match="n01440764_0.JPEG: not a readable image \\(DecompressionBombError"):
        image_files.open_image_files(folder, resolution=8)[0]


# ----------------------------------------------------------------------------------------------------
# ddo_lib.data with lazy images.

def _no_decoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("decoded pixels")
    monkeypatch.setattr(ImageFiles, "_decode_row", refuse)


def test_data_set_split_saved_as_a_manifest(tmp_path, folder, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the manifest keeps the source path as given (relative here)
    images, labels = data.load_source("imagenet", resolution=64, crop="center")
    expected = images[:]
    train_index, held_index = data.split_indices(labels, 0.25, seed=0)
    with monkeypatch.context() as patch:
        _no_decoding(patch)
        splits = [("train", train_index), ("held", held_index)]
        paths = [data.save_dataset(tmp_path / f"{name}.npz", data.select(images, index), labels[index],
                                   label_dim=3, name=name) for name, index in splits]
        again = data.save_dataset(tmp_path / "again.npz", data.select(images, train_index), labels[train_index],
                                  label_dim=3, name="train")
        train, held = data.load_dataset(paths[0]), data.load_dataset(paths[1])
    assert again.read_bytes() == paths[0].read_bytes()                                   # DVC-stable bytes
    with np.load(paths[0], allow_pickle=False) as archive:
        assert "images" not in archive.files and str(archive["root"]) == "imagenet" and str(archive["kind"]) == "folder"
    assert paths[0].stat().st_size < 8_000 < len(train_index) * 3 * 64 * 64                # no pixels stored
    assert isinstance(train.images, ImageFiles) and (train.name, train.label_dim, train.resolution) == ("train", 3, 64)
    assert torch.equal(train.labels, labels[train_index]) and train.images.classes == images.classes
    assert torch.equal(train.images[:], expected[train_index]) and torch.equal(held.images[:], expected[held_index])


def test_manifest_edge_cases(tmp_path, folder):
    files = image_files.open_image_files(folder, resolution=8, crop="random", seed=3)
    path = data.save_dataset(tmp_path / "empty.npz", files.subset([]), None, allow_empty=True, label_dim=3)
    assert len(data.load_dataset(path, allow_empty=True)) == 0
    with pytest.raises(ValueError, match="no images"):
        data.load_dataset(path)
    unconditional = data.load_dataset(data.save_dataset(tmp_path / "u.npz", files, None))
    assert (unconditional.labels == -1).all() and unconditional.label_dim == 0
    assert torch.equal(unconditional.images.labels, files.labels)          # folder classes kept
    assert (unconditional.images.crop, unconditional.images.seed) == ("random", 3)
    with pytest.raises(ValueError, match="meta key 'names' is reserved"):
        data.save_dataset(tmp_path / "x.npz", files, files.labels, names="x")
    arrays = image_files.manifest_arrays(files, files.labels.numpy(), 3)
    (tmp_path / "v9.npz").write_bytes(data.npz_bytes({**arrays, "format": np.array("ddo_lib.image_files/9")}))
    with pytest.raises(ValueError, match="format 'ddo_lib.image_files/1', found 'ddo_lib.image_files/9'"):
        data.load_dataset(tmp_path / "v9.npz")
    folder.rename(tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match=f"image source {folder}"):
        data.load_dataset(tmp_path / "u.npz")


def test_make_dataset_summary_concatenate_without_decoding(tmp_path, folder, monkeypatch):
    files = image_files.open_image_files(folder, resolution=8)
    expected = files[:]
    _no_decoding(monkeypatch)
    dataset = data.make_dataset(files, files.labels, name="imagenet")
    assert (dataset.resolution, dataset.channels, dataset.label_dim, len(dataset)) == (8, 3, 3, 12)
    assert data.summary(files, files.labels, [0, 1], [2])["images"] == 12
    parts = [data.make_dataset(data.select(files, index), files.labels[index], name="part", label_dim=3)
             for index in ([5, 6], [0, 11, 2])]
    joined = data.concatenate(parts)
    assert isinstance(joined.images, ImageFiles) and joined.labels.tolist() == [1, 1, 0, 2, 0]
    in_memory = data.make_dataset(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), [0, 1], name="tensor", label_dim=3)
    with pytest.raises(ValueError, match="all data sets in memory or all lazy image files"):
        data.concatenate([parts[0], in_memory])
    cropped = data.make_dataset(image_files.open_image_files(folder, resolution=8, crop="random"), None,
                                name="random", label_dim=3)
    with pytest.raises(ValueError, match=r"differ in \['crop'\]"):
        data.concatenate([parts[0], cropped])
    monkeypatch.undo()
    assert torch.equal(joined.images[:], expected[[5, 6, 0, 11, 2]])


def test_load_any_dispatches_image_zips_and_keeps_edm_zips(tmp_path):
    zipped = data.load_any(write_imagenet_zip(tmp_path / "tree.zip"), resolution=8, crop="random", seed=2)
    assert isinstance(zipped.images, ImageFiles) and zipped.images.kind == "zip" and zipped.name == "tree"
    assert (zipped.images.crop, zipped.images.seed, zipped.label_dim) == ("random", 2, 3)
    write_edm_zip(tmp_path / "edm.zip", torch.zeros(2, 3, 8, 8, dtype=torch.uint8), None)
    assert isinstance(data.load_any(tmp_path / "edm.zip").images, torch.Tensor)
    assert tuple(data.load_source("digits")[0].shape) == (1797, 1, 8, 8)  # digits keep their default R


def test_batches_decode_each_row_at_its_epoch(folder):
    dataset = data.load_any(folder, resolution=8, crop="random", seed=1)
    stream = data.batches(dataset, batch_size=5, seed=4, start_step=2)  # positions 10..14 of 12: epochs 0, 0, 1, 1, 1
    x, labels = next(stream)
    epochs = data.batch_epochs(12, 5, 2)
    index = data.batch_indices(12, 5, 4, 2)
    assert epochs.tolist() == [0, 0, 1, 1, 1]
    assert torch.equal(x, data.to_float(dataset.images.take(index, epochs)))
    assert torch.equal(labels, dataset.labels[index])
    tensor = torch.arange(12 * 3 * 8 * 8).reshape(12, 3, 8, 8).to(torch.uint8)        # in memory: epoch ignored
    assert torch.equal(data.take(tensor, index, epochs), tensor[index])
    assert torch.equal(data.select(tensor, index), tensor[index])
