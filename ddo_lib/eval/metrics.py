"""Sample-quality metrics as functions of features (torch-fidelity's features → statistics → metric).

- Fréchet distance (Heusel et al. 2017): ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½), float64, scipy sqrtm.
- Improved precision / recall (Kynkäänniemi et al. 2019): k-NN radii manifolds, k = 3.
- KID (Bińkowski et al. 2018): unbiased MMD² with the cubic polynomial kernel, averaged over subsets.
- FID at GPU scale goes through torch-fidelity's `inception-v3-compat` with a LOCAL weights file.
"""
from __future__ import annotations

import hashlib
import io
import pathlib

import numpy as np
import scipy.linalg
import torch

from ddo_lib.checkpoint import atomic_write_bytes

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"


@torch.no_grad()
def extract_features(extractor: torch.nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """uint8 images [N, C, H, W] -> float64 features [N, D] via `extractor.features`."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"extract_features: expected uint8 [N, C, H, W], found {images.dtype} {list(images.shape)}")
    parts = [extractor.features(images[i:i + batch_size]).double() for i in range(0, len(images), batch_size)]
    return torch.cat(parts)


def feature_statistics(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] of features [N, D], float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"feature_statistics: expected [N >= 2, D], found {list(f.shape)}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂) (Heusel et al. 2017, Eq. 6)."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():  # singular product: the usual eps-offset fallback
        offset = np.eye(len(sigma1)) * 1e-6
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean.real))


def _pairwise_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a.double(), b.double())  # [Na, Nb]


def precision_recall(real: torch.Tensor, fake: torch.Tensor, *, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, Sec. 3) of features [N, D].

    precision: share of fakes inside the union of real k-NN balls; recall: share of reals inside the
    union of fake k-NN balls (the k-th neighbour excludes the point itself).
    """
    def radii(x):
        return _pairwise_distances(x, x).kthvalue(k + 1, dim=1).values  # [N]

    real_radii, fake_radii = radii(real), radii(fake)
    distances = _pairwise_distances(fake, real)                                      # [Nf, Nr]
    precision = (distances <= real_radii[None, :]).any(dim=1).double().mean().item()
    recall = (distances.T <= fake_radii[None, :]).any(dim=1).double().mean().item()
    return precision, recall


def kid(real: torch.Tensor, fake: torch.Tensor, *, subsets: int = 20, subset_size: int = 200,
        seed: int = 0) -> float:
    """Kernel Inception Distance (Bińkowski et al. 2018): mean unbiased MMD², k(x,y) = (xᵀy/D + 1)³."""
    rng = np.random.default_rng(seed)
    size = min(subset_size, len(real), len(fake))
    values = []
    for _ in range(subsets):
        x = real[rng.choice(len(real), size, replace=False)].double()
        y = fake[rng.choice(len(fake), size, replace=False)].double()
        dim = x.shape[1]
        kxx, kyy, kxy = ((x @ x.T / dim + 1) ** 3, (y @ y.T / dim + 1) ** 3, (x @ y.T / dim + 1) ** 3)
        off = 1 - torch.eye(size, dtype=torch.float64)
        values.append(((kxx * off).sum() + (kyy * off).sum()) / (size * (size - 1)) - 2 * kxy.mean())
    return float(torch.stack(values).mean())


def _digest(extractor: torch.nn.Module, images: torch.Tensor) -> str:
    digest = hashlib.sha256(images.contiguous().numpy().tobytes())
    for value in extractor.state_dict().values():
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def reference_statistics(images: torch.Tensor, extractor: torch.nn.Module, cache_dir=None):
    """(μ, Σ) of real images, cached under a name that hashes the images and the extractor weights."""
    path = pathlib.Path(cache_dir) / f"stats-{_digest(extractor, images)}.npz" if cache_dir else None
    if path is not None and path.exists():
        with np.load(path, allow_pickle=False) as saved:
            return saved["mu"], saved["sigma"]
    mu, sigma = feature_statistics(extract_features(extractor, images))
    if path is not None:
        buffer = io.BytesIO()
        np.savez(buffer, mu=mu, sigma=sigma)
        atomic_write_bytes(path, buffer.getvalue())
    return mu, sigma


def evaluate_images(fake: torch.Tensor, real: torch.Tensor, extractor: torch.nn.Module, *, name: str,
                    cache_dir=None, with_kid: bool = False) -> dict:
    """Flat metrics record: Fréchet distance, precision, recall (+ KID) of uint8 fakes vs uint8 reals."""
    real_features = extract_features(extractor, real)
    fake_features = extract_features(extractor, fake)
    value = frechet_distance(*feature_statistics(fake_features), *reference_statistics(real, extractor, cache_dir))
    precision, recall = precision_recall(real_features, fake_features)
    record = dict(metric=name, value=value, precision=precision, recall=recall,
                  extractor=type(extractor).__name__, extractor_accuracy=getattr(extractor, "meta", {}).get("held_out_accuracy"),
                  num_images=len(fake), num_reference_images=len(real))
    if with_kid:
        record["kid"] = kid(real_features, fake_features)
    return record


def inception_weights(path) -> pathlib.Path:
    """Check the local torch-fidelity Inception weights file; never download."""
    if path is None or not pathlib.Path(path).is_file():
        raise FileNotFoundError(
            f"Inception weights not found at {path!r}. FID needs torch-fidelity's '{INCEPTION_WEIGHTS}' "
            "(GitHub release v0.2.0 of toshas/torch-fidelity) as a local file: download it on a machine with "
            "internet access, put it under data/ (e.g. data/inception/) and set its path in params.yaml. "
            "ddo_lib never downloads at run time.")
    return pathlib.Path(path)


class _ImageSet(torch.utils.data.Dataset):
    """uint8 [N, C, H, W] as the uint8 [3, H, W] items torch-fidelity expects (grey repeated to RGB)."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.images[index]
        return image.expand(3, -1, -1).contiguous() if image.shape[0] == 1 else image


def fidelity_metrics(fake: torch.Tensor, real: torch.Tensor, *, feature_extractor: str = "inception-v3-compat",
                     weights_path=None, kid_subset_size: int = 1000, **kwargs) -> dict:
    """torch-fidelity FID/KID/precision-recall on in-memory uint8 images; a local weights file is required
    for Inception (no download is ever attempted)."""
    import torch_fidelity

    if feature_extractor == "inception-v3-compat":
        weights_path = str(inception_weights(weights_path))
    options = dict(input1=_ImageSet(fake), input2=_ImageSet(real), cuda=torch.cuda.is_available(), fid=True,
                   feature_extractor=feature_extractor, feature_extractor_weights_path=weights_path,
                   save_cpu_ram=True, cache=False, verbose=False, batch_size=min(len(fake), len(real), 200),
                   kid_subset_size=min(kid_subset_size, len(fake), len(real)))
    options.update(kwargs)
    return torch_fidelity.calculate_metrics(**options)
