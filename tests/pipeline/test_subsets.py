"""Fixed training subsets for the training-set-size axis (ddo_lib.pipeline.subsets)."""
import numpy as np
import pytest
import torch
import yaml

from ddo_lib import data as data_lib
from ddo_lib.pipeline import params as params_lib
from ddo_lib.pipeline import subsets


@pytest.fixture()
def train():
    images, labels = data_lib.load_digits_dataset(8)
    return data_lib.make_dataset(images[:40], labels[:40], name="t", label_dim=10)


def test_subset_size_rounds_and_rejects_fractions_outside_the_unit_interval():
    assert subsets.subset_size(1438, 0.25) == 360 and subsets.subset_size(1438, 0.5) == 719
    assert subsets.subset_size(3, 0.01) == 1 and subsets.subset_size(7, 1.0) == 7
    for fraction in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            subsets.subset_size(10, fraction)
    with pytest.raises(ValueError, match="subset size"):
        subsets.subset_index(10, 11, seed=0)


def test_subsets_are_nested_distinct_and_a_function_of_the_seed(train):
    small, large = subsets.subset_index(40, 10, seed=1), subsets.subset_index(40, 20, seed=1)
    assert torch.equal(large[:10], small) and len(set(large.tolist())) == 20
    assert not torch.equal(subsets.subset_index(40, 10, seed=2), small)
    part = subsets.fraction_subset(train, 0.25, seed=1)
    assert torch.equal(part.images, train.images[small]) and torch.equal(part.labels, train.labels[small])
    assert part.label_dim == 10


def test_subset_files_are_named_in_whole_percent(tmp_path):
    assert subsets.subset_file(tmp_path, 0.25).name == "train_f25.npz"
    assert subsets.subset_file(tmp_path, 0.5).name == "train_f50.npz"
    with pytest.raises(ValueError, match="whole percent"):
        subsets.subset_file(tmp_path, 1 / 3)


def test_written_subsets_equal_the_explicit_axis_subsets(tmp_path, train):
    """The CLI writes the very subsets `refine.size_axis_gaps` refits its discriminator on."""
    data_lib.save_dataset(tmp_path / "train.npz", train.images, train.labels, label_dim=10)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"refine": {"train_fractions": [0.25, 0.5], "seed": 3}}))
    written = subsets.main([str(params), str(tmp_path / "train.npz"), str(tmp_path / "out")])
    assert [p.name for p in written] == ["train_f25.npz", "train_f50.npz"]
    cfg = params_lib.RefineConfig(train_fractions=(0.25, 0.5), seed=3)
    for path, fraction in zip(written, cfg.train_fractions):
        loaded = data_lib.load_dataset(path)
        expected = subsets.fraction_subset(train, fraction, cfg.subset_seed())
        assert torch.equal(loaded.images, expected.images) and torch.equal(loaded.labels, expected.labels)
        assert loaded.label_dim == 10
        with np.load(path) as archive:
            index = torch.from_numpy(archive["train_index"])
            assert float(archive["fraction"]) == fraction and int(archive["subset_seed"]) == 4
        assert torch.equal(train.images[index], loaded.images)


def test_cli_refuses_a_fraction_it_cannot_name(tmp_path, train):
    data_lib.save_dataset(tmp_path / "train.npz", train.images, train.labels, label_dim=10)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"refine": {"train_fractions": [0.333]}}))
    with pytest.raises(ValueError, match="whole percent"):
        subsets.main([str(params), str(tmp_path / "train.npz"), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
