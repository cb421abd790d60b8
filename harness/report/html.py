"""report.html: one self-contained page (plots embedded as PNG data URIs)."""

from __future__ import annotations

import base64
import html
import json
from typing import Any

from harness.analysis import inside
from harness.analysis.findings import readable_paths
from harness.analysis.verdict import Diagnosis
from harness.recording import Recording
from harness.report.plots import inside_png, knee_png, timeline_png
from harness.report.terminal import by_kind, requests_line, topology_rows
from harness.shapes import open_shape

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{padding:.25em .8em;border-bottom:1px solid #eee;text-align:left}
.verdict{background:#fff6e0;border-left:4px solid #e6a700;padding:.8em 1em}
.muted{color:#777}.warn{color:#a40}img{max-width:100%}code,pre{background:#f5f5f5;padding:.1em .3em}
"""


STALLS_WORTH_SHARE = 0.01  # of the run's time stalled, for stalls without an app frame to get a table


def _rows(pairs: list[tuple[str, Any]]) -> str:
    return "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in pairs)


def offered_curve(rec: Recording) -> list[tuple[float, float]] | None:
    """The open model's planned rate as (t, req/s) corners, or None for a closed model."""
    if rec.scenario.load.model != "open":
        return None
    return list(open_shape(rec.scenario.load).points)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def inside_section(rec: Recording, summary: dict[str, Any]) -> str:
    """The agents' section: coverage, stall sites, hotspots, pools, threadpool, profiles, plots."""
    agent = summary.get("agent")
    if not agent and rec.scenario.url:
        return ("<h2>Inside the workers</h2><p class='muted'>Outside only: the server was already running and no "
                "agent streamed from inside it. Start it with <code>python -m fastapi_harness_agent --sink …</code> "
                "and give <code>--agent-sink PORT</code> to see stalls, pools and hotspots.</p>")
    if not agent:
        return "<h2>Inside the workers</h2><p class='muted'>The in-process agent was off for this run.</p>"
    parts = ["<h2>Inside the workers</h2>"]
    if agent["missing"] or agent["gaps"]:
        parts.append(
            "<p class='verdict'>Agent coverage is incomplete: "
            + html.escape(f"no stream from worker(s) {agent['missing']}; " if agent["missing"] else "")
            + html.escape(
                "; ".join(f"worker {g['pid']} lost {g['lost']} records ({g['error']})" for g in agent["gaps"])
            )
            + "</p>"
        )
    png = inside_png(rec)
    if png:
        parts.append(
            f"<img alt='loop lag, threadpool, pools, GC' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        )
    sites = agent["stall_sites"]
    stalled_ms = sum(s["total_ms"] for s in sites)
    # a few short stalls with no app frame (a busy loop's scheduling) are not worth a table
    worth = any(s["file"] for s in sites) or stalled_ms >= STALLS_WORTH_SHARE * 1000 * summary["duration_s"]
    parts.append("<h3>Event-loop stall sites</h3>" + (_table(
        ["site", "function", "kind", "stalls", "total ms", "longest ms", "share"],
        [[f"{s['file']}:{s['line']}" if s["file"] else "(no app frame)", s["function"] or "", s["kind"], s["count"],
          s["total_ms"], s["longest_ms"], f"{s['share']:.0%}"] for s in sites],
    ) if worth else "<p class='muted'>" + (
        f"No stall worth naming ({sum(s['count'] for s in sites)} short ones without an app frame, "
        f"{stalled_ms:,.0f} ms in all)." if sites else "No stall longer than the threshold.") + "</p>"))
    parts.append("<h3>Hotspots (share of the event-loop thread's busy CPU time)</h3>" + _table(
        ["category", "share"], [[k, f"{v:.0%}"] for k, v in agent["hotspots"].items()]))
    parts.append(
        _table(["category", "where", "CPU ms"], [[f["category"], f["where"], f["cpu_ms"]] for f in agent["top_frames"]])
    )
    if agent["threadpool_hotspots"]:
        parts.append("<p>Threadpool threads' busy time: " + html.escape(
            ", ".join(f"{k} {v:.0%}" for k, v in agent["threadpool_hotspots"].items())) + "</p>")
    if agent["threadpool"]:
        tp = agent["threadpool"]
        parts.append(f"<h3>Threadpool</h3><p>{tp['borrowed_max']} of {tp['total']} tokens borrowed at most; "
                     f"up to {tp['waiting_max']} tasks waiting.</p>")
    if agent["pools"]:
        parts.append(
            "<h3>DB pools</h3>"
            + _table(
                [
                    "worker",
                    "pool",
                    "size",
                    "max overflow",
                    "checked out max",
                    "acquires",
                    "acquire p99 ms",
                    "acquire max ms",
                    "timeouts",
                ],
                [
                    [
                        p["pid"],
                        p["id"],
                        p["size"],
                        p["max_overflow"],
                        p["checked_out_max"],
                        p["acquires"],
                        p["acquire_p99_ms"],
                        p["acquire_max_ms"],
                        p["timeouts"],
                    ]
                    for p in agent["pools"]
                ],
            )
        )
    if agent["profiles"]:
        links = "".join(
            f"<li>worker {p['pid']}: "
            + ", ".join([f"<a href='{html.escape(f)}'>{html.escape(f)}</a>" for f in p["files"]]
                        + [f"<span class='warn'>{html.escape(e)}</span>" for e in p["errors"]])
            + "</li>"
            for p in agent["profiles"]
        )
        parts.append(f"<h3>Profiles</h3><ul>{links}</ul>")
    return "\n".join(parts)


def verdict_section(diagnosis: Diagnosis | None, app_dir: str | None = None) -> str:
    """The verdict in words, its evidence and fix, secondary findings, the knee plot and USL figures."""
    if diagnosis is None:
        return "<p class='muted'>No diagnosis was made for this run.</p>"
    v = diagnosis.verdict
    onset_t = v.onset.t_s if v.onset else None
    rows: list[tuple[str, Any]] = [("bottleneck", v.bottleneck), ("confidence", f"{v.confidence:.0%}")]
    if v.onset:
        rows.append(("onset", ", ".join(x for x in (
            f"t = {v.onset.t_s:.0f} s" if v.onset.t_s is not None else "",
            f"offered {v.onset.offered_rps:,.0f} req/s" if v.onset.offered_rps is not None else "",
            f"{v.onset.users} users" if v.onset.users is not None else "") if x)))
    if v.call_site:
        rows.append(("call site", readable_paths(f"{v.call_site} in {v.call_site.function}()", app_dir)))
    if v.hotspot:
        rows.append(("hotspot", v.hotspot))
    parts = [f"<div class='verdict'><b>{html.escape(v.bottleneck)}</b> — {html.escape(v.summary)}</div>",
             f"<table>{_rows(rows)}</table>"]
    if v.evidence:
        parts.append("<h3>Evidence</h3><ul>" + "".join(f"<li>{html.escape(e)}</li>" for e in v.evidence) + "</ul>")
    if v.recommendation:
        parts.append(f"<h3>What to change</h3><p>{html.escape(v.recommendation)}</p>")
    if v.secondary:
        parts.append("<h3>Also found</h3><ul>" + "".join(
            f"<li><b>{html.escape(s.bottleneck)}</b>: {html.escape(s.summary)}</li>" for s in v.secondary) + "</ul>")
    if len(diagnosis.stages) >= 2:  # one stage is a dot, not a curve
        png = knee_png(diagnosis.stages, diagnosis.knee, onset_t)
        parts.append(
            "<h3>Load stages and the knee</h3><img alt='knee' "
            f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        )
        parts.append(
            _table(
                [
                    "stage",
                    "offered req/s",
                    "users",
                    "achieved req/s",
                    "p50 ms",
                    "p99 ms",
                    "errors",
                    "worker CPU",
                    "loop lag p99 ms",
                ],
                [
                    [
                        s.index,
                        f"{s.offered_rps:.0f}" if s.offered_rps is not None else "",
                        s.users or "",
                        f"{s.achieved_rps:.0f}",
                        f"{s.p50_ms:.1f}",
                        f"{s.p99_ms:.1f}",
                        f"{s.error_rate:.1%}",
                        f"{s.worker_cpu:.2f}",
                        f"{s.loop_lag_p99_ms:.1f}",
                    ]
                    for s in diagnosis.stages
                ],
            )
        )
    knee = v.knee or {}
    if knee.get("usl"):
        u = knee["usl"]
        parts.append(
            f"<p>Universal Scalability Law over {u['stages']} stages: λ = {u['lambda']} req/s per unit of "
            f"concurrency, σ (contention) = {u['sigma']}, κ (coherency) = {u['kappa']}"
            + (
                f"; throughput peaks at {u['peak_rps']} req/s near {u['peak_concurrency']} in flight"
                if u.get("peak_rps")
                else ""
            )
            + ".</p>"
        )
    return "\n".join(parts)


def _app_runtime(rec: Recording) -> str:
    """Python and the key packages of the app's interpreter (which --python may make another than the harness's)."""
    runtime = inside.app_runtime(rec)
    if runtime is None:
        return "not seen (no agent stream)"
    python, versions = runtime
    return f"Python {python}" + "".join(f", {k} {v}" for k, v in versions.items())


def render_html(rec: Recording, summary: dict[str, Any], diagnosis: Diagnosis | None = None) -> str:
    """The whole report page, verdict first."""
    onset = diagnosis.verdict.onset.t_s if diagnosis and diagnosis.verdict.onset else None
    png = base64.b64encode(timeline_png(rec, offered_curve(rec), onset)).decode()
    lat = summary["latency_ms"]
    res = summary["resources"]
    err = summary["errors"]
    load = summary["load"]
    run = rec.run
    machine = run.machine
    events = (
        "".join(
            f"<li>t = {html.escape(str(e.get('t')))} s: {html.escape(e.get('kind', ''))} "
            f"{html.escape(str(e.get('pid') or ''))}</li>"
            for e in summary.get("events", [])
        )
        or "<li class='muted'>none</li>"
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(summary['scenario'])} — fastapi-harness</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(summary['scenario'])}
<span class="muted">— {html.escape(summary['status'])}, {html.escape(summary['started_at'])}</span></h1>
<h2>Verdict</h2>
{verdict_section(diagnosis, None if rec.scenario.url else rec.scenario.app.app_dir)}
<h2>Summary</h2>
<table>{_rows([
        ("server", f"{summary['server']} × {summary['workers']} worker(s)"),
        ("requests", requests_line(summary)),
        ("throughput", f"{summary['throughput_rps']:,.1f} req/s"),
        ("latency (ms)", ", ".join(f"{k} {v:.2f}" for k, v in lat.items())),
        ("errors", f"{err['total']:,} ({err['rate']:.2%})" + by_kind(err)),
        ("worker CPU p90 (busiest)", f"{res['worker_cpu_p90']:.2f} cores"),
        ("worker RSS max", f"{res['worker_rss_max_mb']:.1f} MB"),
        ("FDs max (server)", res["fds_max"]),
        ("driver CPU p90", f"{res['driver_cpu_p90']:.2f} cores"),
        ("driver", f"{load['drivers']} process(es); late {load['late']:,}, dropped {load['dropped']:,}, "
                   f"aborted {load['aborted']:,}"),
        *topology_rows(summary),
    ])}</table>
<h2>Timeline</h2>
<img alt="throughput, latency, errors and resources against time" src="data:image/png;base64,{png}">
{inside_section(rec, summary)}
<h2>Events</h2><ul>{events}</ul>
<h2>Run</h2>
<table>{_rows([
        ("machine", f"{machine.cpus} CPUs, {machine.memory_gb} GB, Python {machine.python}"),
        ("the app's interpreter", _app_runtime(rec)),
        ("the harness's packages", ", ".join(f"{k} {v}" for k, v in machine.harness_packages.items())),
        ("server command", " ".join(run.server.command) or run.server.url),
        ("FD limit", json.dumps(dict(run.limits))),
    ])}</table>
<h2>Scenario</h2>
<table>{_rows([(k, "" if v is None else v) for k, v in rec.scenario.fields().items() if v not in ({}, [], ())])}</table>
</body></html>
"""
