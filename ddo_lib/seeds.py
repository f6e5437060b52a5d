"""Every seed of the library and the pipeline, in one place.

Sampling seeds name images: image i of a batch is a function of its seed only (EDM `generate.py`
protocol; `ddo_lib.edm.random`). Each use owns a range, and the ranges are disjoint for every size that
the range functions accept (they raise beyond it), so no image is ever reused across uses:

| use                         | seeds                                             | accepted sizes            |
|-----------------------------|---------------------------------------------------|---------------------------|
| evaluation                  | offset + [0, N), offset in `seed_offsets`         | offset + N ≤ 5·10⁶        |
| selection inside rounds     | 5·10⁶ + [0, n)                                    | n ≤ 5·10⁶                 |
| evaluation spread, repeat k | 10⁷·(k + 1) + [0, N)                              | N ≤ 10⁷, k < 99           |
| fake pool of (seed, round)  | 10⁹ + seed·10⁷ + round·10⁵ + [0, size)            | size ≤ 10⁵, round, seed < 100 |
| online fakes, fake j of step s of round k | 2·10⁹ + (seed·P + (k·S + s)·B + j) mod 5·10⁸ | any; repeats only after 5·10⁸ fakes |
| fresh reference samples     | 2.5·10⁹ + [0, n)  (held-out accuracies)          | n ≤ 5·10⁸                 |
| SIR candidates              | 3·10⁹ + [0, n)                                    | n ≤ 10⁹                   |

Everything stays below 2³², where the per-sample generators wrap (`seed % 2**32`).

Step streams are different: all draws of one optimizer step come from `step_generator(seed, step, stream)`,
one stream per consumer (the `STREAM_*` constants), so two consumers with the same seed never share draws.
"""
from __future__ import annotations

import torch

EVALUATION_LIMIT = 5_000_000
SELECTION_BASE = 5_000_000
SPREAD_BASE = 10_000_000
POOL_BASE = 1_000_000_000
ONLINE_BASE = 2_000_000_000
ONLINE_SPAN = 500_000_000
ONLINE_SEED_STRIDE = 104_729_017  # run seeds start their online stream far apart (a prime < ONLINE_SPAN)
FRESH_BASE = 2_500_000_000
CANDIDATE_BASE = 3_000_000_000
SEED_LIMIT = 2**32

MAX_SPREAD_REPEATS = 99
MAX_POOL_SIZE = 100_000
MAX_POOL_ROUNDS = 100
MAX_POOL_SEED = 100

STREAM_PRETRAIN = 1         # EDM pretraining: σ and noise of step k
STREAM_DDO = 2              # DDO / MLE rounds: batch indices, σ and noise of (round, step)
STREAM_CODE_RESET = 3       # VAR tokenizer: dead-code resets
STREAM_VAR_PRETRAIN = 4     # VAR transformer pretraining: batches and label dropout
STREAM_DISCRIMINATOR = 5    # explicit discriminator (guidance baseline): batches, σ and noise
STREAM_IMPLICIT = 7         # implicit-discriminator logits of the refine study


def _checked(name: str, base: int, size: int, capacity: int) -> range:
    if not 0 <= size <= capacity:
        raise ValueError(f"{name}: {size} seeds requested, the range holds at most {capacity} (ddo_lib.seeds)")
    return range(base, base + size)


def evaluation_seeds(offset: int, num_images: int) -> range:
    """offset .. offset + N − 1: the final evaluation (EDM's protocol; offsets 0, 50000, 100000 at scale)."""
    if offset < 0:
        raise ValueError(f"evaluation seed offset must be >= 0, found {offset}")
    return _checked(f"evaluation at offset {offset}", offset, num_images, EVALUATION_LIMIT - offset)


def selection_seeds(num_images: int) -> range:
    """Seeds of the selection metric inside DDO rounds (never used by the final evaluation)."""
    return _checked("selection", SELECTION_BASE, num_images, SPREAD_BASE - SELECTION_BASE)


def spread_seeds(repeat: int, num_images: int) -> range:
    """Seed set `repeat` (0-based) of the evaluation spread: disjoint from every evaluation offset."""
    if not 0 <= repeat < MAX_SPREAD_REPEATS:
        raise ValueError(f"spread repeat must lie in [0, {MAX_SPREAD_REPEATS}), found {repeat}")
    return _checked(f"spread repeat {repeat}", SPREAD_BASE * (repeat + 1), num_images, SPREAD_BASE)


def pool_seeds(seed: int, round_index: int, size: int) -> range:
    """Per-sample seeds of round `round_index`'s fake pool; disjoint across rounds and run seeds."""
    if not (0 <= seed < MAX_POOL_SEED and 0 <= round_index < MAX_POOL_ROUNDS):
        raise ValueError(f"pool seeds: need 0 <= seed < {MAX_POOL_SEED} and 0 <= round < {MAX_POOL_ROUNDS}, "
                         f"found seed {seed}, round {round_index}")
    base = POOL_BASE + seed * 10**7 + round_index * 10**5
    return _checked(f"pool of seed {seed}, round {round_index}", base, size, MAX_POOL_SIZE)


def online_seeds(seed: int, round_index: int, step: int, batch_size: int, steps_per_round: int) -> list[int]:
    """Per-sample seeds of the `batch_size` fakes generated online at step `step` of round `round_index` (the
    official VAR DDO recipe samples its fakes from the frozen ref every step). Fake j of the run is seed
    2·10⁹ + (seed·P + position) mod 5·10⁸, position = (round·steps_per_round + step)·B + j: a pure function of
    (seed, round, step, row), disjoint from every other use, and no seed repeats within a run before 5·10⁸
    fakes. Every rank computes the whole list and samples its own rows."""
    if seed < 0 or round_index < 0 or step < 0 or batch_size < 1 or steps_per_round < 1:
        raise ValueError(f"online seeds: need non-negative seed, round, step and positive sizes, found seed {seed}, "
                         f"round {round_index}, step {step}, batch {batch_size}, steps {steps_per_round}")
    start = (round_index * steps_per_round + step) * batch_size + seed * ONLINE_SEED_STRIDE
    return [ONLINE_BASE + (start + j) % ONLINE_SPAN for j in range(batch_size)]


def fresh_seeds(num_images: int) -> range:
    """Fresh samples of the reference for held-out discriminator accuracies."""
    return _checked("fresh", FRESH_BASE, num_images, CANDIDATE_BASE - FRESH_BASE)


def candidate_seeds(num_images: int) -> range:
    """Candidates that sampling-importance-resampling chooses from."""
    return _checked("candidates", CANDIDATE_BASE, num_images, SEED_LIMIT - CANDIDATE_BASE)


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """The generator for all draws of one optimizer step: a pure function of (seed, step, stream)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + stream * 104_729) % 2**63)


def overlapping(ranges: dict[str, range]) -> list[tuple[str, str]]:
    """The pairs of named ranges that share a seed (empty when all are disjoint)."""
    names = [name for name, r in ranges.items() if len(r)]
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
            if ranges[a].start < ranges[b].stop and ranges[b].start < ranges[a].stop]
