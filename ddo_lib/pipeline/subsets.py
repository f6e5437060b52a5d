"""Fixed random subsets of the training split: the training-set-size axis of the generalization study.

Every consumer of a size — the explicit discriminator refitted on fewer images
(`ddo_lib.pipeline.refine.size_axis_gaps`), the DDO and MLE runs of the studies pipeline (`studies/dvc.yaml: size_data, size_rounds`) — draws the *same* subset:
`fraction_subset(train, fraction, seed)` is a function of its arguments only, and `write_subsets` stores
exactly those subsets as `.npz` files so DVC stages can train on them by path.

    python3 -m ddo_lib.pipeline.subsets params.yaml data/prepared/train.npz data/prepared/study
"""
from __future__ import annotations

import argparse
import logging
import os
import pathlib

import numpy as np
import torch

from ddo_lib import data as data_lib
from ddo_lib.pipeline import params

log = logging.getLogger(__name__)


def subset_size(n: int, fraction: float) -> int:
    """Images kept of `n` for a fraction in (0, 1]: round(fraction·n), at least 1."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"training fraction must lie in (0, 1], found {fraction}")
    return max(round(fraction * n), 1)


def subset_index(n: int, size: int, seed: int) -> torch.Tensor:
    """The first `size` entries of a seeded permutation of range(n): [size] int64 (nested across sizes)."""
    if not 1 <= size <= n:
        raise ValueError(f"subset size must lie in [1, {n}], found {size}")
    return torch.from_numpy(np.random.default_rng(seed).permutation(n)[:size])


def train_subset(train, size: int, seed: int):
    """A fixed random subset of a `ddo_lib.data.Dataset` with `size` images (label_dim kept)."""
    index = subset_index(len(train.images), size, seed)
    return data_lib.make_dataset(train.images[index], train.labels[index], name=f"{train.name}-{size}",
                                 label_dim=train.label_dim)


def fraction_subset(train, fraction: float, seed: int):
    """`train_subset` with round(fraction·N) images."""
    return train_subset(train, subset_size(len(train.images), fraction), seed)


def subset_file(out_dir: str | os.PathLike, fraction: float) -> pathlib.Path:
    """Where `write_subsets` puts a fraction: `<out_dir>/train_f<percent>.npz` (0.25 -> train_f25.npz)."""
    percent = 100 * fraction
    if abs(percent - round(percent)) > 1e-9:
        raise ValueError(f"training fractions are named in whole percent; {fraction} is not")
    return pathlib.Path(out_dir) / f"train_f{round(percent)}.npz"


def write_subsets(train_path: str | os.PathLike, fractions, seed: int, out_dir: str | os.PathLike) -> list:
    """Write `fraction_subset(train, f, seed)` for every f as an `.npz` (atomic; index and seed recorded)."""
    train = data_lib.load_dataset(train_path)
    written = []
    for fraction in fractions:
        size = subset_size(len(train.images), fraction)
        index = subset_index(len(train.images), size, seed)
        written.append(data_lib.save_dataset(subset_file(out_dir, fraction), train.images[index],
                                             train.labels[index], name=f"{train.name}-{size}",
                                             label_dim=train.label_dim, train_index=index.numpy(),
                                             fraction=float(fraction), subset_seed=int(seed)))
    return written


def main(argv: list[str] | None = None) -> list:
    """CLI: the subsets of params.yaml `refine.train_fractions`, seed `refine.seed + 1` (the explicit axis's)."""
    parser = argparse.ArgumentParser(prog="python3 -m ddo_lib.pipeline.subsets", description=main.__doc__)
    parser.add_argument("params_file")
    parser.add_argument("train_data")
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    cfg = params.load_section(params.RefineConfig, args.params_file, "refine")
    return write_subsets(args.train_data, cfg.train_fractions, cfg.subset_seed(), args.out_dir)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
