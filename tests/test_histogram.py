from __future__ import annotations

import numpy as np
import pytest

from harness.histogram import STANDARD_QUANTILES, Histogram, bucket_bounds, bucket_of


def test_buckets_tile_the_range():
    prev_hi = 0
    for index in range(0, 5000):
        lo, hi = bucket_bounds(index)
        assert lo == prev_hi, index
        assert bucket_of(lo) == index and bucket_of(hi - 1) == index
        assert (hi - lo) / lo <= 1 / 128 if lo >= 256 else hi - lo == 1
        prev_hi = hi


@pytest.mark.parametrize("seed,dist", [(1, "lognormal"), (2, "exponential"), (3, "bimodal")])
def test_percentiles_within_one_percent_of_numpy(seed, dist):
    rng = np.random.default_rng(seed)
    if dist == "lognormal":
        data = rng.lognormal(mean=9, sigma=1.2, size=200_000)
    elif dist == "exponential":
        data = rng.exponential(scale=20_000, size=200_000) + 300
    else:
        data = np.concatenate([rng.normal(2_000, 100, 150_000), rng.normal(900_000, 50_000, 50_000)])
    values = np.maximum(data, 1).astype(np.int64)
    h = Histogram()
    for v in values.tolist():
        h.record(v)
    assert h.count == len(values)
    for q in list(STANDARD_QUANTILES.values()) + [0.25, 0.75]:
        exact = np.percentile(values, q * 100, method="inverted_cdf")
        assert h.percentile(q) == pytest.approx(exact, rel=0.01), q
    assert h.max_us == values.max()


def test_merge_equals_recording_everything():
    rng = np.random.default_rng(7)
    parts = [rng.integers(1, 5_000_000, size=20_000) for _ in range(4)]
    merged = Histogram.merged(_hist(p) for p in parts)
    whole = _hist(np.concatenate(parts))
    assert merged.counts == whole.counts and merged.max_us == whole.max_us


def test_json_round_trip_and_bounded_size():
    h = _hist(np.random.default_rng(3).integers(1, 60_000_000, size=100_000))
    assert Histogram.from_json(h.to_json()) == h
    assert len(h.counts) < 4000  # memory depends on the value range, not the count


def test_empty():
    assert Histogram().percentile(0.99) == 0.0
    assert Histogram.from_json(None).count == 0


def _hist(values) -> Histogram:
    h = Histogram()
    for v in values.tolist():
        h.record(int(v))
    return h


def test_the_four_bucket_functions_are_one_contract():
    """histogram.bucket_of, the driver's hot path in Python and in C, and the agent's copy (stdlib-only)."""
    from harness.agent.hist import Histogram as AgentHistogram
    from harness.load import _hotpath, hotpath

    rng = np.random.default_rng(7)
    values = [0, 1, 255, 256, 257, 16_383, 16_384, 65_535, 65_536, 2**40, 2**62,
              *rng.integers(0, 2**40, 5000).tolist(), *rng.integers(0, 70_000, 5000).tolist()]
    expected = [bucket_of(v) for v in values]
    assert [_hotpath.bucket_of(v) for v in values] == expected
    assert [hotpath.hot_bucket(v) for v in values] == expected
    agent = []
    for v in values:
        h = AgentHistogram()
        h.record(v)
        agent.append(h.to_json()["b"][0][0])
    assert agent == expected
    assert max(expected) < hotpath.HIST_SIZE
