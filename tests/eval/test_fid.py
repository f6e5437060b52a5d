"""Sharded FID: moments as sums (numpy oracle, 2 gloo processes = 1), reference statistics in the official
formats with clear errors, Inception weights vetted before torch-fidelity unpickles them, blocked
precision/recall equal to the dense one."""
import io
import os
import pickle

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from ddo_lib.edm.checkpoint import UnsafePickleError
from ddo_lib.eval import fid
from ddo_lib.eval.metrics import frechet_distance, precision_recall


def features(n: int, dim: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=generator, dtype=torch.float64) @ torch.randn(dim, dim, generator=generator,
                                                                                        dtype=torch.float64)


def test_moments_match_numpy_mean_and_covariance_in_any_batching():
    f = features(50)
    whole = fid.FeatureMoments.empty(16).add(f)
    batched = fid.FeatureMoments.empty(16)
    for part in torch.split(f, 7):
        batched = batched.add(part)
    for moments in (whole, batched):
        mu, sigma = moments.statistics()
        np.testing.assert_allclose(mu, f.numpy().mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(sigma, np.cov(f.numpy(), rowvar=False), rtol=1e-10, atol=1e-10)


def test_moments_refuse_too_few_images_and_wrong_width():
    with pytest.raises(ValueError, match="at least 2 images"):
        fid.FeatureMoments.empty(16).add(features(1)).statistics()
    with pytest.raises(ValueError, match=r"expected \[N, 16\]"):
        fid.FeatureMoments.empty(16).add(features(4, dim=8))


def fake_generate(seeds: list[int]) -> torch.Tensor:
    """uint8 images [n, 1, 4, 4], image i a function of seed i only."""
    return torch.stack([torch.randint(0, 256, (1, 4, 4), generator=torch.Generator().manual_seed(s),
                                      dtype=torch.uint8) for s in seeds])


def flat_features(images: torch.Tensor) -> torch.Tensor:
    return images.flatten(1).double()


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        moments = fid.sharded_moments(fake_generate, flat_features, range(37), batch_size=5, dim=16)
        torch.save(dict(count=moments.count, total=moments.total, outer=moments.outer), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_give_the_moments_of_one(tmp_path, free_port):
    single = fid.sharded_moments(fake_generate, flat_features, range(37), batch_size=8, dim=16)
    out = str(tmp_path / "moments")
    mp.spawn(_worker, args=(2, free_port, out), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(f"{out}.{rank}", weights_only=True)
        assert got["count"] == single.count == 37
        torch.testing.assert_close(got["total"], single.total, rtol=1e-12, atol=0)
        torch.testing.assert_close(got["outer"], single.outer, rtol=1e-12, atol=0)


def test_shards_partition_the_seeds():
    seeds = list(range(10, 33))
    parts = [fid.shard(seeds, rank, 3) for rank in range(3)]
    assert sorted(sum(parts, [])) == seeds and all(len(p) in (7, 8) for p in parts)


def test_fid_from_moments_is_the_frechet_distance():
    a, b = features(40, seed=1), features(60, seed=2)
    reference = (b.numpy().mean(0), np.cov(b.numpy(), rowvar=False))
    expected = frechet_distance(a.numpy().mean(0), np.cov(a.numpy(), rowvar=False), *reference)
    assert fid.fid_from_moments(fid.FeatureMoments.empty(16).add(a), reference) == pytest.approx(expected, rel=1e-9)


# --- Reference statistics -----------------------------------------------------------------------------

def stats(dim: int = 16):
    f = features(30, dim)
    return f.numpy().mean(0), np.cov(f.numpy(), rowvar=False)


def test_npz_round_trip_and_edm2_pickle(tmp_path):
    mu, sigma = stats()
    path = fid.save_reference_stats(tmp_path / "ref.npz", mu, sigma)
    loaded = fid.load_reference_stats(path, dim=16)
    np.testing.assert_array_equal(loaded[0], mu)
    np.testing.assert_array_equal(loaded[1], sigma)
    pkl = tmp_path / "img64.pkl"
    pkl.write_bytes(pickle.dumps({"fid": {"mu": mu, "sigma": sigma}, "fd_dinov2": {"mu": mu[:4]}}, protocol=4))
    from_pkl = fid.load_reference_stats(pkl, dim=16)
    np.testing.assert_array_equal(from_pkl[1], sigma)


def test_reference_stats_errors_name_the_file_and_member(tmp_path):
    mu, sigma = stats()
    with pytest.raises(FileNotFoundError, match="not found"):
        fid.load_reference_stats(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="text.npz: not an .npz file"):
        fid.load_reference_stats(tmp_path / "text.npz", dim=16)
    buffer = io.BytesIO()
    np.savez(buffer, mean=mu)
    (tmp_path / "keys.npz").write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match=r"missing \['mu', 'sigma'\], found \['mean'\]"):
        fid.load_reference_stats(tmp_path / "keys.npz", dim=16)
    fid.save_reference_stats(tmp_path / "small.npz", mu, sigma)
    with pytest.raises(ValueError, match=r"small.npz: expected mu \[2048\].*found mu \[16\]"):
        fid.load_reference_stats(tmp_path / "small.npz")
    (tmp_path / "ref.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown reference-statistics format '.pt'"):
        fid.load_reference_stats(tmp_path / "ref.pt")
    (tmp_path / "wrong.pkl").write_bytes(pickle.dumps({"kid": {}}, protocol=4))
    with pytest.raises(ValueError, match=r"found \['kid'\]"):
        fid.load_reference_stats(tmp_path / "wrong.pkl", dim=16)


def test_a_malicious_reference_pickle_is_refused_without_running(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"fid": Evil()}, protocol=4))
    with pytest.raises(UnsafePickleError, match="system"):
        fid.load_reference_stats(tmp_path / "evil.pkl")
    assert not (tmp_path / "pwned").exists()


def test_nan_statistics_are_refused(tmp_path):
    mu, sigma = stats()
    sigma[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fid.save_reference_stats(tmp_path / "nan.npz", mu, sigma)


def test_cached_statistics_are_computed_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return fid.FeatureMoments.empty(16).add(features(20))

    first = fid.reference_stats_cached(tmp_path / "cache.npz", compute, dim=16)
    second = fid.reference_stats_cached(tmp_path / "cache.npz", compute, dim=16)
    assert len(calls) == 1 and np.array_equal(first[1], second[1])


# --- Inception weights --------------------------------------------------------------------------------

class Payload:
    """An arbitrary object: torch.save pickles it, torch.load(weights_only=True) refuses it."""


def test_inception_weights_are_vetted(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        fid.check_inception_weights(tmp_path / "missing.pth")
    torch.save({"fc.weight": Payload()}, tmp_path / "objects.pth")
    with pytest.raises(ValueError, match="weights_only=True"):
        fid.check_inception_weights(tmp_path / "objects.pth")
    torch.save({"fc.weight": torch.zeros(10, 2048)}, tmp_path / "layout.pth")
    with pytest.raises(ValueError, match=r"member 'fc.weight' should be \(1008, 2048\), found \(10, 2048\)"):
        fid.check_inception_weights(tmp_path / "layout.pth")


def test_random_weight_inception_file_gives_2048_features(tmp_path, inception_weights_file):
    extractor = fid.inception(inception_weights_file)
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    out = fid.inception_features(extractor, images, batch_size=2)
    assert out.shape == (3, 2048) and out.dtype == torch.float64 and torch.isfinite(out).all()
    state = torch.load(inception_weights_file, weights_only=True)
    del state["Mixed_7c.branch_pool.conv.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="Mixed_7c.branch_pool.conv.weight"):
        fid.inception(tmp_path / "partial.pth")


# --- Precision / recall -------------------------------------------------------------------------------

@pytest.mark.parametrize("block", [1, 7, 1000])
def test_blocked_precision_recall_equals_the_dense_one(block):
    real, fake = features(40, seed=3), features(33, seed=4) * 1.3
    assert fid.precision_recall_blocked(real, fake, k=3, block=block) == precision_recall(real, fake, k=3)
