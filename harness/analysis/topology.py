"""What runs beside the app: the proxy in front of its instances, the cache behind it, and how the load
spread over the workers.

``proxy-saturated`` and ``redis-saturated`` are detectors like the others (registered in
``detectors.BUILTIN``; a first bottleneck when they come first); ``load-imbalance`` and
``cache-ineffective`` are notes that sit beside the verdict (what the run shows about its shape,
never the first bottleneck themselves).
"""

from __future__ import annotations

import math

from harness.analysis import detectors, inside
from harness.analysis.detectors import WORKER_BUSY, Context, _finding
from harness.analysis.findings import Finding
from harness.analysis.series import proc_series
from harness.analysis.stages import load_window, sustained_onset
from harness.histogram import Histogram
from harness.records import AgentTick

SERVICE_BUSY = 0.90  # cores: a single-threaded server (Redis) or one nginx worker at its core
IMBALANCE = 0.75  # of the requests, for one worker of several, in a second (while it is at its core)
IMBALANCE_SECONDS = 3
CACHE_LOW = 0.5  # hit rate under which a cache in front of a limiting database does little
DB_KINDS = ("db-slow-queries", "db-pool-exhausted")


def _per_second(points: list[tuple[float, float]]) -> dict[int, float]:
    """A service's once-a-second readings by the second they describe (each covers the second before it)."""
    return {math.floor(t - 0.5): v for t, v in points}


def detect_redis_saturated(ctx: Context) -> list[Finding]:
    cpu = ctx.steady(_per_second([(c.t, c.cpu) for c in ctx.rec.cache]))
    onset = sustained_onset(cpu, lambda v: v >= SERVICE_BUSY)
    if onset is None:
        return []
    after = [c for c in ctx.rec.cache if c.t - 0.5 >= onset]
    commands = sum(c.commands for c in after) / max(len(after), 1)
    return [_finding(
        ctx, "redis-saturated", onset,
        rule=f"Redis's CPU at ≥ {SERVICE_BUSY:.0%} of a core from t={onset}s (it runs commands on one thread), "
             f"{commands:,.0f} commands/s",
        summary=f"Redis is at its one core ({commands:,.0f} commands/s)",
        recommendation="send fewer commands (pipeline them, MGET/MSET instead of loops, cache bigger values "
                       "less often), or spread the keys over more Redis servers (a cluster, or one per instance)",
        confidence=0.85)]


def detect_proxy_saturated(ctx: Context) -> list[Finding]:
    rec = ctx.rec
    if not rec.proxy:
        return []
    window = load_window(rec)
    procs = proc_series(rec, "proxy", "cpu", window)
    workers = max(len(procs) - 1, 1)  # nginx's master serves nothing
    by_second: dict[int, list[float]] = {}
    for pts in procs.values():
        for t, v in pts:
            by_second.setdefault(t, []).append(v)
    busiest = {t: sum(sorted(vs)[-workers:]) / workers for t, vs in by_second.items()}  # its workers, on average
    at_core = sustained_onset(ctx.steady(busiest), lambda v: v >= SERVICE_BUSY)
    refusing = sustained_onset(ctx.steady(_per_second([(p.t, p.dropped + p.errors.get("worker-connections", 0))
                                                       for p in rec.proxy])), lambda v: v > 0)
    idle_instances = {t for t, v in ctx.tl.worker_cpu.items() if v < WORKER_BUSY}
    upstream = sustained_onset(ctx.steady({t: v for t, v in _per_second(
        [(p.t, p.errors.get("upstream-connect", 0) + p.errors.get("upstream-timeout", 0)) for p in rec.proxy]
    ).items() if t in idle_instances}), lambda v: v > 0)
    found = [(t, why) for t, why in (
        (at_core, f"nginx's {workers} worker(s) at ≥ {SERVICE_BUSY:.0%} of a core each"),
        (refusing, "nginx accepted connections it could not handle (worker_connections reached)"),
        (upstream, "nginx failed to reach the instances while their workers had CPU to spare")) if t is not None]
    if not found:
        return []
    onset, why = min(found)
    return [_finding(
        ctx, "proxy-saturated", onset, rule=f"{why}, from t={onset}s",
        summary=f"the proxy in front of the instances is the limit: {why}",
        recommendation="give nginx more worker_processes ([proxy] workers) and worker_connections, keep its "
                       "upstream keep-alive on, or put the instances behind more than one proxy",
        confidence=0.8)]


# built in like the others (CAUSAL_ORDER ranks them); they live here, beside the rest of the topology
detectors.BUILTIN.update({"redis-saturated": detect_redis_saturated, "proxy-saturated": detect_proxy_saturated})


def notes(ctx: Context, findings: list[Finding]) -> list[Finding]:
    """``load-imbalance``, ``cache-ineffective`` and ``connection-errors``, where the run shows them."""
    return [*_load_imbalance(ctx), *_cache_ineffective(ctx, findings), *_connection_errors(ctx)]


def _connection_errors(ctx: Context) -> list[Finding]:
    """Resets and timeouts explained by the queueing before the app: the kernel's accept queues (how many
    connections it turned away), and the time requests spent before the app against the time in it."""
    rec = ctx.rec
    outcomes = {k: sum(s.outcomes.get(k, 0) for s in rec.seconds) for k in ("connection-reset", "timeout")}
    if not any(outcomes.values()):
        return []
    window = load_window(rec)
    listen = [s.listen for s in rec.samples if s.listen and window[0] <= s.t < window[1] + 1.0]
    turned_away = sum(x.get("overflows", 0) for x in listen)
    queued = max((x.get("queued", 0) for x in listen), default=0)
    backlog = rec.scenario.app.backlog or 2048
    parts = []
    if outcomes["connection-reset"]:
        parts.append(f"{outcomes['connection-reset']:,} connection resets")
    if outcomes["timeout"]:
        parts.append(f"{outcomes['timeout']:,} requests timed out after {rec.scenario.load.timeout_s:g} s")
    why = []
    if turned_away:
        why.append(f"the kernel turned away {turned_away:,} connections at a full accept queue (ListenOverflows; "
                   f"the server's longest queue held {queued:,} of a {backlog:,} backlog)")
    client = Histogram.merged(s.hist for s in rec.seconds)
    inside_hist = Histogram.merged(r.hist for r in inside.routes(rec).values()) if rec.agents else None
    if client.count and inside_hist is not None and inside_hist.count:
        before = client.total_us() / client.count / 1000 - inside_hist.total_us() / inside_hist.count / 1000
        if before > 0:
            why.append(f"requests spent {before:,.0f} ms on average before the app (accept queue, proxy, kernel) "
                       f"and {inside_hist.total_us() / inside_hist.count / 1000:,.0f} ms in it")
    load = rec.scenario.load
    rps = sum(s.completed for s in rec.seconds) / max(sum(s.span for s in rec.seconds), 1e-9)
    if load.model == "closed" and rps and outcomes["timeout"]:
        why.append(f"{load.users:,} users on {rps:,.0f} req/s queue ≈ {load.users / rps:,.1f} s each on average, "
                   "and some connections starve")
    onset = next((s.t for s in rec.seconds if s.outcomes.get("connection-reset") or s.outcomes.get("timeout")), None)
    return [_finding(
        ctx, "connection-errors", onset, rule=" and ".join(parts) + (": " + "; ".join(why) if why else ""),
        summary=" and ".join(parts) + (f": {why[0]}" if why else ""),
        recommendation="a larger backlog ([app] backlog, and net.core.somaxconn), more workers or instances, or "
                       "fewer users per instance; a timeout the load can meet",
        confidence=0.7)]


def _load_imbalance(ctx: Context) -> list[Finding]:
    rec = ctx.rec
    per: dict[int, dict[int, int]] = {}  # second → worker → requests
    for pid, r in inside.records(rec, AgentTick):
        t = math.floor(r.t - rec.t0)
        per.setdefault(t, {}).setdefault(pid, 0)
        per[t][pid] += sum(route.n for route in r.routes.values())
    workers = {pid for by in per.values() for pid in by}
    if len(workers) < 2:
        return []
    top: dict[int, tuple[int, float]] = {}
    for t, by in per.items():
        total = sum(by.values())
        if total >= 20:
            pid = max(by, key=by.__getitem__)
            top[t] = (pid, by[pid] / total)
    # evidence only where it cost something: the worker that took the load was at its core meanwhile
    cpu = {pid: dict(pts) for pid, pts in proc_series(rec, "worker", "cpu", load_window(rec)).items()}
    lopsided = sorted(t for t, (pid, share) in top.items()
                      if share >= IMBALANCE and cpu.get(pid, {}).get(t, 0.0) >= WORKER_BUSY)
    if len(lopsided) < IMBALANCE_SECONDS:
        return []
    pid, _ = top[lopsided[0]]
    share = sum(top[t][1] for t in lopsided) / len(lopsided)
    instance = inside.instance_of(rec)
    who = f"worker {pid}" + (f" (instance {instance[pid]})" if pid in instance else "")
    return [_finding(
        ctx, "load-imbalance", lopsided[0],
        rule=f"{who} took {share:.0%} of the requests, at its core, in {len(lopsided)} seconds from "
             f"t={lopsided[0]}s while {len(workers) - 1} other worker(s) shared the rest",
        summary=f"the load was not spread: {who} took {share:.0%} of the requests in {len(lopsided)} seconds",
        recommendation="with several workers on one socket the kernel hands new connections to whichever accepts "
                       "first: keep-alive clients stay where they landed; more, shorter connections or a proxy "
                       "with least_conn in front spread them",
        confidence=0.7)]


def _cache_ineffective(ctx: Context, findings: list[Finding]) -> list[Finding]:
    db = next((f for f in findings if f.kind in DB_KINDS), None)
    reads = [(c.hits, c.misses) for c in ctx.rec.cache]
    hits, misses = sum(h for h, _ in reads), sum(m for _, m in reads)
    if db is None or hits + misses < 100 or hits / (hits + misses) >= CACHE_LOW:
        return []
    rate = hits / (hits + misses)
    return [_finding(
        ctx, "cache-ineffective", db.onset_t,
        rule=f"the cache answered {rate:.0%} of {hits + misses:,} reads while the database was the limit ({db.kind})",
        summary=f"the cache in front of the database hit {rate:.0%} of its reads: most still went to the database",
        recommendation="cache what is read again: a longer TTL, keys that repeat (not per-request ids), warm it "
                       "before the load, or cache a coarser result",
        confidence=0.7)]
