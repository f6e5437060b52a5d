"""Every seed range is disjoint from every other for any size the range functions accept."""
import random

import pytest

from ddo_lib import seeds


def all_ranges(rng: random.Random) -> dict[str, range]:
    """One random configuration: evaluation offsets and sizes, selection, spread, pools, fresh, candidates."""
    n_eval = rng.randint(1, 1_000_000)
    offsets = sorted(rng.sample(range(0, seeds.EVALUATION_LIMIT - n_eval), 3))
    repeats = rng.randint(1, seeds.MAX_SPREAD_REPEATS)
    ranges = {f"evaluation@{o}": seeds.evaluation_seeds(o, n_eval) for o in offsets[:1]}
    ranges["selection"] = seeds.selection_seeds(rng.randint(1, seeds.SPREAD_BASE - seeds.SELECTION_BASE))
    ranges.update({f"spread{k}": seeds.spread_seeds(k, min(n_eval, seeds.SPREAD_BASE)) for k in range(repeats)})
    run_seed, rounds, size = rng.randrange(seeds.MAX_POOL_SEED), rng.randint(1, seeds.MAX_POOL_ROUNDS), \
        rng.randint(1, seeds.MAX_POOL_SIZE)
    ranges.update({f"pool{run_seed}/{k}": seeds.pool_seeds(run_seed, k, size) for k in range(rounds)})
    ranges.update({f"pool{run_seed + 1}/0": seeds.pool_seeds((run_seed + 1) % seeds.MAX_POOL_SEED, 0, size)})
    ranges["fresh"] = seeds.fresh_seeds(rng.randint(1, seeds.CANDIDATE_BASE - seeds.FRESH_BASE))
    ranges["candidates"] = seeds.candidate_seeds(rng.randint(1, seeds.SEED_LIMIT - seeds.CANDIDATE_BASE))
    return ranges


def test_ranges_are_disjoint_for_any_accepted_sizes():
    for trial in range(200):
        ranges = all_ranges(random.Random(trial))
        assert seeds.overlapping(ranges) == [], f"trial {trial}"
        assert max(r.stop for r in ranges.values()) <= seeds.SEED_LIMIT   # generators wrap at 2**32


def test_extreme_sizes_stay_disjoint():
    ranges = {"evaluation": seeds.evaluation_seeds(0, seeds.EVALUATION_LIMIT),
              "selection": seeds.selection_seeds(seeds.SPREAD_BASE - seeds.SELECTION_BASE),
              "last spread": seeds.spread_seeds(seeds.MAX_SPREAD_REPEATS - 1, seeds.SPREAD_BASE),
              "first pool": seeds.pool_seeds(0, 0, seeds.MAX_POOL_SIZE),
              "last pool": seeds.pool_seeds(seeds.MAX_POOL_SEED - 1, seeds.MAX_POOL_ROUNDS - 1, seeds.MAX_POOL_SIZE),
              "online": range(seeds.ONLINE_BASE, seeds.ONLINE_BASE + seeds.ONLINE_SPAN),
              "fresh": seeds.fresh_seeds(seeds.CANDIDATE_BASE - seeds.FRESH_BASE),
              "candidates": seeds.candidate_seeds(seeds.SEED_LIMIT - seeds.CANDIDATE_BASE)}
    assert seeds.overlapping(ranges) == []


def test_online_fake_seeds_stay_in_their_range_and_do_not_repeat_within_a_run():
    steps, batch = 7, 5
    run = [s for k in range(3) for step in range(steps) for s in seeds.online_seeds(2, k, step, batch, steps)]
    assert len(set(run)) == len(run) == 3 * steps * batch
    assert all(seeds.ONLINE_BASE <= s < seeds.ONLINE_BASE + seeds.ONLINE_SPAN for s in run)
    assert seeds.online_seeds(2, 1, 3, batch, steps) == run[(steps + 3) * batch:(steps + 4) * batch]
    assert set(seeds.online_seeds(3, 0, 0, batch, steps)).isdisjoint(run)     # another run seed, another stream
    late = seeds.online_seeds(0, 0, seeds.ONLINE_SPAN // 4 - 1, 8, 1)       # wraps inside the range
    assert all(seeds.ONLINE_BASE <= s < seeds.ONLINE_BASE + seeds.ONLINE_SPAN for s in late)
    with pytest.raises(ValueError, match="online seeds"):
        seeds.online_seeds(0, 0, -1, 4, 10)


def test_sizes_beyond_a_range_are_refused():
    with pytest.raises(ValueError, match="at most"):
        seeds.evaluation_seeds(100_000, seeds.EVALUATION_LIMIT)
    with pytest.raises(ValueError, match="at most"):
        seeds.spread_seeds(0, seeds.SPREAD_BASE + 1)
    with pytest.raises(ValueError, match="spread repeat"):
        seeds.spread_seeds(seeds.MAX_SPREAD_REPEATS, 10)
    with pytest.raises(ValueError, match="at most"):
        seeds.pool_seeds(0, 0, seeds.MAX_POOL_SIZE + 1)
    with pytest.raises(ValueError, match="round"):
        seeds.pool_seeds(0, seeds.MAX_POOL_ROUNDS, 10)


def test_overlap_check_finds_a_shared_seed():
    assert seeds.overlapping({"a": range(0, 10), "b": range(9, 20), "c": range(20, 30)}) == [("a", "b")]
    assert seeds.overlapping({"long": range(0, 100), "x": range(10, 11), "y": range(50, 60)}) == \
        [("long", "x"), ("long", "y")]


def test_default_profile_seeds_are_unchanged():
    """The committed metrics were produced with these seeds: evaluation 0.., spread 10^7·(k+1), pools 10^9 + …"""
    assert seeds.evaluation_seeds(0, 2000) == range(0, 2000)
    assert seeds.spread_seeds(2, 2000) == range(30_000_000, 30_002_000)
    assert seeds.selection_seeds(500) == range(5_000_000, 5_000_500)
    assert seeds.pool_seeds(1, 3, 2000) == range(1_010_300_000, 1_010_302_000)


def test_step_streams_are_distinct():
    streams = [value for name, value in vars(seeds).items() if name.startswith("STREAM_")]
    assert len(streams) == len(set(streams))
    a = seeds.step_generator(0, 5, seeds.STREAM_DDO).initial_seed()
    b = seeds.step_generator(0, 5, seeds.STREAM_PRETRAIN).initial_seed()
    assert a != b
