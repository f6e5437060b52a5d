"""Tests for ddo_lib.data: digits, splits, the .npz format, EDM zips, the CIFAR-10 tarball, batching."""
import io
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from ddo_lib import data
from data_formats import cifar_batches, py2_pickle, write_cifar_tarball, write_edm_zip  # tests/support

# Per-class counts of scikit-learn's bundled digits (UCI optdigits test set).
DIGITS_CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


# ----------------------------------------------------------------------------------------------------
# Digits.

def test_digits_shape_dtype_range_and_counts():
    images, labels = data.load_digits_dataset(8)
    assert images.dtype == torch.uint8 and tuple(images.shape) == (1797, 1, 8, 8)
    assert labels.dtype == torch.int64 and tuple(labels.shape) == (1797,)
    assert images.min().item() == 0 and images.max().item() == 255
    assert torch.bincount(labels).tolist() == DIGITS_CLASS_COUNTS
    expected = np.floor(load_digits().images * 255.0 / 16.0 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(images[:, 0].numpy(), expected)


@pytest.mark.parametrize("resolution", [16, 32])
def test_digits_bilinear_matches_torch_interpolate(resolution):
    images, _ = data.load_digits_dataset(resolution)
    assert tuple(images.shape) == (1797, 1, resolution, resolution)
    values = torch.from_numpy(load_digits().images * 255.0 / 16.0)[:, None]       # [N, 1, 8, 8] float64
    oracle = torch.nn.functional.interpolate(values, size=resolution, mode="bilinear", align_corners=False)
    np.testing.assert_array_equal(images.numpy(), np.floor(oracle.numpy() + 0.5).astype(np.uint8))


def test_digits_nearest_replicates_pixels():
    base, _ = data.load_digits_dataset(8)
    images, _ = data.load_digits_dataset(32, upsample="nearest")
    assert torch.equal(images[:, :, ::4, ::4], base) and torch.equal(images[:, :, 3::4, 3::4], base)


@pytest.mark.parametrize("resolution", [4, 12, 24])
def test_digits_rejects_bad_resolution(resolution):
    with pytest.raises(ValueError, match="power of two"):
        data.load_digits_dataset(resolution)


# ----------------------------------------------------------------------------------------------------
# Splits.

def test_split_deterministic_stratified_disjoint_complete():
    _, labels = data.load_digits_dataset(8)
    train, held = data.split_indices(labels, 0.2, seed=3)
    train_again, held_again = data.split_indices(labels.numpy(), 0.2, seed=3)
    assert torch.equal(train, train_again) and torch.equal(held, held_again)
    assert not torch.equal(held, data.split_indices(labels, 0.2, seed=4)[1])
    assert len(np.intersect1d(train, held)) == 0
    assert torch.equal(torch.sort(torch.cat([train, held])).values, torch.arange(1797))
    for c, n_c in enumerate(DIGITS_CLASS_COUNTS):
        assert abs((labels[held] == c).sum().item() - 0.2 * n_c) <= 1


def test_split_golden_value():
    # Pins the numpy PCG64 stream: a change here means splits differ from earlier runs.
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    train, held = data.split_indices(labels, 0.25, seed=0)
    assert held.tolist() == [5, 6, 10] and len(train) == 9  # measured with numpy 2.4.6


def test_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        data.split_indices(np.zeros(4, np.int64), 1.0, seed=0)


# ----------------------------------------------------------------------------------------------------
# Prepared .npz format and validation.

def _random_images(n=6, c=3, r=8, seed=0):
    return torch.randint(0, 256, (n, c, r, r), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_npz_round_trip(tmp_path):
    images, labels = _random_images(), torch.tensor([0, 1, 2, 3, 4, 0])
    path = data.save_dataset(tmp_path / "sub" / "train.npz", images, labels, name="toy", label_dim=7,
                             train_index=np.arange(3))
    assert [p.name for p in path.parent.iterdir()] == ["train.npz"]  # no temporary file left
    dataset = data.load_dataset(path)
    assert torch.equal(dataset.images, images) and torch.equal(dataset.labels, labels)
    assert (dataset.label_dim, dataset.resolution, dataset.channels, dataset.name) == (7, 8, 3, "toy")
    assert dataset.labels.dtype == torch.int64 and len(dataset) == 6


def test_npz_unlabelled_round_trip(tmp_path):
    dataset = data.load_any(data.save_dataset(tmp_path / "u.npz", _random_images(c=1), None))
    assert dataset.labels.tolist() == [-1] * 6 and dataset.label_dim == 0 and dataset.name == "u"


@pytest.mark.parametrize("images, labels, message", [
    (_random_images().to(torch.int32), torch.zeros(6, dtype=torch.long), "expected dtype uint8, found int32"),
    (_random_images()[:, 0], torch.zeros(6, dtype=torch.long), r"expected 4-D .* found shape \(6, 8, 8\)"),
    (_random_images()[..., :4], torch.zeros(6, dtype=torch.long), "square power-of-two.* 8 x 4"),
    (_random_images(r=6), torch.zeros(6, dtype=torch.long), "square power-of-two.* 6 x 6"),
    (torch.zeros(6, 2, 8, 8, dtype=torch.uint8), torch.zeros(6, dtype=torch.long), "1 or 3 channels, found 2"),
    (_random_images(), torch.tensor([0, 1, 2, 3, 4, -1]), r"in \[0, 7\) or all -1, found range \[-1, 4\]"),
    (_random_images(), torch.tensor([0, 1, 2, 3, 4, 7]), r"in \[0, 7\) or all -1, found range \[0, 7\]"),
    (_random_images(), torch.zeros(5, dtype=torch.long), r"expected shape \(6,\), found \(5,\)"),
])
def test_validation_errors(tmp_path, images, labels, message):
    with pytest.raises(ValueError, match=message):
        data.save_dataset(tmp_path / "bad.npz", images, labels, label_dim=7)
    np.savez(tmp_path / "raw.npz", images=images.numpy(), labels=labels.numpy(), label_dim=7)
    with pytest.raises(ValueError, match=message):
        data.load_dataset(tmp_path / "raw.npz")
    assert not (tmp_path / "bad.npz").exists()


def test_missing_file_names_path(tmp_path):
    for reader in (data.load_dataset, data.load_any, data.read_edm_zip, data.read_cifar10_tarball):
        missing = tmp_path / "nowhere" / ("cifar-10-python.tar.gz" if reader is data.read_cifar10_tarball
                                          else "x.zip" if reader is data.read_edm_zip else "x.npz")
        with pytest.raises(FileNotFoundError, match=str(missing)):
            reader(missing)


def test_load_any_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="unknown data set format"):
        data.load_any(tmp_path / "images.h5")


# ----------------------------------------------------------------------------------------------------
# EDM dataset zip.

@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("labelled", [True, False])
def test_edm_zip_round_trip(tmp_path, channels, labelled):
    images = _random_images(n=12, c=channels, r=16, seed=channels)
    labels = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]) if labelled else None
    write_edm_zip(tmp_path / "toy-16x16.zip", images, labels)
    read_images, read_labels = data.read_edm_zip(tmp_path / "toy-16x16.zip")
    assert read_images.dtype == torch.uint8 and torch.equal(read_images, images)
    assert torch.equal(read_labels, labels if labelled else torch.full((12,), -1))
    dataset = data.load_any(tmp_path / "toy-16x16.zip")
    assert (dataset.name, dataset.label_dim, dataset.channels) == ("toy-16x16", 10 if labelled else 0, channels)


def test_edm_zip_rejects_mixed_sizes(tmp_path):
    path = tmp_path / "mixed.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for i, size in enumerate([8, 16]):
            buffer = io.BytesIO()
            Image.new("L", (size, size)).save(buffer, format="png")
            archive.writestr(f"00000/img{i:08d}.png", buffer.getvalue())
    with pytest.raises(ValueError, match="same shape"):
        data.read_edm_zip(path)


# ----------------------------------------------------------------------------------------------------
# CIFAR-10 python tarball.

@pytest.mark.parametrize("writer", [py2_pickle, lambda obj: pickle.dumps(
    {key.encode(): value for key, value in obj.items()}, protocol=2)], ids=["python2", "python3-bytes-keys"])
def test_cifar_tarball_round_trip(tmp_path, writer):
    batches = cifar_batches()
    path = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_tarball(path, batches, writer)
    images, labels = data.read_cifar10_tarball(path, "train", strict=False)
    rows = np.concatenate([rows for rows, _ in batches[:5]])
    assert images.dtype == torch.uint8 and tuple(images.shape) == (20, 3, 32, 32)
    np.testing.assert_array_equal(images.numpy(), rows.reshape(20, 3, 32, 32))
    assert images[1, 2, 0, 5].item() == rows[1, 2 * 1024 + 5]  # channel-major rows: R, G, B planes
    assert labels.tolist() == sum((labels for _, labels in batches[:5]), [])
    test_images, test_labels = data.read_cifar10_tarball(path, "test", strict=False)
    np.testing.assert_array_equal(test_images.numpy().reshape(4, 3072), batches[5][0])
    assert test_labels.tolist() == batches[5][1]


def test_cifar_strict_checks_batch_size(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_tarball(path, cifar_batches())
    with pytest.raises(ValueError, match=r"data_batch_1: expected 'data' uint8 \(10000, 3072\)"):
        data.load_any(path)


class _Payload:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os
        return os.system, (self.command,)


def test_cifar_refuses_os_system_without_side_effect(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "cifar-10-python.tar.gz"
    payloads = []

    def writer(obj):
        payloads.append(py2_pickle(obj).replace(b"cposix\nsystem\n", b"cos\nsystem\n"))
        return payloads[-1]

    write_cifar_tarball(path, cifar_batches(), writer, first_entry=_Payload(f"touch {marker}"))
    assert b"cos\nsystem\n" in payloads[0]
    # Control: a plain unpickler runs the payload (a harmless touch inside tmp_path).
    pickle.loads(payloads[0], encoding="latin1")
    assert marker.exists()
    marker.unlink()
    with pytest.raises(pickle.UnpicklingError, match=r"data_batch_1: refused global os\.system"):
        data.read_cifar10_tarball(path, strict=False)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------
# Conversions and batching.

def test_to_float_and_one_hot():
    x = data.to_float(torch.tensor([0, 127, 255], dtype=torch.uint8))
    assert x.dtype == torch.float32 and x.tolist() == pytest.approx([-1.0, 127 / 127.5 - 1, 1.0], abs=1e-7)
    with pytest.raises(ValueError, match="expected uint8"):
        data.to_float(torch.zeros(3))
    assert data.one_hot(torch.tensor([2, 0]), 3).tolist() == [[0, 0, 1], [1, 0, 0]]
    assert tuple(data.one_hot(torch.tensor([-1, -1]), 0).shape) == (2, 0)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        data.one_hot(torch.tensor([3]), 3)


def test_class_balanced_labels():
    labels = data.class_balanced_labels(1005, 10)
    assert labels.dtype == torch.int64 and labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert torch.bincount(labels).tolist() == [101] * 5 + [100] * 5


def test_batch_indices_cover_each_epoch_once():
    n, batch_size = 10, 3  # batches straddle epochs
    stream = torch.cat([data.batch_indices(n, batch_size, 7, step) for step in range(10)])  # 3 full epochs
    for epoch in range(3):
        assert sorted(stream[epoch * n:(epoch + 1) * n].tolist()) == list(range(n))
    assert not torch.equal(stream[:n], stream[n:2 * n])
    assert not torch.equal(stream, torch.cat([data.batch_indices(n, batch_size, 8, s) for s in range(10)]))


def test_batch_stream_resume_is_the_tail():
    images, labels = _random_images(n=13, c=1, r=4), torch.arange(13) % 4
    dataset = data.make_dataset(images, labels, name="toy")
    full = [next(stream) for stream in [data.batches(dataset, 5, seed=1)] for _ in range(9)]
    resumed = [next(stream) for stream in [data.batches(dataset, 5, seed=1, start_step=4)] for _ in range(5)]
    for (x, y), (x_resumed, y_resumed) in zip(full[4:], resumed):
        assert torch.equal(x, x_resumed) and torch.equal(y, y_resumed)
    x, y = full[0]
    index = data.batch_indices(13, 5, 1, 0)
    assert x.dtype == torch.float32 and torch.equal(x, data.to_float(images[index]))
    assert torch.equal(y, labels[index])


def test_first_per_class_and_summary():
    labels = torch.tensor([1, 0, 1, 0, 2, 1])
    assert data.first_per_class(labels, per_class=2).tolist() == [1, 0, 4, 3, 2]
    train, held = data.split_indices(labels, 0.5, seed=0)
    record = data.summary(_random_images(), labels, train, held)
    assert record["images"] == 6 and record["train"] + record["held_out"] == 6 and record["label_dim"] == 3
    assert record["smallest_class"] == 1


def test_dequantized_digits_stay_in_their_grey_level_bin():
    from sklearn.datasets import load_digits

    images, _ = data.load_digits_dataset(8, dequantize_seed=0)
    again, _ = data.load_digits_dataset(8, dequantize_seed=0)
    levels = torch.from_numpy(load_digits().images.astype("int64"))
    assert torch.equal(images, again)
    assert images.unique().numel() > 200
    assert torch.equal(torch.div(images[:, 0].long(), 15, rounding_mode="floor"), levels)


def test_bad_data_files_get_one_clear_error_naming_file_and_member(tmp_path):
    """As a new user would meet them: an empty .npz, a text file called .npz, a corrupt PNG in an EDM zip,
    a non-zip called .zip."""
    empty = tmp_path / "empty.npz"
    with open(empty, "wb") as stream:
        np.savez(stream, images=np.zeros((0, 1, 8, 8), np.uint8), labels=np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="no images"):
        data.load_dataset(empty)
    (tmp_path / "notes.npz").write_text("hello")
    with pytest.raises(ValueError, match=r"notes.npz: not an .npz file \(an .npz is a zip archive"):
        data.load_dataset(tmp_path / "notes.npz")
    images = _random_images(n=3, c=1, r=8, seed=0)
    write_edm_zip(tmp_path / "broken.zip", images, None)
    with zipfile.ZipFile(tmp_path / "broken.zip", "a") as archive:
        archive.writestr("00000/img00000099.png", b"\x89PNG\r\n\x1a\n but then garbage")
    with pytest.raises(ValueError, match=r"broken.zip:00000/img00000099.png: not a readable PNG"):
        data.read_edm_zip(tmp_path / "broken.zip")
    (tmp_path / "fake.zip").write_text("not a zip")
    with pytest.raises(ValueError, match="fake.zip: not an EDM dataset zip"):
        data.read_edm_zip(tmp_path / "fake.zip")
