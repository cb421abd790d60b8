"""A minimal log-linear histogram in the stream format's buckets (integer microseconds)."""

from __future__ import annotations

from typing import Any, Dict, List


def bucket_of(us: int) -> int:
    """Bucket index: exact below 256 µs, 128 buckets per power of two above."""
    if us < 256:
        return max(us, 0)
    shift = us.bit_length() - 8
    return (shift << 7) + (us >> shift)


def _bucket_table(n: int) -> List[int]:
    """``bucket_of`` for 0 .. n-1, one shared int object per bucket (the driver's table has a
    twin in harness/load/hotpath.py; this package may import only the standard library)."""
    canonical: Dict[int, int] = {}
    return [canonical.setdefault(b, b) for b in map(bucket_of, range(n))]


TABLE = _bucket_table(1 << 14)  # below 16.4 ms a bucket is one list index: TABLE[us]
FAST = len(TABLE)


class Histogram:
    __slots__ = ("counts", "max_us")

    def __init__(self) -> None:
        self.counts: Dict[int, int] = {}
        self.max_us = 0

    def record(self, us: int) -> None:
        b = TABLE[us] if 0 <= us < FAST else bucket_of(us)
        self.counts[b] = self.counts.get(b, 0) + 1
        if us > self.max_us:
            self.max_us = us

    def to_json(self) -> Dict[str, Any]:
        return {"b": sorted(self.counts.items()), "max": self.max_us}
