"""What the in-process agents saw, as pure functions over a Recording.

Agent records carry epoch times; everything returned here is relative to the run's t0.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, TypeVar

from harness.analysis.series import percentile, role_pids
from harness.histogram import Histogram
from harness.recording import Recording
from harness.records import AgentGap, AgentHello, AgentProfile, AgentStall, AgentTick, Site

R = TypeVar("R")


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
    timeout_s: float | None = None
    waiting: int = 0  # checkouts waiting for a connection

    @property
    def capacity(self) -> int:
        return self.size + max(self.max_overflow, 0)


_LIBRARY_MARKS = ("/site-packages/", "/dist-packages/", "/lib/python3", "<", "/fastapi_harness_agent/")
_AGENT_THREAD = "/fastapi_harness_agent/core.py"  # its thread's outermost frame of the agent's own: Agent._run


def is_app_path(path: str, app_dir: str = "") -> bool:
    """True for a file of the app's own code: under its directory (when known) and not an installed
    package, the standard library or the agent's copy in the run directory."""
    p = path.replace("\\", "/")
    if any(mark in p for mark in _LIBRARY_MARKS):
        return False
    return not app_dir or p.startswith(app_dir.rstrip("/") + "/")


def records(rec: Recording, kind: type[R]) -> Iterable[tuple[int, R]]:
    """(pid, record) for every agent record of type ``kind``."""
    for pid, rows in rec.agents.items():
        for r in rows:
            if isinstance(r, kind):
                yield pid, r


def loop_lag(rec: Recording) -> dict[int, list[tuple[int, float, float, float]]]:
    """Per worker: (second, p50, p99, max) of event-loop lag in ms."""
    bins: dict[int, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for pid, r in records(rec, AgentTick):
        bins[pid][math.floor(r.t - rec.t0)].extend(r.lag_ms)
    return {
        pid: [(t, percentile(v, 0.5), percentile(v, 0.99), max(v)) for t, v in sorted(by_t.items()) if v]
        for pid, by_t in bins.items()
    }


def stalls(rec: Recording) -> list[Stall]:
    """Every stall the watchdogs reported, in time order."""
    out = []
    for pid, r in records(rec, AgentStall):
        out.append(Stall(pid=pid, t=r.t_start - rec.t0, duration_ms=r.duration_ms, kind=r.kind, site=r.site,
                         stack=r.stack))
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
    for _, r in records(rec, AgentTick):
        if lo <= r.t - rec.t0 < hi:
            cats.update(r.hot_ms if source == "hot" else r.pool_ms)
            frames.update(r.hot_frames_ms if source == "hot" else r.pool_frames_ms)
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
    for pid, r in records(rec, AgentTick):
        tp = r.threadpool
        if tp:
            out[pid].append((r.t - rec.t0, tp.total, tp.borrowed, tp.waiting))
    return dict(out)


def pools(rec: Recording) -> dict[tuple[int, str], list[PoolPoint]]:
    """Per (worker, pool): its gauges and acquire-time histogram each agent tick."""
    out: dict[tuple[int, str], list[PoolPoint]] = defaultdict(list)
    for pid, r in records(rec, AgentTick):
        for p in r.pools:
            if p.size is None or p.checked_out is None:
                continue
            out[(pid, p.id)].append(PoolPoint(
                t=r.t - rec.t0, size=p.size, checked_out=p.checked_out, overflow=p.overflow or 0,
                max_overflow=p.max_overflow or 0, acquire=p.acquire, timeouts=p.timeouts, hold_ms=p.hold_ms,
                returns=p.returns, timeout_s=p.timeout_s, waiting=p.waiting or 0,
            ))
    return dict(out)


def gc_pause_ms(rec: Recording) -> dict[int, float]:
    """GC pause time per second, all workers together (ms)."""
    out: dict[int, float] = defaultdict(float)
    for _, r in records(rec, AgentTick):
        out[math.floor(r.t - rec.t0)] += r.gc_pause_ms
    return dict(sorted(out.items()))


@dataclass
class RouteTotals:
    n: int = 0
    errors: int = 0
    hist: Histogram = field(default_factory=Histogram)


def routes(rec: Recording) -> dict[str, RouteTotals]:
    """Server-side count, errors and latency histogram per route, over the whole run."""
    out: dict[str, dict[str, Any]] = {}
    for _, r in records(rec, AgentTick):
        for route, st in r.routes.items():
            entry = out.setdefault(route, RouteTotals())
            entry.n += st.n
            entry.errors += st.errors
            entry.hist.merge(st.hist)
    return out


def exceptions(rec: Recording) -> dict[str, dict[str, int]]:
    """Exceptions raised through the app, by route and type."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for _, r in records(rec, AgentTick):
        for route, by_type in r.exceptions.items():
            out[route].update(by_type)
    return {k: dict(v) for k, v in out.items()}


def coverage(rec: Recording) -> dict[str, Any]:
    """Which workers streamed, which sampled workers did not, and the gaps agents reported."""
    workers = role_pids(rec, "worker")
    streams = sorted(pid for pid, rows in rec.agents.items() if any(isinstance(r, AgentTick) for r in rows))
    return {
        # an app the harness boots carries the agent unless --no-agent; one already running (--url) only
        # when it was started with the agent's sink (--agent-sink)
        "enabled": bool(rec.scenario.agent.sink) if rec.scenario.url else rec.scenario.app.agent,
        "streams": streams,
        "missing": [pid for pid in workers if pid not in rec.agents],
        "gaps": [{"pid": pid, "lost": r.lost, "error": r.error} for pid, r in records(rec, AgentGap)],
    }


def profiles(rec: Recording) -> list[dict[str, Any]]:
    """Profile windows the workers completed, with their files."""
    return [{"pid": pid, "type": "profile", "id": r.id, "seconds": r.seconds, "files": list(r.files),
             "errors": list(r.errors)} for pid, r in records(rec, AgentProfile)]


def grew(rec: Recording) -> list[tuple[str, int, int, int]]:
    """(file, line, bytes, blocks) of the allocation sites whose memory grew most in the profile
    windows (tracemalloc, when ``[agent] tracemalloc`` was on), all workers together, most first."""
    total: dict[tuple[str, int], list[int]] = {}
    for _, r in records(rec, AgentProfile):
        for path, line, size, n in r.grew:
            acc = total.setdefault((path, line), [0, 0])
            acc[0] += size
            acc[1] += n
    return sorted(((p, line, size, n) for (p, line), (size, n) in total.items()), key=lambda x: -x[2])


def grew_types(rec: Recording) -> list[tuple[str, int]]:
    """(type, objects gained) of the types whose live objects grew most in the profile windows
    (with ``[agent] tracemalloc``), all workers together, most first."""
    total: Counter[str] = Counter()
    for _, r in records(rec, AgentProfile):
        for name, n in r.grew_types:
            total[name] += n
    return total.most_common()


@dataclass(frozen=True)
class Wait:
    """In-flight time spent waiting, of one kind at one app line, over a window."""

    kind: str  # http-pool-acquire | http-response | db-pool-acquire | db-statement | lock | semaphore | ...
    site: str | None  # "file:line function" of the app's own code
    ms: float  # request-milliseconds spent waiting there
    share: float  # of all waiting time in the window


def waits(rec: Recording, window: tuple[float, float] | None = None) -> list[Wait]:
    """Where slow in-flight requests waited, most waited first."""
    lo, hi = window if window else (-math.inf, math.inf)
    total: Counter[str] = Counter()
    for _, r in records(rec, AgentTick):
        if lo <= r.t - rec.t0 < hi:
            total.update(r.waits_ms)
    all_ms = sum(total.values()) or 1.0
    out = []
    for key, ms in total.most_common():
        kind, _, site = key.partition("|")
        out.append(Wait(kind, site or None, round(ms, 1), round(ms / all_ms, 4)))
    return out


def waits_per_second(rec: Recording, kinds: tuple[str, ...]) -> dict[int, float]:
    """Requests waiting on average (request-seconds per second) in waits of ``kinds``, per second."""
    out: dict[int, float] = defaultdict(float)
    for _, r in records(rec, AgentTick):
        ms = sum(v for k, v in r.waits_ms.items() if k.partition("|")[0] in kinds)
        out[math.floor(r.t - rec.t0)] += ms / 1000.0
    return dict(out)


@dataclass(frozen=True)
class LimitPoint:
    """A bounded resource in one tick: its limit, how much of it is used, and how many wait for it."""

    t: float
    limit: int
    used: int
    waiting: int


def http_pools(rec: Recording) -> dict[tuple[int, str], tuple[str, list[LimitPoint]]]:
    """Per (worker, pool): the app line that waited on it, and its gauges each tick."""
    out: dict[tuple[int, str], tuple[str, list[LimitPoint]]] = {}
    for pid, r in records(rec, AgentTick):
        for p in r.http_pools:
            site, pts = out.setdefault((pid, p.id), (p.site, []))
            pts.append(LimitPoint(r.t - rec.t0, p.limit, p.in_use, p.waiting))
    return out


def redis_pools(rec: Recording) -> dict[tuple[int, str], list[LimitPoint]]:
    """Per (worker, redis-py pool): connections in use against max_connections, acquires waiting, each tick."""
    out: dict[tuple[int, str], list[LimitPoint]] = defaultdict(list)
    for pid, r in records(rec, AgentTick):
        for p in r.redis_pools:
            if p.max is not None and p.in_use is not None:
                out[(pid, p.id)].append(LimitPoint(r.t - rec.t0, p.max, p.in_use, p.waiting))
    return dict(out)


def redis_pool_errors(rec: Recording, window: tuple[float, float]) -> dict[str, int]:
    """Acquires from redis-py pools that failed in ``window``, by kind ("pool-timeout", "too-many-connections")."""
    out: Counter[str] = Counter()
    for pid, r in records(rec, AgentTick):
        if window[0] <= r.t - rec.t0 < window[1]:
            for p in r.redis_pools:
                out.update(p.errors)
    return dict(out)


def executors(rec: Recording) -> dict[tuple[int, str], list[LimitPoint]]:
    """Per (worker, executor name): threads busy against max_workers, work queued, each tick."""
    out: dict[tuple[int, str], list[LimitPoint]] = defaultdict(list)
    for pid, r in records(rec, AgentTick):
        for e in r.executors:
            out[(pid, e.name)].append(LimitPoint(r.t - rec.t0, e.max_workers, e.busy, e.queued))
    return dict(out)


def full_seconds(points: Iterable[LimitPoint]) -> dict[int, float]:
    """1.0 for each second in which the resource was all in use with someone waiting, else 0.0."""
    out: dict[int, float] = {}
    for p in points:
        sec = math.floor(p.t)
        out[sec] = max(out.get(sec, 0.0), 1.0 if p.limit and p.used >= p.limit and p.waiting > 0 else 0.0)
    return out


@dataclass(frozen=True)
class CpuHotspots:
    """The loop's (or the whole worker's) CPU by category and by naming frame, and where it came from."""

    categories: dict[str, float]  # ms
    frames: list[tuple[str, str, float]]  # (category, "file:line function", ms), hottest first
    source: str  # "py-spy" (sampled from outside) | "agent" (the in-process SIGPROF sampler)
    samples: int
    base_http_share: float | None = None  # of the busy samples, those under BaseHTTPMiddleware (py-spy only)
    why_not: str = ""  # why py-spy's samples are not the source: its error, or no profile window covered it


def cpu_hotspots(rec: Recording, window: tuple[float, float]) -> CpuHotspots:
    """CPU hotspots in ``window``: from py-spy's samples when it could attach, else from the agent's sampler."""
    from harness.agent.stacks import category

    lo, hi = window
    app_dir = rec.scenario.app.app_dir if not rec.scenario.url else ""
    # a window that overlaps it: the onset may fall a second into the hold a profile began just before
    profiles = [p for p in rec.cpu_profiles if p.samples and p.t_start < hi and p.t_start + p.seconds > lo]
    if not profiles:
        cats, top = hotspots(rec, window)
        errors = [p.error for p in rec.cpu_profiles if p.error]
        return CpuHotspots(cats, top, "agent", 0, why_not=errors[0] if errors else "no profile window covered it")
    cats_ms: Counter[str] = Counter()
    frames_ms: Counter[tuple[str, str]] = Counter()
    base_http_ms = 0.0
    for p in profiles:
        for stack, n in p.stacks:
            ms = n * 1000.0 / p.rate_hz
            if any(f[2] == "_run" and f[0].endswith(_AGENT_THREAD) for f in stack):
                # the agent's own thread (its ticks, its walks): the harness's cost, not the app's
                cat = "idle" if stack and stack[0][0].endswith("threading.py") else "agent"
            else:
                cat = category(list(stack), library=lambda path: not is_app_path(path, app_dir))
            cats_ms[cat] += ms
            if cat != "idle" and any(f[0].endswith(_BASE_HTTP) for f in stack):
                base_http_ms += ms
            named = next((f for f in stack if is_app_path(f[0], app_dir)), stack[0] if stack else None)
            if named is not None:
                frames_ms[(cat, f"{named[0]}:{named[1]} {named[2]}")] += ms
    top = [(c, w, round(ms, 1)) for (c, w), ms in frames_ms.most_common(20)]
    busy = sum(ms for c, ms in cats_ms.items() if c != "idle")
    return CpuHotspots(dict(cats_ms), top, "py-spy", sum(p.samples for p in profiles),
                       round(base_http_ms / busy, 4) if busy else None)


_BASE_HTTP = "/starlette/middleware/base.py"


def app_runtime(rec: Recording) -> tuple[str, dict[str, str]] | None:
    """The Python version and key package versions of the app's own interpreter, as its agent read them."""
    hello = next((r for _, r in records(rec, AgentHello)), None)
    return (hello.python, dict(hello.versions)) if hello else None


def base_http_middleware(rec: Recording) -> tuple[str, ...]:
    """The app's BaseHTTPMiddleware subclasses, as its agents read them at boot."""
    return next((r.middleware for _, r in records(rec, AgentHello) if r.middleware), ())


def db_errors(rec: Recording) -> Counter[str]:
    """Database errors the agents saw through SQLAlchemy, by kind ("too-many-connections" or a type)."""
    out: Counter[str] = Counter()
    for _, r in records(rec, AgentTick):
        out.update(r.db_errors)
    return out


@dataclass
class Statement:
    """One normalized statement sent from one app line, summed over a window."""

    sql: str
    site: str  # "file:line function" of the app's frame that sent it ("" when none was found)
    n: int = 0
    ms: float = 0.0
    hist: Histogram = field(default_factory=Histogram)
    routes: dict[str, list[float]] = field(default_factory=dict)  # route → [calls, ms]


def statements(rec: Recording, window: tuple[float, float] | None = None) -> list[Statement]:
    """The statements the app sent in ``window``, most time first."""
    lo, hi = window if window else (-math.inf, math.inf)
    out: dict[tuple[str, str], Statement] = {}
    for _, r in records(rec, AgentTick):
        if not lo <= r.t - rec.t0 < hi:
            continue
        for s in r.statements:
            st = out.setdefault((s.sql, s.site), Statement(s.sql, s.site))
            st.n += s.n
            st.ms += s.ms
            st.hist.merge(s.hist)
            for route, (n, ms) in s.routes.items():
                acc = st.routes.setdefault(route, [0, 0.0])
                acc[0] += n
                acc[1] += ms
    return sorted(out.values(), key=lambda s: -s.ms)


def statements_per_second(rec: Recording) -> dict[int, dict[tuple[str, str], tuple[int, float]]]:
    """Per second: (statement, site) → (calls, ms)."""
    out: dict[int, dict[tuple[str, str], tuple[int, float]]] = defaultdict(dict)
    for _, r in records(rec, AgentTick):
        sec = out[math.floor(r.t - rec.t0)]
        for s in r.statements:
            n, ms = sec.get((s.sql, s.site), (0, 0.0))
            sec[(s.sql, s.site)] = (n + s.n, ms + s.ms)
    return dict(out)


def route_requests(rec: Recording, window: tuple[float, float] | None = None) -> Counter[str]:
    """Requests the agents counted per route in ``window``."""
    lo, hi = window if window else (-math.inf, math.inf)
    out: Counter[str] = Counter()
    for _, r in records(rec, AgentTick):
        if lo <= r.t - rec.t0 < hi:
            out.update({route: st.n for route, st in r.routes.items()})
    return out


def requests_by_worker(rec: Recording, window: tuple[float, float] | None = None) -> dict[int, int]:
    """Requests each worker's agent counted (in ``window``), every worker that reported included."""
    lo, hi = window if window else (-math.inf, math.inf)
    out: dict[int, int] = {}
    for pid, r in records(rec, AgentTick):
        out.setdefault(pid, 0)
        if lo <= r.t - rec.t0 < hi:
            out[pid] += sum(route.n for route in r.routes.values())
    return out


def instance_of(rec: Recording) -> dict[int, int]:
    """Behind a proxy: each worker's instance (its agent's ``instance`` option)."""
    return {pid: int(r.options["instance"]) for pid, r in records(rec, AgentHello)
            if r.options.get("instance") is not None}


def holds(rec: Recording, window: tuple[float, float] | None = None) -> dict[str, tuple[int, float, float]]:
    """Per holder (a route, else the app line that checked out): connections returned to a SQLAlchemy
    pool in ``window``, the ms they were held, and the ms their statements ran meanwhile."""
    lo, hi = window if window else (-math.inf, math.inf)
    out: dict[str, tuple[int, float, float]] = {}
    for _, r in records(rec, AgentTick):
        if lo <= r.t - rec.t0 < hi:
            for p in r.pools:
                for who, (n, ms, ran) in p.holds.items():
                    k, total, running = out.get(who, (0, 0.0, 0.0))
                    out[who] = (k + n, total + ms, running + ran)
    return out


@dataclass(frozen=True)
class FullCollection:
    pid: int
    t: float  # relative to the run's t0
    ms: float
    collected: int


def full_collections(rec: Recording) -> list[FullCollection]:
    """Every generation-2 garbage collection the agents timed, in time order."""
    return sorted((FullCollection(pid, c.t - rec.t0, c.ms, c.collected)
                   for pid, r in records(rec, AgentTick) for c in r.gc_full), key=lambda c: c.t)


def memory(rec: Recording) -> dict[int, list[tuple[float, int, int | None]]]:
    """Per worker: (t, pymalloc blocks, bytes malloc holds) about once a second."""
    out: dict[int, list[tuple[float, int, int | None]]] = defaultdict(list)
    for pid, r in records(rec, AgentTick):
        if r.memory:
            out[pid].append((r.t - rec.t0, int(r.memory.get("blocks", 0)), r.memory.get("malloc")))
    return dict(out)


def server_ms_per_second(rec: Recording) -> dict[int, float]:
    """Per second: the milliseconds requests spent in the app (server side), all routes and workers."""
    out: dict[int, float] = defaultdict(float)
    for _, r in records(rec, AgentTick):
        out[math.floor(r.t - rec.t0)] += sum(st.hist.total_us() for st in r.routes.values()) / 1000
    return dict(out)
