"""The terminal's view of a run: the live progress line and the final summary table."""

from __future__ import annotations

import io
import os
import shutil
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.records import Progress


def format_progress(p: Progress) -> str:
    """One line: where the run stands (a search's step and budget), req/s, p99, errors.

    Past its planned end a run is draining (requests still in flight), and says so.
    """
    def clock(elapsed: float, planned: float | None) -> str:
        if planned and elapsed > planned + 0.05:
            return f"{planned:.0f} s + draining {elapsed - planned:.1f} s"
        return f"{elapsed:5.1f}/{planned:.0f} s" if planned else f"{elapsed:5.1f} s"

    where = (f"{p.step}  {clock(p.step_elapsed_s, p.step_planned_s)}"
             + (f" · {p.elapsed_s:.0f}/{p.budget_s:.0f} s budget" if p.budget_s else "")
             if p.step else clock(p.elapsed_s, p.planned_s))
    rate = f"{p.rps:8,.0f} req/s" if p.rps is not None else "       — req/s"
    p99 = f"p99 {p.p99_ms:8.1f} ms" if p.p99_ms is not None else "p99        — ms"
    done = f"  {p.requests:,}/{p.planned_requests:,} req" if p.planned_requests else f"  {p.requests:,} req"
    return f"[{where}] {rate}   {p99}   errors {p.errors:,}{done}"


def requests_line(summary: dict[str, Any]) -> str:
    """"10,026 in 5.0 s", or for a search "428 in 26.7 s of load, over 35.0 s" (onsets are on the latter clock)."""
    load, elapsed = summary["duration_s"], summary.get("elapsed_s", 0.0)
    over = f" of load, over {elapsed:.1f} s" if elapsed - load > 1.0 else ""
    return f"{summary['requests']:,} in {load:.1f} s{over}"


def by_kind(err: dict[str, Any]) -> str:
    """Errors by kind in words: ": timeout 470, 5xx 3" (empty when there were none)."""
    return (": " + ", ".join(f"{k} {n:,}" for k, n in sorted(err["by_kind"].items(), key=lambda kv: -kv[1]))
            if err["by_kind"] else "")


def topology_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """What ran beside the app: each instance's share of the requests, the proxy, the load nodes of a
    --cluster run (each one's clock offset to the harness's and its uncertainty), the cache."""
    rows = []
    if summary.get("instances"):
        rows.append(("instances", "  ".join(f"#{i['instance']} {i['requests']:,} ({i['share']:.0%})"
                                            for i in summary["instances"])))
    proxy = summary.get("proxy")
    if proxy:
        errors = ", ".join(f"{k} {n:,}" for k, n in proxy["errors"].items())
        rows.append(("proxy", f"{proxy['kind']}: {proxy['requests']:,} requests, {proxy['active_max']} connections at "
                              f"most, CPU p90 {proxy['cpu_p90']:.2f} cores" + (f", dropped {proxy['dropped']:,}"
                                                                               if proxy["dropped"] else "")
                     + (f"; errors: {errors}" if errors else "")))
    cluster = summary.get("cluster")
    if cluster:
        rows.append(("load nodes", "  ".join(
            f"#{n['node']} {n['host']} drivers {','.join(map(str, n['drivers'])) or '-'} clock "
            f"{n['offset_ms']:+.2f} ± {n['uncertainty_ms']:.2f} ms" + (f" LOST at t={n['lost_at']:.0f}s"
                                                                    if n["lost_at"] is not None else "")
            for n in cluster["nodes"])))
    cache = summary.get("cache")
    if cache:
        rate = f"{cache['hit_rate']:.0%}" if cache["hit_rate"] is not None else "no reads"
        rows.append(("cache", f"{cache['kind']}: hit rate {rate} ({cache['hits']:,} hits, {cache['misses']:,} misses), "
                              f"{cache['commands_per_s']:,.0f} commands/s, CPU max {cache['cpu_max']:.2f} cores"
                     + (f", rejected {cache['rejected']:,}" if cache["rejected"] else "")))
    return rows


def format_summary(summary: dict[str, Any], run_dir: str, width: int | None = None) -> str:
    """The final summary table as plain text (rich-rendered), as wide as the terminal (at least 100
    columns), so paths are not cut mid-way on a wide one."""
    from rich.console import Console
    from rich.table import Table

    lat = summary["latency_ms"]
    res = summary["resources"]
    err = summary["errors"]
    table = Table(title=f"{summary['scenario']} — {summary['status']}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("server", f"{summary['server']} × {summary['workers']} worker(s)"),
        ("requests", requests_line(summary)),
        ("throughput", f"{summary['throughput_rps']:,.1f} req/s"),
        ("latency ms", "  ".join(f"{k} {lat[k]:.2f}" for k in ("p50", "p90", "p95", "p99", "p999", "max"))),
        ("errors", f"{err['total']:,} ({err['rate']:.2%})" + by_kind(err)),
        ("worker CPU p90", f"{res['worker_cpu_p90']:.2f} cores (busiest worker)"),
        ("worker RSS max", f"{res['worker_rss_max_mb']:.1f} MB"),
        ("FDs max", f"{res['fds_max']}"),
        ("driver CPU p90", f"{res['driver_cpu_p90']:.2f} cores"),
    ]
    rows += topology_rows(summary)
    load = summary.get("load", {})
    if load.get("dropped") or load.get("late") or load.get("aborted"):
        rows.append(("driver", f"late {load['late']:,}  dropped {load['dropped']:,}  aborted {load['aborted']:,}"))
    for why in dict.fromkeys(e for p in (summary.get("agent") or {}).get("profiles", ()) for e in p["errors"]):
        rows.append(("profiles", why))  # the same for every worker of one interpreter: said once
    if summary["server"] == "external" and summary.get("agent") is None:
        rows.append(("inside", "not seen: outside only. Start the app under `python -m fastapi_harness_agent --sink …` "
                               "and pass --agent-sink PORT to see stalls, pools and hotspots"))
    for e in summary.get("events", []):
        rows.append(("event", f"t={e.get('t')} {e.get('kind')} {e.get('pid', e.get('node', ''))}"))
    verdict = summary.get("verdict")
    if verdict:
        rows.insert(0, ("verdict", f"{verdict['bottleneck']}: {verdict['summary']}"))
        for i, also in enumerate(verdict.get("secondary", ()), 1):
            rows.insert(i, ("also found", f"{also['bottleneck']}: {also['summary']}"))
    rows.append(("report", os.path.join(run_dir, "report.html")))
    for k, v in rows:
        table.add_row(k, v)
    buf = io.StringIO()
    width = width or max(100, shutil.get_terminal_size((100, 24)).columns)
    Console(file=buf, width=width, force_terminal=False, color_system=None).print(table)
    return buf.getvalue()
