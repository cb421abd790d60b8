"""Detectors: pure functions ``(Context) -> list[Finding]``, one per kind in the verdict vocabulary.

Each states its rule with the numbers it saw. Thresholds are about the *kind* of signal (a
worker at 80 % of a core is busy; a loop 50 ms late is blocked), never about one endpoint's
numbers: apps other than sample_app are diagnosed with them. A detector returns at most one
finding; ``CAUSAL_ORDER`` is how ties at the same onset are broken.
"""

from __future__ import annotations

import importlib
import statistics
from dataclasses import dataclass
from typing import Any, Callable

from harness.analysis import inside
from harness.analysis.findings import CallSite, Finding
from harness.analysis.knee import Knee
from harness.analysis.stages import Stage, Timeline, stage_at, sustained_onset
from harness.errors import ConfigError
from harness.histogram import Histogram
from harness.recording import Recording
from harness.records import DriverSecond

CAUSAL_ORDER = ("client-errors", "load-generator-saturated", "host-contended", "gc-pauses", "event-loop-blocked",
                "cpu-saturated", "threadpool-exhausted", "db-slow-queries", "db-pool-exhausted",
                "http-client-pool-exhausted", "redis-pool-exhausted", "redis-saturated", "proxy-saturated",
                "lock-contention", "fd-exhausted",
                "memory-growth", "server-errors")

DRIVER_BUSY = 0.90  # cores, per driver process (each is one thread)
LATE_SHARE = 0.05  # of sends more than 10 ms behind schedule
LOOP_BLOCKED_MS = 50.0  # heartbeat p99 lateness that no healthy loop shows
LOOP_IDLE_CPU = 0.60  # a worker using less than this while its loop is late is waiting, not computing
WORKER_BUSY = 0.80  # cores: a worker process is CPU-bound
HOST_BUSY = 0.95  # share of all cores
FOREIGN_CORES = 0.5  # CPU used on the host by processes outside the run that starves it
RUNQ_STARVED = 0.10  # seconds per second a worker's threads waited runnable for a CPU
PLATEAU_CPU = 0.70  # cores: a worker whose CPU stops rising here while the load rises is CPU-bound
PLATEAU_LOAD_RISE = 1.2  # the next stage offers at least this much more ...
PLATEAU_CPU_RISE = 1.05  # ... while the busiest worker's CPU rises by less than this
FD_NEAR = 0.80  # of RLIMIT_NOFILE
POOL_WAIT_MS = 10.0  # acquire-time p99 that means requests queue for connections
ERROR_RATE = 0.01
CLIENT_ERROR_SHARE = 0.5  # of the responses 4xx: the load asked for what the app does not serve
MEMORY_SLOPE_MB_S = 0.5
MEMORY_MIN_SECONDS = 8
HEAP_SHARE = 0.5  # of the RSS growth that live allocations account for, for the growth to be the heap's
BLOCK_BYTES = 64  # a pymalloc block's size on average (they hold objects of up to 512 bytes)
N_PLUS_ONE_REPEATS = 5  # one statement this many times per request (Sentry's N+1 detector: more than 5) ...
N_PLUS_ONE_MS = 50.0  # ... taking this long per request altogether
SLOW_GROWTH = 1.5  # a statement's mean time past the onset over its time at the lowest load
HELD_MIN_MS = 5.0  # a connection held at least this long at a time ...
HELD_RATIO = 3.0  # ... and this many times longer than its statements ran is held across something else ...
SLOW_SHARE = 1 / HELD_RATIO  # ... else its connections are busy running statements (the rest is the driver's
# hand-offs and the reset on return); of server-side time when no pool is seen
GC_SHARE = 0.5  # of the stalled time that full collections overlap
GC_BEFORE = 0.25  # full collections' ms per request below the onset, against past it: less is the backlog's
BASE_HTTP_SHARE = 0.2  # of the busy CPU under BaseHTTPMiddleware for the framework's cost to be named as it


@dataclass(frozen=True)
class Context:
    rec: Recording
    tl: Timeline
    stages: list[Stage]
    knee: Knee | None
    slo_p99_ms: float = 0.0
    slo_errors: float = 0.0
    cores: int = 1
    workers: int = 1
    calibration: tuple[tuple[float, float], ...] = ()  # diagnose mode's bursts: no onset may come from them

    @property
    def knee_end(self) -> float | None:
        """When the stage past the knee ended (None without a knee)."""
        return next((s.t_end for s in self.stages if self.knee and s.index == self.knee.stage), None)

    def steady(self, series: dict[int, float]) -> dict[int, float]:
        """``series`` without the seconds of calibration bursts."""
        return {t: v for t, v in series.items() if not any(lo <= t < hi for lo, hi in self.calibration)}


def _finding(ctx: Context, kind: str, onset: float | None, **kw: Any) -> Finding:
    stage = stage_at(ctx.stages, onset) if onset is not None else None
    return Finding(kind=kind, onset_t=onset, onset_offered_rps=round(stage.load, 1) if stage else None,
                   onset_users=stage.users if stage else None, **kw)


def _site(file: str | None, line: int | None, function: str | None) -> CallSite | None:
    return CallSite(file, int(line or 0), function or "") if file else None


def _frame_site(ctx: Context, where: str) -> CallSite | None:
    """The call site a hotspot frame ("file:line function") names, when it is the app's own code."""
    place, _, func = where.rpartition(" ")
    path, _, line = place.rpartition(":")
    if not inside.is_app_path(path, ctx.rec.scenario.app.app_dir if not ctx.rec.scenario.url else ""):
        return None
    return _site(path, int(line) if line.isdigit() else 0, func)


def _mean_over(series: dict[int, float], start: float | None) -> float:
    xs = [v for t, v in series.items() if start is None or t >= start]
    return sum(xs) / len(xs) if xs else 0.0


# ---------------------------------------------------------------------------- validity


def _node_of(ctx: Context, driver: int) -> str:
    """"load node N (host)" for a driver of a --cluster run, else ""."""
    cluster = ctx.rec.run.cluster or {}
    node = next((n for n in cluster.get("nodes", ()) if driver in n["drivers"]), None)
    return f"load node {node['node']} ({node['host']})" if node else ""


def _load_node(ctx: Context, driver: int) -> str:
    """" on load node N (host)" for a driver of a --cluster run, else ""."""
    node = _node_of(ctx, driver)
    return f" on {node}" if node else ""


def _cluster_driver_busy(ctx: Context) -> Finding | None:
    """A --cluster run: each driver's CPU as it reported it (the harness cannot sample another node's
    processes), per driver, naming the load node of the first to stay at its core."""
    series: dict[int, dict[int, float]] = {}
    for r in ctx.rec.driver_records:
        if isinstance(r, DriverSecond):
            series.setdefault(r.driver, {})[r.t] = r.cpu
    onsets = [(onset, k) for k, cpu in series.items()
              if (onset := sustained_onset(cpu, lambda v: v >= DRIVER_BUSY)) is not None]
    if not onsets:
        return None
    onset, k = min(onsets)
    return _finding(ctx, "load-generator-saturated", onset,
                    rule=f"driver {k}{_load_node(ctx, k)} used ≥ {DRIVER_BUSY:.0%} of its core from t={onset}s "
                         f"(peak {max(series[k].values()):.2f})",
                    summary=f"the load generator{_load_node(ctx, k)} could not keep up",
                    recommendation="give that node's drivers more cores (--drivers per node), or more nodes "
                                   "(--nodes); this run says nothing about the app",
                    confidence=0.9)


def detect_load_generator(ctx: Context) -> list[Finding]:
    tl = ctx.tl
    if ctx.rec.run.cluster:
        found = _cluster_driver_busy(ctx)
        if found is not None:
            return [found]
    onset = sustained_onset(tl.driver_cpu, lambda v: v >= DRIVER_BUSY)
    if onset is not None:
        return [
            _finding(
                ctx,
                "load-generator-saturated",
                onset,
                rule=f"a driver process used ≥ {DRIVER_BUSY:.0%} of its core from t={onset}s "
                f"(peak {max(tl.driver_cpu.values()):.2f})",
                recommendation="give the load generator more cores (--drivers N) or run it on another machine; "
                "this run says nothing about the app",
                confidence=0.9,
            )
        ]
    secs = ctx.rec.seconds
    sent, late = sum(s.sent for s in secs), sum(s.late for s in secs)
    dropped = sum(s.dropped for s in secs)
    if sent and (late / sent >= LATE_SHARE or dropped):
        queued = max((s.inflight for s in secs), default=0)
        server_idle = _server_idle(ctx)
        if server_idle:
            first = next((s.t for s in secs if s.late or s.dropped), None)
            behind: dict[str, int] = {}  # a --cluster run: which load nodes fell behind
            for r in ctx.rec.driver_records:
                where = _node_of(ctx, r.driver) if isinstance(r, DriverSecond) and (r.late or r.dropped) else ""
                if where:
                    behind[where] = behind.get(where, 0) + r.late + r.dropped
            return [_finding(ctx, "load-generator-saturated", first,
                             rule=f"{late:,} of {sent:,} sends left > 10 ms late and {dropped:,} were dropped "
                                  f"while the server was idle ({server_idle})",
                             evidence=(f"up to {queued} requests in flight",
                                       *(f"{where}: {n:,} late or dropped" for where, n in behind.items())),
                             recommendation="the driver could not send on schedule: raise [load] connections "
                                            "(the cap on open connections) or --drivers; the app was not the limit",
                             confidence=0.8)]
    return []


def detect_client_errors(ctx: Context) -> list[Finding]:
    """Most responses were 4xx (a mistyped path, a missing header or body): the load exercised the
    app's error handling, not what it was meant to."""
    secs = ctx.rec.seconds
    answered = sum(s.outcomes.get(k, 0) for s in secs for k in ("ok", "4xx", "5xx"))
    refused = sum(s.outcomes.get("4xx", 0) for s in secs)
    if not answered or refused < CLIENT_ERROR_SHARE * answered:
        return []
    statuses: dict[tuple[str, int], int] = {}
    for done in ctx.rec.driver_records:
        for label, status, n in getattr(done, "statuses", ()):
            if status < 500:
                statuses[label, status] = statuses.get((label, status), 0) + n
    top = sorted(statuses.items(), key=lambda kv: -kv[1])[:3]
    named = ", ".join(f"{status} for {label} ({n:,})" for (label, status), n in top)
    first = next((s.t for s in secs if s.outcomes.get("4xx")), None)
    return [_finding(
        ctx, "client-errors", first,
        rule=f"{refused:,} of {answered:,} responses ({refused / answered:.0%}) were 4xx"
             + (f": {named}" if named else ""),
        summary="the app answered most requests with " + (f"{top[0][0][1]} ({top[0][0][0]})" if top else "4xx"),
        recommendation="check each request's method, path, headers and body against the app's routes (a 404 is "
                       "a path it does not serve: --get PATH, [[requests]] path); this run measured the app's "
                       "error responses, not its work",
        confidence=0.95)]


def detect_host_contended(ctx: Context) -> list[Finding]:
    tl = ctx.tl
    # what the host did after the knee (the profile hold, say) cannot have caused it
    until = ctx.knee_end + 1 if ctx.knee_end is not None else float("inf")
    starved = {t: v for t, v in tl.foreign_cpu.items()
               if t <= until and (tl.host_cpu.get(t, 0.0) >= HOST_BUSY or tl.runq.get(t, 0.0) >= RUNQ_STARVED)}
    onset = sustained_onset(starved, lambda v: v >= FOREIGN_CORES)
    if onset is None:
        return []
    after = [v for t, v in starved.items() if t >= onset]
    names: dict[str, list[float]] = {}
    for s in ctx.rec.samples:
        if s.t >= onset and s.foreign:
            for f in s.foreign:
                names.setdefault(f"{f.name} (pid {f.pid})", []).append(f.cpu)
    top = sorted(((statistics.mean(v), k) for k, v in names.items()), reverse=True)[:3]
    runq = max((v for t, v in tl.runq.items() if t >= onset), default=0.0)
    steals = [s.steal for s in ctx.rec.samples if s.steal is not None and s.t >= onset and s.t <= until]
    steal = statistics.mean(steals) if steals else 0.0
    stolen = (f"; {steal:.1f} cores of it were steal time: the hypervisor ran other machines on this one's CPUs"
              if steal >= FOREIGN_CORES / 2 else "")
    return [_finding(
        ctx, "host-contended", onset,
        rule=f"processes outside the run used {statistics.mean(after):.1f} cores of this host's {ctx.cores} from "
             f"t={onset}s while the host was ≥ {HOST_BUSY:.0%} busy or the workers waited for a CPU "
             f"(up to {runq:.2f} s per second){stolen}",
        evidence=tuple(f"{name}: {cpu:.2f} cores" for cpu, name in top),
        summary=("the hypervisor gave this machine's CPUs to other machines (steal time)" if stolen and not top else
                 "the host was busy with other processes" + (f" ({', '.join(n for _, n in top)})" if top else "")),
        recommendation="run on a quiet host (stop what else runs here, or give the app cores of its own); "
                       "this run says nothing about the app",
        confidence=0.9)]


def host_full_by_run(ctx: Context, t: int) -> bool:
    """The host's cores were all busy in second ``t``, and with the run's own processes."""
    tl = ctx.tl
    return tl.host_cpu.get(t, 0.0) >= HOST_BUSY and tl.foreign_cpu.get(t, 0.0) < FOREIGN_CORES


def _server_idle(ctx: Context) -> str:
    """A description when the server had capacity to spare (no resource near saturation), else ''."""
    cpu = max(ctx.tl.worker_cpu.values(), default=0.0)
    lag = max(ctx.tl.lag_p99_ms.values(), default=0.0)
    tp = [pt for pts in inside.threadpool(ctx.rec).values() for pt in pts]
    pools = [p for pts in inside.pools(ctx.rec).values() for p in pts]
    if (
        cpu >= 0.5
        or lag >= LOOP_BLOCKED_MS
        or any(b >= t and w for _, t, b, w in tp)
        or any(p.checked_out >= p.capacity for p in pools)
    ):
        return ""
    return f"worker CPU ≤ {cpu:.2f} cores, loop lag p99 ≤ {lag:.0f} ms, no pool or threadpool full"


# ---------------------------------------------------------------------------- the app


def _gc_grew_with_backlog(ctx: Context, collections: list[Any], onset: float) -> bool:
    """Full collections cost the loop less than GC_BEFORE of their time per request, past the onset,
    while the load was below it: they grew long only once requests queued (a full collection walks
    every live object, and a backlog is live objects). An app whose own heap makes them long pays
    about as much per request at every load."""
    served = {s.t: sum(s.outcomes.values()) for s in ctx.rec.seconds}
    before = sum(n for t, n in served.items() if 0 <= t < onset - 1)
    after = sum(n for t, n in served.items() if t >= onset - 1)
    if not before or not after:
        return False  # saturated from the start: nothing to compare with
    per_before = sum(c.ms for c in collections if 0 <= c.t < onset - 1) / before
    per_after = sum(c.ms for c in collections if c.t >= onset - 1) / after
    return per_before < GC_BEFORE * per_after


def detect_gc_pauses(ctx: Context) -> list[Finding]:
    """The loop is late, and full (generation-2) garbage collections cover most of its stalled time."""
    collections = inside.full_collections(ctx.rec)
    if not collections:
        return []
    lagging = {t: v for t, v in ctx.tl.lag_p99_ms.items() if not host_full_by_run(ctx, t)}
    onset = sustained_onset(ctx.steady(lagging), lambda v: v >= LOOP_BLOCKED_MS)
    if onset is None:
        return []
    stalls = [st for st in inside.stalls(ctx.rec) if st.t >= onset - 1]
    stalled = sum(st.duration_ms for st in stalls)
    covered = sum(
        max(0.0, min(st.t + st.duration_ms / 1000, c.t + c.ms / 1000) - max(st.t, c.t)) * 1000
        for st in stalls for c in collections if c.pid == st.pid
    )
    if not stalled or covered < GC_SHARE * stalled:
        return []
    past = [c for c in collections if c.t >= onset - 1]
    if _gc_grew_with_backlog(ctx, collections, onset):
        return []  # the queue's objects made the collections long: the overload's symptom, not its cause
    longest = max(c.ms for c in past) if past else 0.0
    per_s = len(past) / max(1.0, max(ctx.tl.lag_p99_ms) - onset + 1)
    return [_finding(
        ctx, "gc-pauses", onset,
        rule=f"loop lag p99 ≥ {LOOP_BLOCKED_MS:.0f} ms from t={onset}s, and full garbage collections covered "
             f"{covered / stalled:.0%} of the stalled time ({covered:.0f} of {stalled:.0f} ms)",
        evidence=(f"{len(past)} full (generation-2) collections, {per_s:.1f} a second, longest {longest:.0f} ms, "
                  f"{sum(c.ms for c in past):.0f} ms in all",),
        share=round(covered / stalled, 3),
        summary=f"full garbage collections stall the event loop (up to {longest:.0f} ms each)",
        recommendation="call `gc.freeze()` once the app has started (start-up objects leave the collector's "
                       "view), raise the thresholds (`gc.set_threshold(...)`) so full collections run less often, "
                       "and keep fewer long-lived container objects (caches of dicts and lists) in the process",
        confidence=0.85)]


def detect_event_loop_blocked(ctx: Context) -> list[Finding]:
    tl = ctx.tl
    # a loop late while the run's own processes fill the host is starved of CPU, not blocked
    lagging = {t: v for t, v in tl.lag_p99_ms.items() if not host_full_by_run(ctx, t)}
    onset = sustained_onset(lagging, lambda v: v >= LOOP_BLOCKED_MS)
    if onset is None:
        return []
    cpu = _mean_over({t: v for t, v in tl.worker_cpu.items() if tl.lag_p99_ms.get(t, 0) >= LOOP_BLOCKED_MS}, onset)
    if cpu >= LOOP_IDLE_CPU:
        return []  # a busy loop is late because it computes: that is cpu-saturated's call
    sites = [s for s in inside.stall_sites(ctx.rec) if s.site]
    top = next((s for s in sites if s.kind == "blocking-wait"), sites[0] if sites else None)
    lag = max(tl.lag_p99_ms.values())
    site = _site(*top.site) if top and top.site else None
    where = f"`{top.site[2]}()` at {top.site[0]}:{top.site[1]}" if top and top.site else "code the agent could not see"
    return [
        _finding(
            ctx,
            "event-loop-blocked",
            onset,
            rule=f"loop lag p99 ≥ {LOOP_BLOCKED_MS:.0f} ms from t={onset}s (worst {lag:.0f} ms) while the busiest "
            f"worker used {cpu:.2f} cores",
            evidence=tuple(
                f"{s.count} stalls, {s.total_ms:.0f} ms ({s.share:.0%} of stalled time) in {s.site[2]}() at "
                f"{s.site[0]}:{s.site[1]} [{s.kind}]"
                for s in sites[:3]
            ),
            call_site=site,
            share=top.share if top else None,
            summary=f"the event loop is blocked by {where}" + (f" — {top.share:.0%} of stalled time" if top else ""),
            recommendation=(
                f"the call at {top.site[0]}:{top.site[1]} blocks the loop: use its async form "
                "(e.g. `await asyncio.sleep`, an async client or driver), or run it in a thread with "
                "`await anyio.to_thread.run_sync(...)` (or make the endpoint a plain `def`)"
                if top and top.site
                else "the stalls' stacks had no frame of the app's own: see where the loop thread was in the "
                     "workers' profiles (the report's Profiles)" if ctx.rec.run.mode == "diagnose"
                else "the stalls' stacks had no frame of the app's own: `fastapi-harness diagnose` profiles every "
                     "worker at the knee"
            ),
            confidence=0.9 if top and top.share >= 0.5 else 0.6,
        )
    ]


HOTSPOT_ADVICE = {
    "json-serialization": "serialization dominates: return Pydantic models with a response_model (serialized in "
                          "Rust), use ORJSONResponse, or cache the encoded payload",
    "logging": "logging dominates: lower the level on the hot path, log once per request, or hand records to a "
               "QueueHandler so the loop does not format and write them",
    "validation": "validation dominates: validate less per request (smaller models, `model_construct` for trusted "
                  "data) or cache validated objects",
    "db": "database driver code dominates: fetch fewer rows/columns, batch queries, or move work into SQL",
    "app-code": "the app's own code dominates: make the call site's function cheaper (the evidence lists the "
                "hottest frames), or move CPU-heavy work to a process pool "
                "(`loop.run_in_executor(ProcessPoolExecutor())`)",
    "framework": "per-request framework work dominates: the app does little, the server stack is the cost",
    "db-round-trips": "the same statement is sent once per row (N+1): load the rows in one query — a JOIN, "
                      "SQLAlchemy's `selectinload()`/`joinedload()`, or `WHERE id IN (...)` — instead of one per row",
}


@dataclass(frozen=True)
class RoundTrips:
    """A statement repeated within requests of one route (an N+1)."""

    statement: inside.Statement
    route: str
    per_request: float
    ms_per_request: float

    def line(self) -> str:
        return (f"`{self.statement.sql}` sent {self.per_request:.1f} times per `{self.route}` request "
                f"({self.ms_per_request:.0f} ms per request) from {self.statement.site or 'an unknown line'}")


def _round_trips(ctx: Context, window: tuple[float, float]) -> RoundTrips | None:
    """The statement sent most often per request of a route in ``window``, when it is an N+1: at
    least N_PLUS_ONE_REPEATS times and N_PLUS_ONE_MS per request."""
    served = inside.route_requests(ctx.rec, window)
    best = None
    for st in inside.statements(ctx.rec, window):
        for route, (n, ms) in st.routes.items():
            if served.get(route):
                trips = RoundTrips(st, route, n / served[route], ms / served[route])
                if (trips.per_request >= N_PLUS_ONE_REPEATS and trips.ms_per_request >= N_PLUS_ONE_MS
                        and (best is None or trips.ms_per_request > best.ms_per_request)):
                    best = trips
    return best


def detect_cpu_saturated(ctx: Context) -> list[Finding]:
    tl = ctx.tl
    onset = sustained_onset(tl.worker_cpu, lambda v: v >= WORKER_BUSY)
    # every core busy with the run's own processes (workers, drivers, the database): the host is full
    full = {t: v for t, v in tl.host_cpu.items() if host_full_by_run(ctx, t)}
    host_onset = sustained_onset(full, lambda v: v >= HOST_BUSY)
    plateau = _cpu_plateau(ctx.stages)
    if onset is None and host_onset is None and plateau is None:
        return []
    start = min(t for t in (onset, host_onset, plateau[0] if plateau else None) if t is not None)
    hot = inside.cpu_hotspots(ctx.rec, (start, float("inf")))
    categories, top = hot.categories, hot.frames
    shares = inside.busy_shares(categories)
    hotspot = next((k for k in shares if k != "agent"), None)  # the agent's own thread is evidence, not a cause
    frame = next(((c, w, ms) for c, w, ms in top if c == hotspot), None)
    # a call site is the app's own frame; a library's hottest frame is context, in the evidence
    site = _frame_site(ctx, frame[1]) if frame else None
    if _cpu_is_the_databases(ctx, start, hotspot) and _slow_statement(ctx) is not None:
        return []  # the CPU is the database's own: db-slow-queries says so
    trips = _round_trips(ctx, (start, float("inf")))
    if trips is not None:  # one statement per row: the round trips are the cost, wherever the CPU shows
        hotspot, site = "db-round-trips", _frame_site(ctx, trips.statement.site) or site
    layers = inside.base_http_middleware(ctx.rec)
    layered = hotspot == "framework" and layers and (hot.base_http_share or 0.0) >= BASE_HTTP_SHARE
    if ctx.workers < ctx.cores:
        scale = (f"this host has {ctx.cores} cores and the app runs {ctx.workers} worker(s): run more workers "
                 f"(e.g. --workers {ctx.cores})")
    else:
        scale = (f"every core of this host is in use ({ctx.workers} workers on {ctx.cores} cores): "
                 "more workers cannot help here")
    advice = HOTSPOT_ADVICE.get(hotspot or "", "")
    source = (f"CPU samples from py-spy, outside the workers ({hot.samples} samples)" if hot.source == "py-spy"
              else f"CPU samples from the agent's sampler on the loop thread (py-spy did not run: {hot.why_not})")
    return [
        _finding(
            ctx,
            "cpu-saturated",
            start,
            rule=_cpu_rule(ctx, start, onset, host_onset, plateau),
            evidence=((trips.line(),) if trips else ()) + (source,)
            + tuple(f"{k}: {v:.0%} of the busy CPU" for k, v in list(shares.items())[:4])
            + ((f"top frame: {frame[1]} ({frame[2]:.0f} ms)",) if frame else ()),
            hotspot=hotspot,
            call_site=site,
            share=shares.get(hotspot or "") if hotspot else None,
            summary=f"worker CPU is saturated{f', mostly {hotspot}' if hotspot else ''}"
            + (f": `{trips.statement.sql}` sent {trips.per_request:.0f} times per request" if trips else "")
            + (f": {hot.base_http_share:.0%} of it under BaseHTTPMiddleware ({', '.join(layers)})" if layered else "")
            + (f" in `{site.function}()` at {site}" if site else ""),
            recommendation="; ".join(x for x in ((
                f"rewrite {', '.join(layers)} as pure ASGI middleware (a class with `async def __call__(self, "
                "scope, receive, send)`): each BaseHTTPMiddleware runs the rest of the request in a task of its "
                "own behind memory streams") if layered else advice, scale) if x),
            confidence=0.85 if hotspot else 0.7,
        )
    ]


def _cpu_is_the_databases(ctx: Context, start: float, hotspot: str | None) -> bool:
    """From ``start``, the database server's processes used more CPU than the workers, or (SQLite, which
    runs each connection in a thread of the worker) the busiest worker's threads besides its loop used
    more than the loop while database code was its hotspot."""
    served = sum(v for t, v in ctx.tl.server_db_cpu.items() if t >= start)
    if served:
        return served > sum(sum(v) for t, v in ctx.tl.worker_cpu_all.items() if t >= start)
    loop = {t: v for t, v in ctx.tl.loop_cpu.items() if t >= start}
    if hotspot != "db" or not loop:
        return False
    whole = _mean_over({t: v for t, v in ctx.tl.worker_cpu.items() if t in loop}, start)
    return whole - _mean_over(loop, start) > _mean_over(loop, start)


def _cpu_rule(ctx: Context, start: float, onset: int | None, host_onset: int | None,
              plateau: tuple[float, float, float] | None) -> str:
    if onset == start:
        return (f"the busiest worker used ≥ {WORKER_BUSY:.0%} of a core from t={onset}s "
                f"(peak {max(ctx.tl.worker_cpu.values()):.2f})")
    if host_onset == start:
        return (f"the host is full: its {ctx.cores} cores were ≥ {HOST_BUSY:.0%} busy with the run's own processes "
                f"(workers, load generator, database) from t={host_onset}s")
    assert plateau is not None
    return (f"the busiest worker's CPU stopped rising at {plateau[1]:.2f} of a core from t={start:.0f}s while the "
            f"offered load rose {plateau[2]:.0%} (a GIL-bound worker peaks below {WORKER_BUSY:.0%})")


def _cpu_plateau(stages: list[Stage]) -> tuple[float, float, float] | None:
    """(onset, cores, load rise) where the busiest worker's CPU stopped rising at ≥ PLATEAU_CPU of a
    core while the next stage offered more (a GIL-bound sync app peaks below WORKER_BUSY)."""
    for a, b in zip(stages, stages[1:]):
        if (a.load > 0 and b.load >= PLATEAU_LOAD_RISE * a.load and a.worker_cpu >= PLATEAU_CPU
                and b.worker_cpu <= a.worker_cpu * PLATEAU_CPU_RISE):
            return a.t_start, a.worker_cpu, b.load / a.load - 1
    return None


def detect_threadpool_exhausted(ctx: Context) -> list[Finding]:
    """anyio's thread tokens (Starlette's `def` endpoints), else an executor (`run_in_executor`,
    `to_thread`): all threads busy with work queued."""
    full: dict[int, float] = {}
    waiting_max, total = 0, 0
    for pts in inside.threadpool(ctx.rec).values():
        for t, tot, borrowed, waiting in pts:
            sec = int(t // 1)
            full[sec] = max(full.get(sec, 0.0), 1.0 if borrowed >= tot and waiting > 0 else 0.0)
            waiting_max, total = max(waiting_max, waiting), tot
    onset = sustained_onset(ctx.steady(full), lambda v: v >= 1.0)
    if onset is None:
        return _executor_exhausted(ctx)
    _, top = inside.hotspots(ctx.rec, (onset, float("inf")), source="pool")
    site = _frame_site(ctx, top[0][1]) if top else None
    deadlock = _deadlock(ctx)
    if deadlock is not None:
        return [deadlock.finding(ctx, "threadpool-exhausted", min(onset, deadlock.onset), site)]
    return [_finding(
        ctx, "threadpool-exhausted", onset,
        rule=f"all {total} of anyio's worker-thread tokens were borrowed with tasks waiting from t={onset}s "
             f"(up to {waiting_max} waiting)",
        call_site=site,
        summary=f"sync endpoints queue for anyio's {total} worker threads"
                + (f"; the threads sit in `{site.function}()` at {site}" if site else ""),
        recommendation="make the blocking `def` endpoint async with non-blocking I/O, or raise the limit at startup "
                       f"(`anyio.to_thread.current_default_thread_limiter().total_tokens = {total * 2}`), "
                       "or add workers",
        confidence=0.9)]


def _wait_evidence(waits: list[inside.Wait]) -> tuple[str, ...]:
    """The three places requests waited most, as evidence lines."""
    return tuple(f"{w.share:.0%} of waiting in-flight time in {w.kind} at {w.site}" for w in waits[:3])


def _first_full(resources: dict[str, list[inside.LimitPoint]], ctx: Context
                ) -> tuple[int, str, list[inside.LimitPoint]] | None:
    """(onset, its key, its points) of the resource that was first all in use with someone waiting."""
    found = []
    for key, pts in resources.items():
        onset = sustained_onset(ctx.steady(inside.full_seconds(pts)), lambda v: v >= 1.0)
        if onset is not None:
            found.append((onset, key, pts))
    return min(found, key=lambda x: x[0]) if found else None


def _executor_exhausted(ctx: Context) -> list[Finding]:
    first = _first_full({f"{pid}/{name}": pts for (pid, name), pts in inside.executors(ctx.rec).items()}, ctx)
    if first is None:
        return []
    onset, key, pts = first
    name = key.partition("/")[2]
    which = "the loop's default executor" if name == "asyncio" else f"the executor '{name}'"
    size = pts[-1].limit
    queued = max(p.waiting for p in pts if p.t >= onset)
    waits = inside.waits(ctx.rec, (onset, float("inf")))
    top = next((w for w in waits if w.kind == "executor" and w.site), None)
    site = _frame_site(ctx, top.site) if top and top.site else None
    return [_finding(
        ctx, "threadpool-exhausted", onset,
        rule=f"all {size} threads of {which} were busy with work queued from t={onset}s (up to {queued} queued)",
        evidence=_wait_evidence(waits),
        call_site=site,
        summary=f"blocking work queues for {which} ({size} threads)"
                + (f", sent there by `{site.function}()` at {site}" if site else ""),
        recommendation=f"{which} has {size} threads: give it more (max_workers) if the work is I/O that waits, "
                       "use an async client for that I/O instead, or run CPU-bound work in a process pool",
        confidence=0.85)]


HTTP_WAIT_SHARE = 0.5  # waiting for a pooled connection is at least this share of the waiting in-flight time
LOCK_WAITERS = 0.5  # requests waiting on a lock, on average, for it to be contended
LOCK_KINDS = ("lock", "semaphore", "condition")


def detect_http_pool_exhausted(ctx: Context) -> list[Finding]:
    pools = inside.http_pools(ctx.rec)
    first = _first_full({f"{pid}/{pool_id}": pts for (pid, pool_id), (_, pts) in pools.items()}, ctx)
    if first is None:
        return []
    onset, key, pts = first
    pid, _, pool_id = key.partition("/")
    where = pools[(int(pid), pool_id)][0]
    waits = inside.waits(ctx.rec, (onset, float("inf")))
    acquire = sum(w.share for w in waits if w.kind == "http-pool-acquire")
    site = _frame_site(ctx, where) if where else None
    limit, waiting = pts[-1].limit, max(p.waiting for p in pts if p.t >= onset)
    return [_finding(
        ctx, "http-client-pool-exhausted", onset,
        rule=f"all {limit} connections of an outbound HTTP client's pool were in use with requests waiting from "
             f"t={onset}s (up to {waiting} waiting); waiting for a connection was {acquire:.0%} of the in-flight "
             "time requests spent waiting",
        evidence=_wait_evidence(waits),
        call_site=site, share=round(acquire, 3),
        summary=f"outbound HTTP calls queue for the client's {limit} pooled connections"
                + (f" (the call in `{site.function}()` at {site})" if site else ""),
        recommendation=f"raise the client's limit (httpx.Limits(max_connections=...), now {limit}) within what the "
                       "upstream accepts, or make fewer or shorter calls (cache, batch, time out sooner)",
        confidence=0.9 if acquire >= HTTP_WAIT_SHARE else 0.7)]


def detect_redis_pool_exhausted(ctx: Context) -> list[Finding]:
    pools = inside.redis_pools(ctx.rec)
    first = _first_full({f"{pid}/{pool_id}": pts for (pid, pool_id), pts in pools.items()}, ctx)
    if first is None:
        return []
    onset, _, pts = first
    limit, waiting = pts[-1].limit, max(p.waiting for p in pts if p.t >= onset)
    waits = inside.waits(ctx.rec, (onset, float("inf")))
    acquire = sum(w.share for w in waits if w.kind == "redis-pool-acquire")
    top = next((w for w in waits if w.kind == "redis-pool-acquire" and w.site), None)
    site = _frame_site(ctx, top.site) if top and top.site else None
    errors = inside.redis_pool_errors(ctx.rec, (onset, float("inf")))
    failed = ", ".join(f"{kind} {n:,}" for kind, n in sorted(errors.items()))
    return [_finding(
        ctx, "redis-pool-exhausted", onset,
        rule=f"all {limit} connections of a redis-py pool were in use with requests waiting for one from t={onset}s "
             f"(up to {waiting} waiting)" + (f"; waiting for one was {acquire:.0%} of the in-flight time requests "
                                             "spent waiting" if acquire else "") + (f"; acquires failed: {failed}"
                                                                                     if failed else ""),
        evidence=_wait_evidence(waits),
        call_site=site, share=round(acquire, 3),
        summary=f"Redis commands queue for the client pool's {limit} connections"
                + (f" (at `{site.function}()`, {site})" if site else ""),
        recommendation=f"raise the pool's max_connections (now {limit}; Redis serves thousands of clients), and hold a "
                       "connection only for a command: not across other awaits (a dedicated `Redis.client()`, a "
                       "pipeline or lock kept open while the app queries the database)",
        confidence=0.9 if acquire >= HTTP_WAIT_SHARE else 0.75)]


def detect_lock_contention(ctx: Context) -> list[Finding]:
    waiting = inside.waits_per_second(ctx.rec, LOCK_KINDS)
    onset = sustained_onset(ctx.steady(waiting), lambda v: v >= LOCK_WAITERS)
    if onset is None:
        return []
    waits = inside.waits(ctx.rec, (onset, float("inf")))
    locks = [w for w in waits if w.kind in LOCK_KINDS]
    share = sum(w.share for w in locks)
    if share < 0.5:
        return []  # requests wait on a lock, but mostly on something else
    top = locks[0]
    site = _frame_site(ctx, top.site) if top.site else None
    return [_finding(
        ctx, "lock-contention", onset,
        rule=f"from t={onset}s, {max(v for t, v in waiting.items() if t >= onset):.1f} requests at once waited on "
             f"an asyncio {top.kind} (≥ {LOCK_WAITERS} on average), {share:.0%} of their waiting time",
        evidence=_wait_evidence(waits),
        call_site=site, share=round(share, 3),
        summary=f"requests queue on an asyncio {top.kind}" + (f" acquired in `{site.function}()` at {site}"
                                                              if site else ""),
        recommendation="hold the lock for less time: do not await I/O while holding it (copy what you need, release, "
                       "then await), shard it per key, or replace it with a structure that needs no lock",
        confidence=0.85)]


@dataclass(frozen=True)
class Deadlock:
    """Request threads waiting for pooled connections whose holders wait for a thread."""

    onset: int
    tokens: int
    size: int
    overflow: int
    waiting: int  # threads waiting in the pool's checkout, at most

    def finding(self, ctx: Context, kind: str, onset: float, site: CallSite | None) -> Finding:
        cap = self.size + self.overflow
        return _finding(
            ctx, kind, onset,
            rule=f"from t={self.onset}s all {self.tokens} worker-thread tokens were borrowed, the pool's {cap} "
                 f"connections were all checked out with up to {self.waiting} threads waiting in its checkout, and "
                 "no connection came back: tokens "
                 f"{self.tokens} > pool {self.size} + overflow {self.overflow}",
            call_site=site,
            summary=f"a deadlock between the request threads and the pool: the {self.tokens} threads wait for one of "
                    f"{cap} connections whose holders wait for a thread"
                    + (f" (the threads sit in `{site.function}()` at {site})" if site else ""),
            recommendation="make the endpoint and its dependencies `async def` with an async driver, or give the pool "
                           f"at least as many connections as there are threads (pool_size + max_overflow ≥ "
                           f"{self.tokens}, within the database's max_connections); more thread tokens only move "
                           "the cliff",
            confidence=0.9)


def _deadlock(ctx: Context) -> Deadlock | None:
    """Seconds in which a worker's thread tokens were all borrowed with tasks waiting while one of its
    pools was all checked out, had waiters, and got no connection back, sustained."""
    tokens = inside.threadpool(ctx.rec)
    pools = inside.pools(ctx.rec)
    stuck: dict[int, float] = {}
    sizes = None  # (thread tokens, pool size, overflow) of a stuck worker
    for (pid, _), pts in pools.items():
        full_threads = {int(t // 1) for t, total, borrowed, waiting in tokens.get(pid, ())
                        if borrowed >= total and waiting > 0}
        by_sec: dict[int, list[inside.PoolPoint]] = {}
        for p in pts:
            by_sec.setdefault(int(p.t // 1), []).append(p)
        for sec, ps in by_sec.items():
            hit = (sec in full_threads and all(p.checked_out >= p.capacity > 0 and p.waiting for p in ps)
                   and not sum(p.returns for p in ps))
            stuck[sec] = max(stuck.get(sec, 0.0), 1.0 if hit else 0.0)
            if hit:
                sizes = (max(t for _, t, _, _ in tokens[pid]), ps[-1].size, ps[-1].max_overflow)
    onset = sustained_onset(ctx.steady(stuck), lambda v: v >= 1.0)
    if onset is None or sizes is None:
        return None
    return Deadlock(onset, *sizes, max(p.waiting for pts in pools.values() for p in pts))


@dataclass(frozen=True)
class SlowStatement:
    onset: int
    statement: inside.Statement  # over the window from the onset
    base_ms: float  # its mean time at the lowest load
    share: float  # of the connections' hold time (or server-side time) spent in statements, past the onset
    evidence: str  # what the database itself showed


def _slow_statement(ctx: Context) -> SlowStatement | None:
    """The statement with the most time, when its mean time grew SLOW_GROWTH-fold over its time at the
    lowest load while statements ran at least SLOW_SHARE of the time connections were held and the
    database itself worked harder (the database, not the pool or the app around it, is what requests
    wait for)."""
    ranked = inside.statements(ctx.rec)
    if not ranked:
        return None
    key = (ranked[0].sql, ranked[0].site)
    per_sec = inside.statements_per_second(ctx.rec)
    means: dict[int, float] = {}  # the statement's mean ms, per second outside calibration bursts
    for t in ctx.steady({t: 0.0 for t in per_sec}):
        n, ms = per_sec[t].get(key, (0, 0.0))
        if n:
            means[t] = ms / n
    if len(means) < 3:
        return None
    base = statistics.median([means[t] for t in sorted(means)[:3]])
    held = _held_ms_per_second(ctx)
    served = inside.server_ms_per_second(ctx.rec)
    share: dict[int, float] = {}
    for t, ms in means.items():
        spent = sum(v[1] for v in per_sec[t].values())
        whole = held.get(t) or served.get(t, 0.0)
        share[t] = spent / whole if whole else 0.0
    # a statement's time is measured from the loop, which picks up its result: on a busy loop it grows
    # by the loop's lateness too; only growth beyond that is the database's
    lag = ctx.tl.lag_p99_ms
    onset = sustained_onset({t: 1.0 if m >= SLOW_GROWTH * base and m - base > lag.get(t, 0.0)
                             and share[t] >= SLOW_SHARE else 0.0
                             for t, m in means.items()}, lambda v: v >= 1.0)
    if onset is None:
        return None
    after = [st for st in inside.statements(ctx.rec, (onset, float("inf"))) if (st.sql, st.site) == key]
    if not after:
        return None
    trips = _round_trips(ctx, (onset, float("inf")))
    if trips is not None and trips.statement.sql == key[0] and _mean_over(ctx.tl.worker_cpu, onset) >= WORKER_BUSY:
        return None  # one statement per row on a busy worker: the round trips are the cost (cpu-saturated)
    past = [share[t] for t in share if t >= onset]
    busy, evidence = _database_busy_past(ctx, onset)
    if not busy:
        return None  # the statement slowed, the database did not work harder: the app's side (GIL, loop) did
    return SlowStatement(onset, after[0], base, sum(past) / len(past), evidence)


def _held_ms_per_second(ctx: Context) -> dict[int, float]:
    """Milliseconds connections were held (returned in that second), all pools together."""
    out: dict[int, float] = {}
    for pts in inside.pools(ctx.rec).values():
        for p in pts:
            out[int(p.t // 1)] = out.get(int(p.t // 1), 0.0) + p.hold_ms
    return out


def detect_db_slow_queries(ctx: Context) -> list[Finding]:
    slow = _slow_statement(ctx)
    if slow is None:
        return []
    st = slow.statement
    site = _frame_site(ctx, st.site) if st.site else None
    p50, p99 = st.hist.percentile(0.5) / 1000, st.hist.percentile(0.99) / 1000
    trips = _round_trips(ctx, (slow.onset, float("inf")))
    evidence = [f"`{st.sql}`: {st.n} calls, p50 {p50:.1f} ms, p99 {p99:.1f} ms past t={slow.onset}s, against "
                f"{slow.base_ms:.1f} ms at the lowest load",
                f"statements ran {slow.share:.0%} of the time connections were held (or of server-side time)",
                slow.evidence]
    if trips is not None and trips.statement.sql == st.sql:
        evidence.insert(1, trips.line())
    return [_finding(
        ctx, "db-slow-queries", slow.onset,
        rule=f"one statement's mean time grew from {slow.base_ms:.1f} ms to {st.ms / st.n:.1f} ms "
             f"(≥ {SLOW_GROWTH}×) from t={slow.onset}s while statements took {slow.share:.0%} of the time "
             "connections were held",
        evidence=tuple(evidence),
        call_site=site, share=round(slow.share, 3),
        summary=f"the database is the limit: `{st.sql}` takes {p50:.0f} ms (p99 {p99:.0f} ms) under load"
                + (f", sent by `{site.function}()` at {site}" if site else ""),
        recommendation="make the statement cheaper: run `EXPLAIN ANALYZE` on it, add an index on the columns it "
                       "filters or joins on, or read fewer rows; a bigger pool would only queue more of it in "
                       "the database"
                       + ("; it is also sent once per row (N+1): batch it" if trips is not None
                          and trips.statement.sql == st.sql else ""),
        confidence=0.85)]


def _database_busy_past(ctx: Context, onset: float) -> tuple[bool, str]:
    """Whether the database itself worked past ``onset``, and what showed it: PostgreSQL's connections
    mostly active (running a statement, not idle waiting for the app), or its processes, where the run
    watched them, using more CPU than the workers (on a full host the loop picks results up late and a
    snapshot of pg_stat_activity finds them idle in transaction); SQLite, which runs each connection in
    a thread of the worker, those threads using more CPU than the loop."""
    pg = [r for r in ctx.rec.db if r.kind == "postgres" and r.t >= onset]
    if pg:
        db_cpu = [v for t, v in ctx.tl.server_db_cpu.items() if t >= onset]
        app_cpu = [sum(v) for t, v in ctx.tl.worker_cpu_all.items() if t >= onset]
        # per-second medians: a server's exited backends add their whole CPU in the second they exit
        burning = bool(db_cpu and app_cpu) and statistics.median(db_cpu) > statistics.median(app_cpu)
        active = sum(r.states.get("active", 0) for r in pg) / len(pg)
        conns = sum(r.total - r.states.get("background", 0) for r in pg) / len(pg)
        waits: dict[str, int] = {}
        for r in pg:
            for kind, n in r.waits.items():
                waits[kind] = max(waits.get(kind, 0), n)
        shown = ", ".join(f"{k} {n}" for k, n in sorted(waits.items(), key=lambda kv: -kv[1]))
        return active >= 0.5 * conns > 0 or burning, (
            f"PostgreSQL pg_stat_activity: {active:.1f} of the app's {conns:.1f} connections active on average"
            + (f" (at most, by wait event: {shown})" if shown else "")
            + (f"; its processes used {statistics.median(db_cpu):.2f} cores, the workers "
               f"{statistics.median(app_cpu):.2f} (medians per second)" if db_cpu and app_cpu else ""))
    threads = [(p.cpu - p.main_cpu, p.main_cpu) for s in ctx.rec.samples if s.t >= onset for p in s.procs
               if p.role == "worker" and p.main_cpu is not None]
    if not threads:
        return False, _database_busy(ctx)
    others, loop = (sum(x) / len(threads) for x in zip(*threads))
    return others > loop, (f"the worker's threads besides the loop (SQLite runs each connection in one) used "
                           f"{others:.2f} cores on average, the loop {loop:.2f}")


def detect_db_pool_exhausted(ctx: Context) -> list[Finding]:
    pools = inside.pools(ctx.rec)
    if not pools:
        return []
    full: dict[int, float] = {}
    waits: dict[int, Histogram] = {}
    timeouts, cap = 0, 0
    for pts in pools.values():
        for p in pts:
            sec = int(p.t // 1)
            full[sec] = max(full.get(sec, 0.0), 1.0 if p.checked_out >= p.capacity > 0 else 0.0)
            waits.setdefault(sec, Histogram()).merge(p.acquire)
            timeouts += p.timeouts
            cap = max(cap, p.capacity)
    wait_p99 = {t: h.percentile(0.99) / 1000 for t, h in waits.items() if h.count}
    onset = sustained_onset(ctx.steady(full), lambda v: v >= 1.0)
    if onset is None or (
        max((v for t, v in wait_p99.items() if t >= onset), default=0.0) < POOL_WAIT_MS and not timeouts
    ):
        return []
    after = Histogram.merged(h for t, h in waits.items() if t >= onset)
    wait_mean_ms = _hist_mean_ms(after)
    served = inside.routes(ctx.rec)
    server_ms = sum(_hist_mean_ms(r.hist) * r.n for r in served.values()) / max(1, sum(r.n for r in served.values()))
    share = wait_mean_ms / server_ms if server_ms else None
    evidence = [f"acquire wait p99 {after.percentile(0.99) / 1000:.0f} ms after t={onset}s"]
    if share is not None:
        evidence.append(
            f"waiting for a connection is {min(share, 1):.0%} of server-side latency ({wait_mean_ms:.0f} of "
            f"{server_ms:.0f} ms)"
        )
    if timeouts:
        wait = next((p.timeout_s for pts in pools.values() for p in pts if p.timeout_s), None)
        evidence.append(f"{timeouts} pool timeouts (QueuePool limit reached"
                        + (f" after waiting {wait:g} s)" if wait else ")"))
    evidence.append(_database_busy(ctx))
    held = _held(ctx, onset)
    if held:
        evidence.insert(0, held.line())
    deadlock = _deadlock(ctx)
    if deadlock is not None:
        return [deadlock.finding(ctx, "db-pool-exhausted", min(onset, deadlock.onset), None)]
    slow = _slow_statement(ctx)
    if slow is not None and not held:
        return []  # connections are busy running a statement that slows with load: db-slow-queries says so
    trips = _round_trips(ctx, (onset, float("inf")))
    if trips is not None and not held:
        if _mean_over(ctx.tl.worker_cpu, onset) >= WORKER_BUSY:
            return []  # each request holds its connection for its round trips on a busy worker: cpu-saturated's
        evidence.insert(0, trips.line())
    (pid, pool_id), pts = next(iter(pools.items()))
    site = _frame_site(ctx, held.who) if held and " /" not in held.who else None
    by = f"`{site.function}()` at {site}" if site else (f"`{held.who}`" if held else "")
    holding = f", each held {held.ms:.0f} ms by {by} while its statements run {held.ran:.1f} ms" if held else ""
    if trips is not None and not held:  # each request holds its connection through its round trips
        site = _frame_site(ctx, trips.statement.site)
        holding = (f", each held by a request through `{trips.statement.sql}` sent {trips.per_request:.0f} times per "
                   "request" + (f" in `{site.function}()` at {site}" if site else ""))
    return [
        _finding(
            ctx,
            "db-pool-exhausted",
            onset,
            rule=f"checked-out connections reached size + overflow = {cap} from t={onset}s and acquire waits grew",
            evidence=tuple(evidence),
            share=round(min(share, 1.0), 3) if share is not None else None,
            call_site=site,
            summary=f"requests queue for a DB connection: the pool ({pts[-1].size} + {pts[-1].max_overflow} overflow) "
                    "is always checked out"
                    + holding,
            recommendation=(f"send fewer statements per request (one statement is sent {trips.per_request:.0f} "
                            "times per request, once per row: load the rows in one query — a JOIN, "
                            "`selectinload()`, or `WHERE id IN (...)`); then " if trips else "")
            + f"raise pool_size/max_overflow (now {pts[-1].size}+{pts[-1].max_overflow}) within what the database "
            "accepts, and hold connections for less time (do not keep one checked out across unrelated awaits)",
            confidence=0.9,
        )
    ]


@dataclass(frozen=True)
class Held:
    """Connections held far longer than their statements ran, by one holder."""

    who: str  # a route ("GET /path"), else the app line that checked them out ("file:line function")
    ms: float  # held, per checkout
    ran: float  # their statements ran, per checkout

    def line(self) -> str:
        holder = f"`{self.who}`" if " /" in self.who else f"the code at {self.who}"
        return (f"{holder} held connections {self.ms:.0f} ms at a time while their statements ran {self.ran:.1f} "
                "ms: the connection waits on something else (another await, a streamed response) — release it "
                "before that")


def _held(ctx: Context, onset: float) -> Held | None:
    """The holder that held its connections longest, when it held each HELD_MIN_MS or more and
    HELD_RATIO times longer than its statements ran (kept across another await, or for a whole
    streamed response)."""
    worst = None
    for who, (n, ms, ran) in inside.holds(ctx.rec, (onset, float("inf"))).items():
        if n and ms / n >= HELD_MIN_MS and ms >= HELD_RATIO * ran and (worst is None or ms > worst[2]):
            worst = (who, n, ms, ran)
    if worst is None:
        return None
    who, n, ms, ran = worst
    return Held(who, ms / n, ran / n)


def _database_busy(ctx: Context) -> str:
    pg = [r for r in ctx.rec.db if r.kind == "postgres"]
    if pg:
        peak = max(pg, key=lambda r: r.total)
        active = max(r.states.get("active", 0) for r in pg)
        busy = peak.total >= 0.9 * peak.max_connections
        return (f"PostgreSQL {'was' if busy else 'was not'} the limit: at most {peak.total} of "
                f"{peak.max_connections} connections, {active} active at once")
    return "the database server was not watched ([database] url unset); SQLite runs inside the worker"


def _hist_mean_ms(h: Histogram) -> float:
    return h.total_us() / h.count / 1000 if h.count else 0.0


def detect_fd_exhausted(ctx: Context) -> list[Finding]:
    tl = ctx.tl
    onset = sustained_onset(tl.fd_ratio, lambda v: v >= FD_NEAR)
    if onset is None:
        return []
    peak = max(tl.fd_ratio.values())
    exc = inside.exceptions(ctx.rec)
    oserrors = {route: n for route, by in exc.items() for kind, n in by.items() if kind == "OSError"}
    first_error = next((t for t in sorted(tl.errors) if tl.errors[t] > 0), None)
    return [_finding(
        ctx, "fd-exhausted", onset,
        rule=f"open file descriptors reached {FD_NEAR:.0%} of RLIMIT_NOFILE at t={onset}s (peak {peak:.0%}, "
             f"{max(tl.fds.values()):.0f} open)",
        evidence=tuple([f"errors began at t={first_error}s" if first_error is not None else "no errors yet"]
                       + [f"{n} OSError (Too many open files?) in {route}" for route, n in oserrors.items()]),
        summary="file descriptors run out" + (f" (OSError in {', '.join(oserrors)})" if oserrors else ""),
        recommendation="close what each request opens (use `with` for files and clients; reuse one HTTP client), "
                       "then raise the limit if it is genuinely needed (`ulimit -n`, systemd LimitNOFILE)",
        confidence=0.9 if first_error is not None and first_error >= onset else 0.75)]


def detect_memory_growth(ctx: Context) -> list[Finding]:
    # past the knee, queued requests and connections legitimately take memory: judge the load the app held
    before = ctx.knee.t_s if ctx.knee else float("inf")
    pts = sorted((t, v) for t, v in ctx.tl.rss_mb.items() if t < before)
    if len(pts) < MEMORY_MIN_SECONDS:
        return []
    tail = pts[len(pts) // 4:]  # leave the warm-up out
    slope, lo, hi = theil_sen(tail)
    growth = tail[-1][1] - tail[0][1]
    if lo <= 0 or slope < MEMORY_SLOPE_MB_S or growth < max(10.0, 0.1 * tail[0][1]):
        return []
    base = pts[0][1]
    onset = next((t for t, v in pts if v > base * 1.1 + 5), tail[0][0])
    live = _live_slope(ctx, tail[0][0], before)
    if live is None:
        where, recommendation = "", ("something keeps objects per request (a module-level list or dict, an "
                                     "unbounded cache): compare `tracemalloc` snapshots between two moments under "
                                     "load and bound what grows")
    elif live >= HEAP_SHARE * slope:
        where, recommendation = "in live allocations (the Python heap)", (
            "the app keeps what it allocates per request (a module-level list or dict, an unbounded cache): "
            "compare `tracemalloc` snapshots between two moments under load and bound what grows")
    else:
        where, recommendation = "in RSS outside live allocations (allocator fragmentation or native memory)", (
            "the Python heap is not what grows: cap glibc's arenas (`MALLOC_ARENA_MAX=2`), try jemalloc "
            "(`LD_PRELOAD`), look for native buffers or mmaps that are never freed, or recycle workers "
            "(gunicorn `--max-requests`)")
    app_dir = ctx.rec.scenario.app.app_dir if not ctx.rec.scenario.url else ""
    sites, types = inside.grew(ctx.rec), inside.grew_types(ctx.rec)
    top = next((s for s in sites if inside.is_app_path(s[0], app_dir)), None)
    return [_finding(
        ctx, "memory-growth", onset,
        rule=f"worker RSS grew {slope:.1f} MB/s (95% interval {lo:.1f}–{hi:.1f}, excluding 0) from {tail[0][1]:.0f} "
             f"to {tail[-1][1]:.0f} MB",
        call_site=_site(top[0], top[1], "") if top else None,
        evidence=((f"live allocations (pymalloc blocks × {BLOCK_BYTES} B + what malloc has handed out) grew "
                   f"{live:.1f} MB/s of RSS's {slope:.1f}",) if live is not None else ())
        + tuple(f"tracemalloc over the profile window: +{size / 2**20:.1f} MB in {n:+,} blocks allocated at "
                f"{path}:{line}" for path, line, size, n in sites[:3])
        + (("live objects that grew over the profile window: "
            + ", ".join(f"{name} {n:+,}" for name, n in types[:5]),) if types else ()),
        summary=f"memory grows without bound under load ({slope:.1f} MB/s)" + (f", {where}" if where else ""),
        recommendation=recommendation,
        confidence=0.85)]


def _live_slope(ctx: Context, start: float, end: float) -> float | None:
    """MB/s by which the workers' live allocations grew in [start, end), all workers together;
    None without the agent's readings (or without glibc's)."""
    total: dict[int, float] = {}
    for pts in inside.memory(ctx.rec).values():
        for t, blocks, malloc in pts:
            if malloc is None:
                return None
            if start <= t < end:
                sec = int(t // 1)
                total[sec] = total.get(sec, 0.0) + (blocks * BLOCK_BYTES + malloc) / 2**20
    if len(total) < MEMORY_MIN_SECONDS // 2:
        return None
    return theil_sen(sorted(total.items()))[0]


def theil_sen(points: list[tuple[int, float]]) -> tuple[float, float, float]:
    """(slope, low, high): the median pairwise slope and its 2.5/97.5 percentiles."""
    slopes = sorted((y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(points) for x2, y2 in points[i + 1:] if x2 != x1)
    if not slopes:
        return 0.0, 0.0, 0.0
    q = lambda p: slopes[min(len(slopes) - 1, int(p * len(slopes)))]  # noqa: E731
    return statistics.median(slopes), q(0.025), q(0.975)


def detect_server_errors(ctx: Context) -> list[Finding]:
    died = next((e for e in ctx.rec.events if e.kind == "target-died"), None)
    if died is not None and died.t is not None:
        return [_finding(
            ctx, "server-errors", died.t,
            rule=f"the target exited mid-run at t={died.t:.0f}s",
            summary="the app's server exited mid-run", confidence=0.9,
            recommendation="read server.stderr.log in the run directory for why it exited, and fix that")]
    rate = ctx.steady({s.t: s.errors / s.completed for s in ctx.rec.seconds if s.completed})
    limit = max(ctx.slo_errors, ERROR_RATE)
    refused = _connections_refused(ctx)
    onset = sustained_onset(rate, lambda v: v > limit)
    if onset is None and refused:
        # refusals come while the pools grow (and again whenever they regrow): one second of them past the
        # limit is the misconfiguration showing, not noise
        onset = next((t for t, v in sorted(rate.items()) if v > limit), None)
    if onset is None:
        return []
    kinds: dict[str, int] = {}
    for s in ctx.rec.seconds:
        for k, n in s.outcomes.items():
            if k != "ok":
                kinds[k] = kinds.get(k, 0) + n
    exc = inside.exceptions(ctx.rec)
    if refused:
        return [_finding(
            ctx, "server-errors", onset,
            rule=f"error rate above {limit:.0%} from t={onset}s ({', '.join(f'{k} {n:,}' for k, n in kinds.items())})",
            evidence=(refused,) + tuple(f"{route}: {by}" for route, by in exc.items()),
            summary=f"the database refuses connections: {refused}", cause="too-many-connections",
            recommendation="keep workers × (pool_size + max_overflow) below the server's max_connections (less "
                           "what other clients and superuser_reserved_connections take): smaller pools per worker, "
                           "or a pooler such as PgBouncer in front of the database",
            confidence=0.9)]
    return [_finding(
        ctx, "server-errors", onset,
        rule=f"error rate above {limit:.0%} from t={onset}s ({', '.join(f'{k} {n:,}' for k, n in kinds.items())})",
        evidence=tuple(f"{route}: {by}" for route, by in exc.items()),
        summary="the app fails (" + ", ".join(kinds) + ") before any resource saturates",
        recommendation="read server.stderr.log and the exceptions by route in the report; fix the failing code path",
        confidence=0.7)]


def _connections_refused(ctx: Context) -> str:
    """Why the database refused connections, with the arithmetic, when the agents saw it do so."""
    errors = inside.db_errors(ctx.rec)
    refused = errors.get("too-many-connections", 0) + sum(
        n for by in inside.exceptions(ctx.rec).values() for kind, n in by.items() if kind == "TooManyConnectionsError")
    if not refused:
        return ""
    caps = {pid: max(p.capacity for p in pts) for (pid, _), pts in inside.pools(ctx.rec).items()}
    per = max(caps.values(), default=0)
    workers = max(len(caps), ctx.workers)
    limit = max((r.max_connections for r in ctx.rec.db if r.kind == "postgres"), default=None)
    want = f"{workers} workers × (pool_size + max_overflow = {per}) = {workers * per} connections" if per else ""
    against = f" against max_connections = {limit}" if limit else ""
    return f"{refused:,} connection attempts refused (too many clients)" + (f"; {want}{against}" if want else "")


BUILTIN: dict[str, Callable[[Context], list[Finding]]] = {
    "client-errors": detect_client_errors,
    "load-generator-saturated": detect_load_generator,
    "host-contended": detect_host_contended,
    "event-loop-blocked": detect_event_loop_blocked,
    "cpu-saturated": detect_cpu_saturated,
    "threadpool-exhausted": detect_threadpool_exhausted,
    "http-client-pool-exhausted": detect_http_pool_exhausted,
    "redis-pool-exhausted": detect_redis_pool_exhausted,
    "lock-contention": detect_lock_contention,
    "db-pool-exhausted": detect_db_pool_exhausted,
    "fd-exhausted": detect_fd_exhausted,
    "memory-growth": detect_memory_growth,
    "db-slow-queries": detect_db_slow_queries,
    "gc-pauses": detect_gc_pauses,
    "server-errors": detect_server_errors,
}


def load_detector(spec: str) -> Callable[[Context], list[Finding]]:
    """A built-in detector by kind, or ``package.module:function`` for your own (a ConfigError when it
    cannot be loaded; what it raises when it runs is not caught here)."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    module, _, attr = spec.partition(":")
    try:
        found = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"--detector {spec}: {e}; give an importable package.module:function") from None
    if not callable(found):
        raise ConfigError(f"--detector {spec}: {attr!r} is not a function; give an importable package.module:function")
    return found


def run_detectors(ctx: Context, extra: tuple[str, ...] = ()) -> list[Finding]:
    """Every detector's findings, in causal order."""
    from harness.analysis import topology  # noqa: F401  (it registers the proxy's and the cache's detectors)

    detectors = [load_detector(spec) for spec in (*CAUSAL_ORDER, *extra)]
    out: list[Finding] = []
    for detect in detectors:
        out += detect(ctx)
    return out
