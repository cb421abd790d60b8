"""Comparing runs: bootstrap deltas between two recordings, and per-configuration figures.

Pure functions; randomness comes from an explicit seed so results are reproducible.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

from harness.analysis.series import percentile
from harness.histogram import Histogram
from harness.recording import Recording, Second

BOOTSTRAP = 400
SERVER_ROLES = ("worker", "master")


@dataclass(frozen=True)
class Delta:
    metric: str
    a: float
    b: float
    change: float  # (b - a) / a
    low: float  # 95 % bootstrap interval of the change
    high: float

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant}


def steady_seconds(rec: Recording) -> list[Second]:
    """Whole seconds of load, the first one (start-up) left out."""
    full = [s for s in rec.seconds if s.span >= 0.99 and s.completed]
    return full[1:] if len(full) > 2 else full


def _throughput(secs: Sequence[Second]) -> float:
    return sum(s.outcomes.get("ok", 0) for s in secs) / max(len(secs), 1)


def _quantile(q: float) -> Callable[[Sequence[Second]], float]:
    def stat(secs: Sequence[Second]) -> float:
        return Histogram.merged(s.hist for s in secs).percentile(q) / 1000

    return stat


METRICS = {"throughput_rps": _throughput, "p50_ms": _quantile(0.5), "p99_ms": _quantile(0.99)}


def bootstrap_deltas(a: Recording, b: Recording, seed: int = 7, rounds: int = BOOTSTRAP) -> list[Delta]:
    """Throughput and percentile changes from ``a`` to ``b``, each with a 95 % interval (seconds resampled)."""
    sa, sb = steady_seconds(a), steady_seconds(b)
    rnd = random.Random(seed)
    out = []
    for name, stat in METRICS.items():
        va, vb = stat(sa), stat(sb)
        changes = []
        for _ in range(rounds if sa and sb else 0):
            ra = stat([rnd.choice(sa) for _ in sa])
            rb = stat([rnd.choice(sb) for _ in sb])
            if ra > 0:
                changes.append(rb / ra - 1)
        changes.sort()
        low = changes[int(0.025 * len(changes))] if changes else 0.0
        high = changes[min(len(changes) - 1, int(0.975 * len(changes)))] if changes else 0.0
        out.append(
            Delta(name, round(va, 3), round(vb, 3), round(vb / va - 1, 4) if va else 0.0, round(low, 4), round(high, 4))
        )
    return out


def regressions(deltas: Sequence[Delta], threshold: float) -> list[str]:
    """The changes that are worse than ``threshold`` (a fraction) with 95 % confidence."""
    out = []
    for d in deltas:
        if d.metric == "throughput_rps" and d.high < -threshold:
            out.append(f"throughput fell {-d.change:.1%} (95% interval {-d.high:.1%} to {-d.low:.1%})")
        if d.metric == "p99_ms" and d.low > threshold:
            out.append(f"p99 rose {d.change:.1%} (95% interval {d.low:.1%} to {d.high:.1%})")
    return out


def comparable(a: Recording, b: Recording) -> str | None:
    """Why two recordings should not be compared (different scenario or machine), or None."""
    sa, sb = a.scenario, b.scenario
    if sa.name != sb.name or sa.requests != sb.requests:
        return f"different scenarios ({sa.name!r} vs {sb.name!r}, or different requests)"
    ma, mb = a.run.machine, b.run.machine
    if (ma.hostname, ma.cpus) != (mb.hostname, mb.cpus):
        return f"different machines ({ma.hostname}/{ma.cpus} CPUs vs {mb.hostname}/{mb.cpus} CPUs)"
    return None


def config_changes(a: Recording, b: Recording) -> list[str]:
    """The scenario fields that differ between two runs, as "app.workers: 1 → 2"."""
    fa, fb = a.scenario.fields(), b.scenario.fields()
    return [f"{k}: {fa.get(k, '—')} → {fb.get(k, '—')}" for k in sorted(set(fa) | set(fb))
            if fa.get(k) != fb.get(k) and k != "source"]


def server_cpu_seconds(rec: Recording) -> float:
    """CPU-seconds the server processes used during the load (samples integrated over time)."""
    total, last = 0.0, None
    for s in rec.samples:
        if s.t < 0:
            continue
        cpu = sum(p.cpu for p in s.procs if p.role in SERVER_ROLES)
        if last is not None:
            total += cpu * (s.t - last)
        last = s.t
    return total


def peak_server_rss_mb(rec: Recording) -> float:
    return max((sum(p.rss_mb for p in s.procs if p.role in SERVER_ROLES) for s in rec.samples), default=0.0)


def host_busy_share(rec: Recording) -> float:
    """The host's median CPU use (0..1) while load ran: near 1, the shared host was the limit."""
    busy = [sum(s.host_cpu) / len(s.host_cpu) for s in rec.samples if s.t >= 0 and s.host_cpu]
    return percentile(busy, 0.5)


def spread(values: Sequence[float]) -> float:
    """Half the range of repeated measurements (0 for one)."""
    return (max(values) - min(values)) / 2 if len(values) > 1 else 0.0


def tie(a: Sequence[float], b: Sequence[float], floor: float = 0.05) -> bool:
    """Whether two configurations' results are within the noise: ranges overlap, or closer than ``floor``."""
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    if max(ma, mb) and abs(ma - mb) / max(ma, mb) < floor:
        return True
    return min(a) <= max(b) and min(b) <= max(a) and (len(a) > 1 or len(b) > 1)


def efficiency(base_rps: float, base_workers: int, rps: float, workers: int) -> float | None:
    """Scaling efficiency against the smallest worker count: 1.0 is perfectly linear."""
    if not base_rps or not base_workers or not workers:
        return None
    return (rps / base_rps) / (workers / base_workers)


def _stage_at_load(rec: Recording, load: float) -> Any:
    from harness.analysis.stages import stages

    held = [s for s in stages(rec) if s.load <= load * 1.05]
    return max(held, key=lambda s: s.load) if held else None


def sustainable_rps(summary: dict[str, Any], rec: Recording, mode: str) -> float | None:
    """The most req/s the configuration held within its SLO."""
    slo = rec.scenario.slo
    if mode == "fixed":
        held = not (slo.p99_ms and summary["latency_ms"]["p99"] > slo.p99_ms)
        held = held and summary["errors"]["rate"] <= max(slo.error_rate, 0.01)
        return summary["throughput_rps"] if held else None
    knee = (summary.get("verdict") or {}).get("knee") or {}
    # what the search's bisection after the knee held (compare refines by default), else the last step held
    refined = max((e.achieved_rps or 0.0 for e in rec.events if e.kind == "capacity"), default=0.0)
    if knee.get("last_good_rps") or refined:
        return max(float(knee.get("last_good_rps") or 0.0), refined)
    from harness.analysis.stages import stages

    ok = [s.achieved_rps for s in stages(rec) if not knee.get("stage") or s.index < knee["stage"]]
    return max(ok) if ok else None


def matrix_table(record: dict[str, Any], load: Any, cores: int) -> dict[str, Any]:
    """One row per configuration (repeats aggregated), the common load, and a recommendation."""
    mode = record["mode"]
    rows: list[dict[str, Any]] = []
    recs: dict[str, list[tuple[dict[str, Any], Recording]]] = {}
    for cfg in record["configs"]:
        runs = [r for r in record["runs"] if r["label"] == cfg["label"]]
        done = [r for r in runs if "summary" in r]
        if not done:
            rows.append(
                {
                    "label": cfg["label"],
                    "overrides": cfg["overrides"],
                    "status": "failed" if runs else "not run",
                    "error": next((r.get("error") for r in runs if r.get("error")), None),
                }
            )
            continue
        pairs = [(r["summary"], load(r["dir"])) for r in done]
        recs[cfg["label"]] = pairs
        sustained = [x for x in (sustainable_rps(s, rec, mode) for s, rec in pairs) if x is not None]
        verdicts = [(s.get("verdict") or {}) for s, _ in pairs]
        rows.append(
            {
                "label": cfg["label"],
                "overrides": cfg["overrides"],
                "status": "ok",
                "runs": len(done),
                "max_rps": round(sum(sustained) / len(sustained), 1) if sustained else None,
                "max_rps_runs": [round(x, 1) for x in sustained],
                "spread_rps": round(spread(sustained), 1),
                "cpu_s_per_1k": round(
                    sum(server_cpu_seconds(rec) / max(s["requests"], 1) * 1000 for s, rec in pairs) / len(pairs), 3
                ),
                "peak_rss_mb": round(max(peak_server_rss_mb(rec) for _, rec in pairs), 1),
                "host_busy": round(max(host_busy_share(rec) for _, rec in pairs), 3),
                "bottleneck": verdicts[0].get("bottleneck"),
                "call_site": verdicts[0].get("call_site"),
                "hotspot": verdicts[0].get("hotspot"),
                **_topology([s for s, _ in pairs]),
            }
        )
    held = [r["max_rps"] for r in rows if r.get("max_rps")]
    common = min(held) if held else None
    for row in rows:
        pairs = recs.get(row["label"])
        if not pairs:
            continue
        if mode == "fixed":
            row["p50_ms"] = round(sum(s["latency_ms"]["p50"] for s, _ in pairs) / len(pairs), 2)
            row["p99_ms"] = round(sum(s["latency_ms"]["p99"] for s, _ in pairs) / len(pairs), 2)
        elif common:
            at = [st for st in (_stage_at_load(rec, common) for _, rec in pairs) if st is not None]
            row["p50_ms"] = round(sum(st.p50_ms for st in at) / len(at), 2) if at else None
            row["p99_ms"] = round(sum(st.p99_ms for st in at) / len(at), 2) if at else None
    _efficiency(rows)
    recommendation = " ".join(filter(None, [recommend(rows, cores), topology_note(rows)]))
    return {"mode": mode, "common_load_rps": common, "rows": rows, "recommendation": recommendation}


def _topology(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """A configuration's cache hit rate and proxy CPU (means over its runs), where it had them."""
    out: dict[str, Any] = {}
    rates = [s["cache"]["hit_rate"] for s in summaries if (s.get("cache") or {}).get("hit_rate") is not None]
    if rates:
        out["hit_rate"] = round(sum(rates) / len(rates), 3)
    proxy = [s["proxy"]["cpu_p90"] for s in summaries if s.get("proxy")]
    if proxy:
        out["proxy_cpu"] = round(sum(proxy) / len(proxy), 3)
    return out


def topology_note(rows: list[dict[str, Any]]) -> str:
    """What a cache, a proxy, or more instances behind it did for throughput, each against the rows without."""
    ok = [r for r in rows if r.get("max_rps")]

    def instances(r: dict[str, Any]) -> int:
        return int(r.get("overrides", {}).get("app.instances", 0) or 0)

    def best(among: list[dict[str, Any]]) -> dict[str, Any]:
        return max(among, key=lambda r: r["max_rps"])

    pairs = []
    for key, what in (("hit_rate", "the cache"), ("proxy_cpu", "the proxy")):
        with_it, without = [r for r in ok if key in r], [r for r in ok if key not in r]
        if with_it and without:
            pairs.append((what, key, best(without), best(with_it)))
    counts = sorted({instances(r) for r in ok} - {0})
    if len(counts) > 1:
        pairs.append((f"{counts[-1]} instances", "instances", best([r for r in ok if instances(r) == counts[0]]),
                      best([r for r in ok if instances(r) == counts[-1]])))
    notes = []
    for what, key, a, b in pairs:
        change = b["max_rps"] / a["max_rps"] - 1
        clear = not tie(a["max_rps_runs"], b["max_rps_runs"])
        verb = ("helped" if change > 0.05 and clear else "hurt" if change < -0.05 and clear
                else "made no clear difference")
        cost = (f"its hit rate was {b['hit_rate']:.0%}" if key == "hit_rate" else
                (f"nginx used {b['proxy_cpu']:.2f} cores; " if "proxy_cpu" in b else "")
                + f"the server processes peaked at {b['peak_rss_mb']:,.0f} MB against {a['peak_rss_mb']:,.0f} MB")
        notes.append(f"{what[0].upper()}{what[1:]} {verb} on this host: {b['label']} {b['max_rps']:,.0f} req/s against "
                     f"{a['label']} {a['max_rps']:,.0f} ({change:+.0%}); {cost}.")
    return " ".join(notes)


def _efficiency(rows: list[dict[str, Any]]) -> None:
    """Scaling efficiency against the fewest workers among rows that differ only in workers."""
    def rest(row: dict[str, Any]) -> str:
        return repr(sorted((k, v) for k, v in row["overrides"].items() if k != "app.workers"))

    for row in rows:
        if "app.workers" not in row["overrides"] or not row.get("max_rps"):
            continue
        peers = [r for r in rows if rest(r) == rest(row) and r.get("max_rps")]
        base = min(peers, key=lambda r: int(r["overrides"]["app.workers"]))
        row["efficiency"] = round(efficiency(base["max_rps"], int(base["overrides"]["app.workers"]),
                                             row["max_rps"], int(row["overrides"]["app.workers"])) or 0.0, 3)


def recommend(rows: list[dict[str, Any]], cores: int) -> str:
    """Which configuration to pick and why; says so when the shared host is the limit or results tie."""
    ok = sorted((r for r in rows if r.get("max_rps")), key=lambda r: -r["max_rps"])
    if not ok:
        return "No configuration held the load within the SLO; see each run's verdict."
    best = ok[0]
    tied = [r for r in ok[1:] if tie(best["max_rps_runs"], r["max_rps_runs"])]
    host_limited = best["host_busy"] >= 0.9
    if tied:
        cheapest = min([best, *tied], key=lambda r: (r["cpu_s_per_1k"], r["label"]))
        within = ", ".join(r["label"] for r in [best, *tied])
        noise = (f"are within the noise of each other ({best['max_rps']:,.0f} req/s ± {best['spread_rps']:,.0f})"
                 if best["runs"] > 1 else f"are within 5 % of each other ({best['max_rps']:,.0f} req/s; one run each: "
                 "--repeat 3 measures the noise)")
        text = (f"{within} {noise}; {cheapest['label']} costs the least CPU per request "
                f"({cheapest['cpu_s_per_1k']} CPU-s per 1,000).")
        if host_limited:
            text += (
                f" The host's {cores} cores were {best['host_busy']:.0%} busy (server and load generator share them): "
                "beyond this point more workers cannot help on this machine."
            )
        return text
    text = f"{best['label']}: {best['max_rps']:,.0f} req/s sustained within the SLO"
    if "efficiency" in best and best.get("efficiency") is not None:
        base = min((r for r in ok if "efficiency" in r), key=lambda r: int(r["overrides"]["app.workers"]))
        if base is not best:
            text += (f", {best['max_rps'] / base['max_rps']:.1f}× the throughput of {base['overrides']['app.workers']} "
                     f"worker(s) at {best['efficiency']:.2f} efficiency")
    if host_limited:
        text += (
            f"; the host's {cores} cores were {best['host_busy']:.0%} busy — more workers cannot help on this machine"
        )
    return text + "."
