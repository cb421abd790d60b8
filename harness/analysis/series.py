"""Time series out of a Recording: per-second resource curves by process role, and percentiles.

All functions are pure; times are seconds relative to the run's start instant t0.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Sequence

from harness.recording import Recording


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of ``values`` by linear interpolation; 0.0 when empty."""
    if not values:
        return 0.0
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def load_window(rec: Recording) -> tuple[float, float]:
    """[start, end) seconds during which the drivers were running."""
    secs = rec.seconds
    if not secs:
        return 0.0, 0.0
    return 0.0, secs[-1].t + secs[-1].span


def proc_series(
    rec: Recording, role: str, metric: str, window: tuple[float, float] | None = None
) -> dict[int, list[tuple[int, float]]]:
    """Per process of ``role``: (second, mean of ``metric`` over that second) for each second sampled."""
    lo, hi = window if window else (-math.inf, math.inf)
    bins: dict[int, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in rec.samples:
        if not lo <= s.t < hi:
            continue
        for p in s.procs:
            value = getattr(p, metric)
            if p.role == role and value is not None:
                bins[p.pid][math.floor(s.t)].append(value)
    return {pid: [(t, sum(v) / len(v)) for t, v in sorted(by_t.items())] for pid, by_t in bins.items()}


def tcp_series(rec: Recording, roles: Iterable[str] = ("master", "worker")) -> dict[str, list[tuple[float, int]]]:
    """TCP connections of the server tree by state: state → [(t, count)]."""
    roles = set(roles)
    out: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for s in rec.samples:
        procs = [p for p in s.procs if p.role in roles and p.tcp is not None]
        if not procs:
            continue
        totals: dict[str, int] = defaultdict(int)
        for p in procs:
            for state, n in (p.tcp or {}).items():
                totals[state] += n
        for state, n in totals.items():
            out[state].append((s.t, n))
    return dict(out)


def role_pids(rec: Recording, role: str) -> list[int]:
    """Every PID that was sampled with ``role``, in order of first appearance."""
    seen: dict[int, None] = {}
    for s in rec.samples:
        for p in s.procs:
            if p.role == role:
                seen.setdefault(p.pid, None)
    return list(seen)


def p90_of_busiest(series: dict[int, list[tuple[int, float]]]) -> float:
    """The highest per-process p90 of a per-second series (0.0 when empty)."""
    return max((percentile([v for _, v in pts], 0.9) for pts in series.values()), default=0.0)


def max_of(series: dict[int, list[tuple[int, float]]]) -> float:
    return max((v for pts in series.values() for _, v in pts), default=0.0)
