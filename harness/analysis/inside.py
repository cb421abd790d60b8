"""What the in-process agents saw, as pure functions over a Recording.

Agent records carry epoch times; everything returned here is relative to the run's t0.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

from harness.analysis.series import percentile, role_pids
from harness.load.histogram import Histogram
from harness.recording import Recording

Site = tuple[str, int, str]  # (file, line, function)


@dataclass(frozen=True)
class Stall:
    pid: int
    t: float
    duration_ms: float
    kind: str  # app-code | blocking-wait | starved
    site: Site | None
    stack: tuple[Site, ...]


@dataclass(frozen=True)
class StallSite:
    site: Site | None
    kind: str
    count: int
    total_ms: float
    longest_ms: float
    share: float  # of all stalled time
    first_t: float


@dataclass(frozen=True)
class PoolPoint:
    t: float
    size: int
    checked_out: int
    overflow: int
    max_overflow: int
    acquire: Histogram
    timeouts: int
    hold_ms: float
    returns: int

    @property
    def capacity(self) -> int:
        return self.size + max(self.max_overflow, 0)


def records(rec: Recording, kind: str) -> Iterable[tuple[int, dict[str, Any]]]:
    """(pid, record) for every agent record of ``kind``."""
    for pid, rows in rec.agents.items():
        for r in rows:
            if r.get("type") == kind:
                yield pid, r


def loop_lag(rec: Recording) -> dict[int, list[tuple[int, float, float, float]]]:
    """Per worker: (second, p50, p99, max) of event-loop lag in ms."""
    bins: dict[int, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for pid, r in records(rec, "tick"):
        bins[pid][math.floor(r["t"] - rec.t0)].extend(r.get("lag_ms", ()))
    return {
        pid: [(t, percentile(v, 0.5), percentile(v, 0.99), max(v)) for t, v in sorted(by_t.items()) if v]
        for pid, by_t in bins.items()
    }


def stalls(rec: Recording) -> list[Stall]:
    """Every stall the watchdogs reported, in time order."""
    out = []
    for pid, r in records(rec, "stall"):
        site = r.get("site")
        out.append(Stall(
            pid=pid, t=r["t_start"] - rec.t0, duration_ms=float(r["duration_ms"]), kind=r.get("class", ""),
            site=(site["file"], int(site["line"]), site["function"]) if site else None,
            stack=tuple((f[0], int(f[1] or 0), f[2]) for f in r.get("stack", ())),
        ))
    return sorted(out, key=lambda s: s.t)


def stall_sites(rec: Recording) -> list[StallSite]:
    """Stalls grouped by call site, most stalled time first."""
    groups: dict[Site | None, list[Stall]] = defaultdict(list)
    for s in stalls(rec):
        groups[s.site].append(s)
    total = sum(s.duration_ms for g in groups.values() for s in g) or 1.0
    out = [
        StallSite(
            site=site, kind=Counter(s.kind for s in g).most_common(1)[0][0], count=len(g),
            total_ms=round(sum(s.duration_ms for s in g), 2), longest_ms=max(s.duration_ms for s in g),
            share=round(sum(s.duration_ms for s in g) / total, 4), first_t=min(s.t for s in g),
        )
        for site, g in groups.items()
    ]
    return sorted(out, key=lambda x: -x.total_ms)


def hotspots(rec: Recording, window: tuple[float, float] | None = None,
             source: str = "hot") -> tuple[dict[str, float], list[tuple[str, str, float]]]:
    """(ms by category, [(category, where, ms)] top frames) of the loop thread's CPU ("hot")
    or of the threadpool threads' busy time ("pool")."""
    lo, hi = window if window else (-math.inf, math.inf)
    cats: Counter[str] = Counter()
    frames: Counter[str] = Counter()
    for _, r in records(rec, "tick"):
        if lo <= r["t"] - rec.t0 < hi:
            cats.update(r.get(f"{source}_ms", {}))
            frames.update(r.get(f"{source}_frames_ms", {}))
    top = [(key.split("|", 1)[0], key.split("|", 1)[1], round(ms, 1)) for key, ms in frames.most_common(20)]
    return dict(cats), top


def busy_shares(categories: dict[str, float]) -> dict[str, float]:
    """Each non-idle category's share of the non-idle samples, largest first."""
    busy = {k: v for k, v in categories.items() if k != "idle"}
    total = sum(busy.values())
    return {k: round(v / total, 4) for k, v in sorted(busy.items(), key=lambda kv: -kv[1])} if total else {}


def threadpool(rec: Recording) -> dict[int, list[tuple[float, int, int, int]]]:
    """Per worker: (t, total tokens, borrowed, tasks waiting) from anyio's default limiter."""
    out: dict[int, list[tuple[float, int, int, int]]] = defaultdict(list)
    for pid, r in records(rec, "tick"):
        tp = r.get("threadpool")
        if tp:
            out[pid].append((r["t"] - rec.t0, int(tp["total"]), int(tp["borrowed"]), int(tp.get("waiting") or 0)))
    return dict(out)


def pools(rec: Recording) -> dict[tuple[int, str], list[PoolPoint]]:
    """Per (worker, pool): its gauges and acquire-time histogram each agent tick."""
    out: dict[tuple[int, str], list[PoolPoint]] = defaultdict(list)
    for pid, r in records(rec, "tick"):
        for p in r.get("pools", ()):
            if "size" not in p:
                continue
            out[(pid, p["id"])].append(PoolPoint(
                t=r["t"] - rec.t0, size=int(p["size"]), checked_out=int(p["checked_out"]),
                overflow=int(p.get("overflow", 0)), max_overflow=int(p.get("max_overflow", 0)),
                acquire=Histogram.from_json(p.get("acquire")), timeouts=int(p.get("timeouts", 0)),
                hold_ms=float(p.get("hold_ms", 0.0)), returns=int(p.get("returns", 0)),
            ))
    return dict(out)


def gc_pause_ms(rec: Recording) -> dict[int, float]:
    """GC pause time per second, all workers together (ms)."""
    out: dict[int, float] = defaultdict(float)
    for _, r in records(rec, "tick"):
        out[math.floor(r["t"] - rec.t0)] += r.get("gc", {}).get("pause_ms", 0.0)
    return dict(sorted(out.items()))


def routes(rec: Recording) -> dict[str, dict[str, Any]]:
    """Server-side count, errors and latency histogram per route, over the whole run."""
    out: dict[str, dict[str, Any]] = {}
    for _, r in records(rec, "tick"):
        for route, st in r.get("routes", {}).items():
            entry = out.setdefault(route, {"n": 0, "errors": 0, "hist": Histogram()})
            entry["n"] += st["n"]
            entry["errors"] += st["errors"]
            entry["hist"].merge(Histogram.from_json(st.get("hist")))
    return out


def exceptions(rec: Recording) -> dict[str, dict[str, int]]:
    """Exceptions raised through the app, by route and type."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for _, r in records(rec, "tick"):
        for route, by_type in r.get("exceptions", {}).items():
            out[route].update(by_type)
    return {k: dict(v) for k, v in out.items()}


def coverage(rec: Recording) -> dict[str, Any]:
    """Which workers streamed, which sampled workers did not, and the gaps agents reported."""
    workers = role_pids(rec, "worker")
    streams = sorted(pid for pid, rows in rec.agents.items() if any(r.get("type") == "tick" for r in rows))
    return {
        "enabled": bool(rec.scenario.get("app", {}).get("agent", True)) and not rec.scenario.get("url"),
        "streams": streams,
        "missing": [pid for pid in workers if pid not in rec.agents],
        "gaps": [{"pid": pid, "lost": r.get("lost", 0), "error": r.get("error", "")} for pid, r in records(rec, "gap")],
    }


def profiles(rec: Recording) -> list[dict[str, Any]]:
    """Profile windows the workers completed, with their files."""
    return [{"pid": pid, **r} for pid, r in records(rec, "profile")]
