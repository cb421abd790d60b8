"""The run's headline numbers (the body of summary.json), computed from a Recording."""

from __future__ import annotations

from typing import Any

from harness.analysis.series import load_window, max_of, p90_of_busiest, proc_series, role_pids
from harness.load.histogram import STANDARD_QUANTILES, Histogram
from harness.recording import Recording


def summarize(rec: Recording, verdict: dict[str, Any] | None = None) -> dict[str, Any]:
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
    server = rec.run.get("server", {})
    workers = role_pids(rec, "worker")
    latency = hist.percentiles_ms(STANDARD_QUANTILES)
    latency["max"] = round(hist.max_us / 1000.0, 3)
    driver_cpu = proc_series(rec, "driver", "cpu", window)
    server_fds = {**proc_series(rec, "worker", "fds", window), **proc_series(rec, "master", "fds", window)}
    return {
        "scenario": rec.scenario.get("name", ""),
        "started_at": rec.run.get("started_at", ""),
        "status": rec.status,
        "duration_s": round(duration, 3),
        "requests": requests,
        "throughput_rps": round(requests / duration, 2) if duration else 0.0,
        "latency_ms": latency,
        "errors": {"total": errors, "rate": round(errors / requests, 6) if requests else 0.0, "by_kind": by_kind},
        "load": {
            "model": rec.scenario.get("load", {}).get("model", ""),
            "sent": sum(s.sent for s in secs),
            "aborted": rec.totals["aborted"],
            "dropped": sum(s.dropped for s in secs),
            "late": sum(s.late for s in secs),
            "send_lag_max_ms": max((s.lag_max_ms for s in secs), default=0.0),
            "drivers": rec.run.get("drivers", 0),
        },
        "workers": len(workers) or int(server.get("workers") or 0),
        "worker_pids": workers,
        "server": server.get("kind", ""),
        "resources": {
            "worker_cpu_p90": round(p90_of_busiest(proc_series(rec, "worker", "cpu", window)), 3),
            "worker_rss_max_mb": round(max_of(proc_series(rec, "worker", "rss_mb", window)), 1),
            "fds_max": int(max_of(server_fds)),
            "driver_cpu_p90": round(p90_of_busiest(driver_cpu), 3),
        },
        "events": [e for e in rec.events if e.get("kind") != "stopped"],
        "verdict": verdict,
    }
