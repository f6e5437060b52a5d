"""Metrics against independent references: scipy/numpy Fréchet distance, torch-fidelity, sanity orderings."""
import numpy as np
import pytest
import torch

from ddo_lib import data as data_lib
from ddo_lib.eval import features, metrics


def independent_fd(x: np.ndarray, y: np.ndarray) -> float:
    """FD via the symmetric form tr((√Σ₁ Σ₂ √Σ₁)^½), eigen-decompositions only (no sqrtm of a product)."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(middle, 0, None)).sum())


@pytest.mark.parametrize("n", [50, 200, 1000])
@pytest.mark.parametrize("d", [2, 16, 64])
def test_frechet_distance_matches_an_independent_computation(n, d):
    rng = np.random.default_rng(n * 100 + d)
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.5 + 0.3
    ours = metrics.frechet_distance(*metrics.feature_statistics(torch.from_numpy(x)),
                                    *metrics.feature_statistics(torch.from_numpy(y)))
    assert ours == pytest.approx(independent_fd(x, y), rel=1e-6)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    x = torch.randn(300, 8, dtype=torch.float64)
    stats = metrics.feature_statistics(x)
    assert abs(metrics.frechet_distance(*stats, *stats)) < 1e-8


def test_torch_fidelity_statistics_give_our_value():
    from torch_fidelity.metric_fid import (
        fid_features_to_statistics,
        fid_statistics_to_metric,
    )

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(400, 32)))
    y = torch.from_numpy(rng.normal(size=(400, 32)) * 1.3 + 0.2)
    theirs = fid_statistics_to_metric(fid_features_to_statistics(x), fid_features_to_statistics(y), False)
    ours = metrics.frechet_distance(*metrics.feature_statistics(x), *metrics.feature_statistics(y))
    assert ours == pytest.approx(theirs["frechet_inception_distance"], rel=1e-6)


@pytest.fixture(scope="module")
def digits():
    images, labels = data_lib.load_digits_dataset(8)
    train, held = data_lib.split_indices(labels, 0.2, 0)
    return images[train], labels[train], images[held], labels[held]


@pytest.fixture(scope="module")
def classifier(digits):
    return features.train_classifier(digits[0], digits[1], num_classes=10, steps=300, seed=0)


def test_classifier_learns_the_digits(digits, classifier):
    assert features.classifier_accuracy(classifier, digits[2], digits[3]) > 0.9


def test_classifier_training_is_deterministic(digits, classifier):
    again = features.train_classifier(digits[0], digits[1], num_classes=10, steps=300, seed=0)
    for key, value in classifier.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_sanity_ordering_real_vs_noisy(digits, classifier):
    train, _, held, _ = digits
    noisy = (held.float() + 60 * torch.randn(held.shape, generator=torch.Generator().manual_seed(0)))
    noisy = noisy.clamp(0, 255).to(torch.uint8)
    real = metrics.evaluate_images(held, train, classifier, name="fd")
    bad = metrics.evaluate_images(noisy, train, classifier, name="fd")
    assert real["value"] * 5 < bad["value"]
    assert real["precision"] > bad["precision"]


def test_extract_features_is_batch_size_independent(digits, classifier):
    a = metrics.extract_features(classifier, digits[2], batch_size=7)
    b = metrics.extract_features(classifier, digits[2], batch_size=1000)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_precision_recall_and_kid_extremes():
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert metrics.precision_recall(x, x) == (1.0, 1.0)
    assert metrics.precision_recall(x, x + 100.0) == (0.0, 0.0)
    same = metrics.kid(x, x.clone(), subsets=5, subset_size=100)
    far = metrics.kid(x, x + 3.0, subsets=5, subset_size=100)
    assert abs(same) < far / 20


def test_reference_statistics_cache(digits, classifier, tmp_path):
    first = metrics.reference_statistics(digits[0], classifier, tmp_path)
    files = sorted(tmp_path.iterdir())
    second = metrics.reference_statistics(digits[0], classifier, tmp_path)
    assert sorted(tmp_path.iterdir()) == files and len(files) == 1
    np.testing.assert_array_equal(first[0], second[0])
    metrics.reference_statistics(digits[2], classifier, tmp_path)
    assert len(list(tmp_path.iterdir())) == 2


def test_torch_fidelity_end_to_end_with_the_domain_extractor(digits, classifier, tmp_path):
    from ddo_lib.eval import fidelity

    path = features.save_classifier(tmp_path / "classifier.pt", classifier)
    fake, real = digits[2][:150], digits[0][:200]
    theirs = metrics.fidelity_metrics(fake, real, feature_extractor=fidelity.register(), weights_path=str(path))
    ours = metrics.evaluate_images(fake, real, classifier, name="fd")["value"]
    assert theirs["frechet_inception_distance"] == pytest.approx(ours, rel=1e-5)


def test_missing_inception_weights_is_a_clear_error_without_download(monkeypatch, digits):
    import urllib.request

    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(FileNotFoundError, match="weights-inception-2015-12-05"):
        metrics.fidelity_metrics(digits[2][:10], digits[0][:10], weights_path=None)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        metrics.fidelity_metrics(digits[2][:10], digits[0][:10], weights_path="/nonexistent/inception.pth")


def test_classifier_file_round_trip_and_errors(classifier, tmp_path):
    path = features.save_classifier(tmp_path / "c.pt", classifier, held_out_accuracy=0.97)
    loaded = features.load_classifier(path)
    assert loaded.meta["held_out_accuracy"] == 0.97
    with pytest.raises(FileNotFoundError):
        features.load_classifier(tmp_path / "missing.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="classifier file"):
        features.load_classifier(tmp_path / "other.pt")
