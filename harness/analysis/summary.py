"""The run's headline numbers (the body of summary.json), computed from a Recording."""

from __future__ import annotations

from typing import Any

from harness.analysis import inside
from harness.analysis.findings import Verdict
from harness.analysis.series import load_window, max_of, p90_of_busiest, proc_series, role_pids
from harness.config import Slo
from harness.histogram import STANDARD_QUANTILES, Histogram
from harness.recording import Recording


def summarize(rec: Recording, verdict: Verdict | None = None) -> dict[str, Any]:
    """summary.json's contract: requests, throughput, latency, errors, workers, resources, verdict."""
    secs = rec.seconds
    hist = Histogram.merged(s.hist for s in secs)
    by_kind: dict[str, int] = {}
    for s in secs:
        for kind, n in s.outcomes.items():
            if kind != "ok":
                by_kind[kind] = by_kind.get(kind, 0) + n
    requests = sum(s.completed for s in secs)
    errors = sum(by_kind.values())
    duration = sum(s.span for s in secs)
    window = load_window(rec)
    server = rec.run.server
    workers = role_pids(rec, "worker")
    latency = hist.percentiles_ms(STANDARD_QUANTILES)
    latency["max"] = round(hist.max_us / 1000.0, 3)
    driver_cpu = proc_series(rec, "driver", "cpu", window)
    server_fds = {**proc_series(rec, "worker", "fds", window), **proc_series(rec, "master", "fds", window)}
    return {
        "scenario": rec.scenario.name,
        "started_at": rec.run.started_at,
        "status": rec.status,
        "duration_s": round(duration, 3),  # seconds with load (a search's pauses between stages left out)
        "elapsed_s": round(window[1], 3),  # from the load's start to its end (the clock onsets are on)
        "requests": requests,
        "throughput_rps": round(requests / duration, 2) if duration else 0.0,
        "latency_ms": latency,
        "errors": {"total": errors, "rate": round(errors / requests, 6) if requests else 0.0, "by_kind": by_kind},
        "load": {
            "model": rec.scenario.load.model,
            "sent": sum(s.sent for s in secs),
            "aborted": rec.totals.aborted,
            "dropped": sum(s.dropped for s in secs),
            "late": sum(s.late for s in secs),
            "send_lag_max_ms": max((s.lag_max_ms for s in secs), default=0.0),
            "drivers": rec.run.drivers,
        },
        "workers": len(workers) or server.workers,
        "worker_pids": workers,
        "server": server.kind,
        "resources": {
            "worker_cpu_p90": round(p90_of_busiest(proc_series(rec, "worker", "cpu", window)), 3),
            "worker_rss_max_mb": round(max_of(proc_series(rec, "worker", "rss_mb", window)), 1),
            "fds_max": int(max_of(server_fds)),
            "driver_cpu_p90": round(p90_of_busiest(driver_cpu), 3),
            "db_conns_max": int(max_of({**proc_series(rec, "worker", "db_conns", window),
                                        **proc_series(rec, "master", "db_conns", window)})),
        },
        "events": [e.to_json() for e in rec.events
                   if e.kind in ("worker-started", "worker-exited", "target-died", "node-lost")],
        "cluster": rec.run.cluster,
        "instances": summarize_instances(rec, window),
        "proxy": summarize_proxy(rec, window),
        "cache": summarize_cache(rec, window),
        "agent": summarize_inside(rec, window),
        "verdict": verdict.to_json() if verdict else None,
    }


def summarize_instances(rec: Recording, window: tuple[float, float]) -> list[dict[str, Any]] | None:
    """Behind a proxy: the requests each instance (and each of its workers) served, and its share."""
    instance = inside.instance_of(rec)
    if not instance:
        return None
    served = inside.requests_by_worker(rec, window)
    total = sum(served.values())
    out = []
    for k in sorted(set(instance.values())):
        workers = {pid: n for pid, n in served.items() if instance.get(pid) == k}
        n = sum(workers.values())
        out.append({"instance": k, "requests": n, "share": round(n / total, 4) if total else 0.0,
                    "workers": {str(pid): n for pid, n in sorted(workers.items())}})
    return out


def summarize_proxy(rec: Recording, window: tuple[float, float]) -> dict[str, Any] | None:
    """The proxy over the load: requests it handled, connections at most, what it dropped, its errors."""
    pts = [p for p in rec.proxy if window[0] <= p.t < window[1] + 1.0]
    if not pts:
        return None
    errors: dict[str, int] = {}
    for p in pts:
        for kind, n in p.errors.items():
            errors[kind] = errors.get(kind, 0) + n
    return {"kind": pts[0].kind, "requests": sum(p.requests for p in pts), "active_max": max(p.active for p in pts),
            "dropped": sum(p.dropped for p in pts), "errors": errors,
            "cpu_p90": round(p90_of_busiest(proc_series(rec, "proxy", "cpu", window)), 3)}


def summarize_cache(rec: Recording, window: tuple[float, float]) -> dict[str, Any] | None:
    """The cache over the load: its hit rate, commands per second, clients, memory, CPU, refusals."""
    pts = [c for c in rec.cache if window[0] <= c.t < window[1] + 1.0]
    if not pts:
        return None
    hits, misses = sum(c.hits for c in pts), sum(c.misses for c in pts)
    return {"kind": pts[0].kind, "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
            "hits": hits, "misses": misses, "commands_per_s": round(sum(c.commands for c in pts) / len(pts), 1),
            "clients_max": max(c.clients for c in pts), "used_mb_max": max(c.used_mb for c in pts),
            "evicted": sum(c.evicted for c in pts), "rejected": sum(c.rejected for c in pts),
            "cpu_max": max(c.cpu for c in pts)}


def summarize_inside(rec: Recording, window: tuple[float, float]) -> dict[str, Any] | None:
    """The agents' view in brief: loop lag, stall sites, hotspots, threadpool, pools, GC, profiles."""
    cover = inside.coverage(rec)
    if not cover["enabled"]:
        return None
    lag = inside.loop_lag(rec)
    categories, top = inside.hotspots(rec, window)
    tp = [pt for pts in inside.threadpool(rec).values() for pt in pts]
    pools = []
    for (pid, pool_id), pts in inside.pools(rec).items():
        acquire = Histogram.merged(p.acquire for p in pts)
        pools.append(
            {
                "pid": pid,
                "id": pool_id,
                "size": pts[-1].size,
                "max_overflow": pts[-1].max_overflow,
                "checked_out_max": max(p.checked_out for p in pts),
                "acquires": acquire.count,
                "acquire_p99_ms": round(acquire.percentile(0.99) / 1000, 3),
                "acquire_max_ms": round(acquire.max_us / 1000, 3),
                "timeouts": sum(p.timeouts for p in pts),
            }
        )
    return {
        **cover,
        "loop_lag_ms": {
            "p99_worst_second": round(max((p99 for pts in lag.values() for _, _, p99, _ in pts), default=0.0), 2),
            "max": round(max((m for pts in lag.values() for _, _, _, m in pts), default=0.0), 2),
        },
        "stall_sites": [
            {"file": s.site[0] if s.site else None, "line": s.site[1] if s.site else None,
             "function": s.site[2] if s.site else None, "kind": s.kind, "count": s.count,
             "total_ms": s.total_ms, "longest_ms": s.longest_ms, "share": s.share}
            for s in inside.stall_sites(rec)[:5]
        ],
        "hotspots": inside.busy_shares(categories),
        "top_frames": [{"category": c, "where": w, "cpu_ms": ms} for c, w, ms in top[:5]],
        "threadpool_hotspots": inside.busy_shares(inside.hotspots(rec, window, source="pool")[0]),
        "threadpool": {
            "total": max((t for _, t, _, _ in tp), default=0),
            "borrowed_max": max((b for _, _, b, _ in tp), default=0),
            "waiting_max": max((w for _, _, _, w in tp), default=0),
        } if tp else None,
        "pools": pools,
        "gc_pause_ms_max_per_s": round(max(inside.gc_pause_ms(rec).values(), default=0.0), 3),
        "profiles": inside.profiles(rec),
    }


def slo_broken(summary: dict[str, Any], slo: Slo) -> str | None:
    """Why the run broke its SLO, or None."""
    lat = summary["latency_ms"]
    for name, limit in (("p99", slo.p99_ms), ("p95", slo.p95_ms)):
        if limit and lat[name] > limit:
            return f"{name} {lat[name]:.1f} ms > SLO {limit:.0f} ms"
    if slo.error_rate and summary["errors"]["rate"] > slo.error_rate:
        return f"error rate {summary['errors']['rate']:.2%} > SLO {slo.error_rate:.2%}"
    return None
