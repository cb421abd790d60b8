"""Mergeable log-linear latency histograms (HDR-style), in integer microseconds.

Values below 256 µs are exact; above, each power of two is split into 128 buckets,
so a bucket's midpoint is within 0.4 % of any value in it. Memory depends on the
range of values, never on how many were recorded. The driver's hot path uses a table of
``bucket_of`` and, past the table, an inlined copy of it (``hotpath.py``), and a C copy
(``_hotpath.c``); keep them in step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

EXACT = 256  # values below this are their own bucket
HALF_BITS = 7  # 2**7 = 128 buckets per octave above EXACT


def bucket_of(us: int) -> int:
    """The bucket index holding ``us`` microseconds."""
    if us < EXACT:
        return us if us > 0 else 0
    shift = us.bit_length() - 8
    return (shift << HALF_BITS) + (us >> shift)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The [low, high) range of microsecond values a bucket holds."""
    if index < EXACT:
        return index, index + 1
    shift = (index >> HALF_BITS) - 1
    mantissa = index - (shift << HALF_BITS)
    return mantissa << shift, (mantissa + 1) << shift


def bucket_value(index: int) -> float:
    """The representative (midpoint) value of a bucket, in microseconds."""
    lo, hi = bucket_bounds(index)
    return (lo + hi - 1) / 2.0


@dataclass
class Histogram:
    """Counts per bucket plus the exact maximum; merge by adding."""

    counts: dict[int, int] = field(default_factory=dict)
    max_us: int = 0

    def record(self, us: int) -> None:
        b = bucket_of(us)
        self.counts[b] = self.counts.get(b, 0) + 1
        if us > self.max_us:
            self.max_us = us

    def merge(self, other: "Histogram") -> "Histogram":
        for b, c in other.counts.items():
            self.counts[b] = self.counts.get(b, 0) + c
        self.max_us = max(self.max_us, other.max_us)
        return self

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def total_us(self) -> float:
        """The sum of the recorded values (each at its bucket's value)."""
        return sum(bucket_value(b) * c for b, c in self.counts.items())

    def percentile(self, q: float) -> float:
        """The q-quantile (0..1) in microseconds, nearest-rank; 0.0 when empty."""
        n = self.count
        if n == 0:
            return 0.0
        rank = max(1, math.ceil(q * n))
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return min(bucket_value(b), float(self.max_us))
        return float(self.max_us)

    def percentiles_ms(self, qs: Mapping[str, float]) -> dict[str, float]:
        """Named quantiles in milliseconds, e.g. {"p99": 0.99} → {"p99": 12.3}."""
        return {name: round(self.percentile(q) / 1000.0, 3) for name, q in qs.items()}

    def to_json(self) -> dict:
        return {"b": sorted(self.counts.items()), "max": self.max_us}

    @classmethod
    def from_json(cls, data: Mapping | None) -> "Histogram":
        if not data:
            return cls()
        return cls({int(b): int(c) for b, c in data.get("b", ())}, int(data.get("max", 0)))

    @classmethod
    def merged(cls, hists: Iterable["Histogram"]) -> "Histogram":
        out = cls()
        for h in hists:
            out.merge(h)
        return out


STANDARD_QUANTILES = {"p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99, "p999": 0.999}
