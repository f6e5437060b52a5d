"""FID as the papers compute it, at scale: Inception features, moments reduced as sums, reference statistics.

FID (Heusel et al. 2017, Eq. 6) on the 2048-d pool features of the 2015-12-05 Inception graph, which
torch-fidelity's `inception-v3-compat` reproduces in PyTorch from a local weights file (TF1 resize, uint8
input). Statistics follow EDM `fid.py`: float64, μ = Σf/N, Σ = (Σfᵀf − N·μμᵀ)/(N − 1), so each rank keeps
(N, Σf, Σfᵀf) for its shard and one all-reduce of those sums gives the statistics of all N images: no image
or feature leaves its rank. Reference statistics come from the official files or are computed once and
cached:

| file                                   | layout                                                  |
|----------------------------------------|---------------------------------------------------------|
| EDM `.npz` (e.g. `cifar10-32x32.npz`)  | arrays `mu` [2048], `sigma` [2048, 2048]                |
| ADM / VAR `.npz`                       | the same two arrays (other arrays ignored)              |
| EDM2 `.pkl` (e.g. `img64.pkl`)         | pickled `{'fid': {'mu', 'sigma'}, ...}`, read with our restricted unpickler |
"""
from __future__ import annotations

import dataclasses
import io
import pathlib
import pickle
import zipfile
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from ddo_lib.checkpoint import atomic_write_bytes
from ddo_lib.edm.checkpoint import UnsafePickleError, read_official_pickle
from ddo_lib.eval.metrics import INCEPTION_WEIGHTS, frechet_distance

INCEPTION_DIM = 2048
EXTRACTOR = "inception-v3-compat"


# --- Inception -----------------------------------------------------------------------------------------

def check_inception_weights(path) -> pathlib.Path:
    """`path` if it holds a state dict that `torch.load(weights_only=True)` reads; else a clear error.

    torch-fidelity loads the file with full pickle (which can run code), so the file is vetted here first.
    """
    if path is None or not pathlib.Path(path).is_file():
        raise FileNotFoundError(
            f"Inception weights not found at {path!r}: FID needs torch-fidelity's '{INCEPTION_WEIGHTS}' as a "
            "local file (evaluate.inception_weights); ddo_lib never downloads at run time")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: refused as Inception weights: torch.load(weights_only=True) cannot read it "
                         f"({type(error).__name__}: {str(error)[:200]})") from error
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors (torch-fidelity's {INCEPTION_WEIGHTS}), "
                         f"found {type(state).__name__}")
    fc = state.get("fc.weight")
    if fc is None or tuple(fc.shape) != (1008, INCEPTION_DIM):
        found = None if fc is None else tuple(fc.shape)
        raise ValueError(f"{path}: not the inception-v3-compat layout: member 'fc.weight' should be "
                         f"(1008, {INCEPTION_DIM}), found {found}")
    return pathlib.Path(path)


def inception(path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """torch-fidelity's `inception-v3-compat` feature extractor (2048-d pool features) from a vetted file."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = check_inception_weights(path)
    try:
        extractor = FeatureExtractorInceptionV3(EXTRACTOR, [str(INCEPTION_DIM)],
                                                feature_extractor_weights_path=str(path))
    except RuntimeError as error:  # strict load_state_dict: names the missing / unexpected / resized members
        raise ValueError(f"{path}: not the inception-v3-compat layout: {str(error)[:400]}") from error
    return extractor.to(device).eval()


def random_inception_state(seed: int = 0) -> dict:
    """A random-weight state dict in torch-fidelity's inception-v3-compat layout, built from its own blocks:
    a stand-in for CPU miniatures, tests and FLOP counts (the real file is an input given by path; scores
    with these weights are not FIDs)."""
    from torch_fidelity import feature_extractor_inceptionv3 as tf

    with torch.random.fork_rng():  # the caller's random state is left as it was
        torch.manual_seed(seed)
        net = torch.nn.Module()
        layout = [("Conv2d_1a_3x3", tf.BasicConv2d(3, 32, kernel_size=3, stride=2)),
                  ("Conv2d_2a_3x3", tf.BasicConv2d(32, 32, kernel_size=3)),
                  ("Conv2d_2b_3x3", tf.BasicConv2d(32, 64, kernel_size=3, padding=1)),
                  ("Conv2d_3b_1x1", tf.BasicConv2d(64, 80, kernel_size=1)),
                  ("Conv2d_4a_3x3", tf.BasicConv2d(80, 192, kernel_size=3)),
                  ("Mixed_5b", tf.InceptionA(192, pool_features=32)), ("Mixed_5c", tf.InceptionA(256, pool_features=64)),
                  ("Mixed_5d", tf.InceptionA(288, pool_features=64)), ("Mixed_6a", tf.InceptionB(288)),
                  ("Mixed_6b", tf.InceptionC(768, channels_7x7=128)), ("Mixed_6c", tf.InceptionC(768, channels_7x7=160)),
                  ("Mixed_6d", tf.InceptionC(768, channels_7x7=160)), ("Mixed_6e", tf.InceptionC(768, channels_7x7=192)),
                  ("Mixed_7a", tf.InceptionD(768)), ("Mixed_7b", tf.InceptionE_1(1280)), ("Mixed_7c", tf.InceptionE_2(2048)),
                  ("fc", torch.nn.Linear(2048, 1008))]
        for name, module in layout:
            net.add_module(name, module)
    return net.state_dict()


@torch.no_grad()
def inception_features(extractor: torch.nn.Module, images: torch.Tensor, *, batch_size: int = 250) -> torch.Tensor:
    """uint8 images [N, C, H, W] (C = 1 or 3; grey is repeated) -> float64 features [N, 2048] on the CPU."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"inception_features: expected uint8 [N, 1 or 3, H, W], found {images.dtype} "
                         f"{list(images.shape)}")
    device = next(extractor.parameters()).device
    parts = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device)
        batch = batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch
        (features,) = extractor(batch.contiguous())
        parts.append(features.double().cpu())
    return torch.cat(parts) if parts else torch.zeros(0, INCEPTION_DIM, dtype=torch.float64)


# --- Moments as sums ----------------------------------------------------------------------------------

@dataclasses.dataclass
class FeatureMoments:
    """(N, Σf, Σfᵀf) of features, float64: additive across batches and ranks."""

    count: int
    total: torch.Tensor      # [D]
    outer: torch.Tensor      # [D, D]

    @classmethod
    def empty(cls, dim: int = INCEPTION_DIM) -> "FeatureMoments":
        return cls(0, torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dim, dtype=torch.float64))

    def add(self, features: torch.Tensor) -> "FeatureMoments":
        """These moments plus those of features [N, D]."""
        f = features.double().cpu()
        if f.ndim != 2 or f.shape[1] != len(self.total):
            raise ValueError(f"FeatureMoments.add: expected [N, {len(self.total)}], found {list(f.shape)}")
        return FeatureMoments(self.count + len(f), self.total + f.sum(0), self.outer + f.T @ f)

    def all_reduce(self, device: torch.device | str = "cpu") -> "FeatureMoments":
        """The moments summed over every rank (one all-reduce; a no-op outside torch.distributed).
        `device`: where the collective runs (CUDA for NCCL)."""
        if not (dist.is_available() and dist.is_initialized()):
            return self
        dim = len(self.total)
        packed = torch.cat([torch.tensor([float(self.count)], dtype=torch.float64), self.total, self.outer.flatten()])
        packed = packed.to(device)
        dist.all_reduce(packed)
        packed = packed.cpu()
        return FeatureMoments(int(round(packed[0].item())), packed[1:1 + dim], packed[1 + dim:].reshape(dim, dim))

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """μ [D] and the unbiased covariance Σ [D, D] (EDM `fid.py`)."""
        if self.count < 2:
            raise ValueError(f"FID statistics need at least 2 images, found {self.count}")
        mu = self.total / self.count
        sigma = (self.outer - self.count * torch.outer(mu, mu)) / (self.count - 1)
        return mu.numpy(), sigma.numpy()


# --- Reference statistics -----------------------------------------------------------------------------

def _checked_stats(mu, sigma, dim: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise ValueError(f"{where}: expected mu [{dim}] and sigma [{dim}, {dim}] (features of {EXTRACTOR}), "
                         f"found mu {list(mu.shape)} and sigma {list(sigma.shape)}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{where}: mu or sigma holds NaN or inf")
    return mu, sigma


def _read_npz(path: pathlib.Path, dim: int) -> tuple[np.ndarray, np.ndarray]:
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not an .npz file (an .npz is a zip archive of .npy arrays)")
    with np.load(path, allow_pickle=False) as archive:
        missing = [key for key in ("mu", "sigma") if key not in archive.files]
        if missing:
            raise ValueError(f"{path}: reference statistics need arrays 'mu' and 'sigma'; missing {missing}, "
                             f"found {archive.files}")
        return _checked_stats(archive["mu"], archive["sigma"], dim, f"{path}")


def _read_pkl(path: pathlib.Path, dim: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = read_official_pickle(path)
    except UnsafePickleError:
        raise
    except (ValueError, pickle.UnpicklingError) as error:
        raise ValueError(f"{path}: not an EDM2 reference pickle ({error})") from error
    stats = data.get("fid") if isinstance(data, dict) else None
    if not isinstance(stats, dict) or not {"mu", "sigma"} <= set(stats):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: an EDM2 reference pickle holds {{'fid': {{'mu', 'sigma'}}}}; found {found}")
    return _checked_stats(stats["mu"], stats["sigma"], dim, f"{path} member 'fid'")


def load_reference_stats(path, *, dim: int = INCEPTION_DIM) -> tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) from an EDM / ADM / VAR `.npz` or an EDM2 `.pkl` (no code in the pickle runs)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics not found: {path}")
    if path.suffix == ".npz":
        return _read_npz(path, dim)
    if path.suffix == ".pkl":
        return _read_pkl(path, dim)
    raise ValueError(f"{path}: unknown reference-statistics format {path.suffix!r}; expected .npz (EDM, ADM, "
                     f"VAR) or .pkl (EDM2)")


def save_reference_stats(path, mu: np.ndarray, sigma: np.ndarray) -> pathlib.Path:
    """Write (μ, Σ) atomically as an EDM-style `.npz` (`mu`, `sigma`), readable by EDM's `fid.py`."""
    mu, sigma = _checked_stats(mu, sigma, len(np.asarray(mu)), str(path))
    buffer = io.BytesIO()
    np.savez(buffer, mu=mu, sigma=sigma)
    return atomic_write_bytes(path, buffer.getvalue())


# --- Sharded FID --------------------------------------------------------------------------------------

def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(seeds: Sequence[int], rank: int, world_size: int) -> list[int]:
    """The seeds of one rank: every world_size-th, starting at rank (image i depends on seed i only)."""
    return list(seeds)[rank::world_size]


def sharded_moments(generate: Callable[[list[int]], torch.Tensor], features: Callable[[torch.Tensor], torch.Tensor],
                    seeds: Sequence[int], *, batch_size: int = 250, dim: int = INCEPTION_DIM,
                    device: torch.device | str = "cpu") -> FeatureMoments:
    """Moments of `features(generate(seeds))` over all `seeds`, each rank generating only its shard.

    generate: seeds -> uint8 images [n, C, H, W]; features: images -> [n, D]. The result is identical on
    every rank and, up to float summation order, for every world size.
    """
    rank, world_size = world()
    mine, moments = shard(seeds, rank, world_size), FeatureMoments.empty(dim)
    for start in range(0, len(mine), batch_size):
        moments = moments.add(features(generate(mine[start:start + batch_size])))
    return moments.all_reduce(device)


def fid_from_moments(moments: FeatureMoments, reference: tuple[np.ndarray, np.ndarray]) -> float:
    """FID of the generated moments against reference (μ_r, Σ_r)."""
    mu, sigma = moments.statistics()
    ref_mu, ref_sigma = _checked_stats(*reference, len(mu), "reference statistics")
    return frechet_distance(mu, sigma, ref_mu, ref_sigma)


def reference_stats_cached(path, compute: Callable[[], FeatureMoments], *,
                           dim: int = INCEPTION_DIM) -> tuple[np.ndarray, np.ndarray]:
    """Reference (μ, Σ) read from `path`, or computed by `compute()` (e.g. `sharded_moments` over the
    training set), written there by rank 0 and read back by every rank."""
    path = pathlib.Path(path)
    if not path.is_file():
        stats = compute().statistics()
        if world()[0] == 0:
            save_reference_stats(path, *stats)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
    return load_reference_stats(path, dim=dim)


# --- Precision and recall in blocks -------------------------------------------------------------------

def _kth_radii(x: torch.Tensor, k: int, block: int) -> torch.Tensor:
    """Distance of each row of x [N, D] to its k-th nearest other row: [N], O(block·N) memory."""
    radii = []
    for start in range(0, len(x), block):
        distances = torch.cdist(x[start:start + block].double(), x.double())   # [b, N]
        radii.append(distances.kthvalue(k + 1, dim=1).values)                 # k + 1: the row itself is 0
    return torch.cat(radii)


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int) -> torch.Tensor:
    """Bool [P]: inside at least one ball (centre, radius)."""
    inside = []
    for start in range(0, len(points), block):
        distances = torch.cdist(points[start:start + block].double(), centres.double())  # [b, C]
        inside.append((distances <= radii[None, :]).any(dim=1))
    return torch.cat(inside)


def precision_recall_blocked(real: torch.Tensor, fake: torch.Tensor, *, k: int = 3,
                             block: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of features [N, D] without an N×N matrix:
    the same values as `ddo_lib.eval.metrics.precision_recall`, in blocks of `block` rows."""
    real_radii, fake_radii = _kth_radii(real, k, block), _kth_radii(fake, k, block)
    precision = _covered(fake, real, real_radii, block).double().mean().item()
    recall = _covered(real, fake, fake_radii, block).double().mean().item()
    return precision, recall
