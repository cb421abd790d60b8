"""report.html: one self-contained page (plots embedded as PNG data URIs)."""

from __future__ import annotations

import base64
import html
import json
from typing import Any

from harness.load.shapes import OpenShape
from harness.recording import Recording
from harness.report.plots import timeline_png

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{padding:.25em .8em;border-bottom:1px solid #eee;text-align:left}
.verdict{background:#fff6e0;border-left:4px solid #e6a700;padding:.8em 1em}
.muted{color:#777}img{max-width:100%}code,pre{background:#f5f5f5;padding:.1em .3em}
"""


def _rows(pairs: list[tuple[str, Any]]) -> str:
    return "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in pairs)


def offered_curve(rec: Recording) -> list[tuple[float, float]] | None:
    """The open model's planned rate as (t, req/s) corners, or None for a closed model."""
    load = rec.scenario.get("load", {})
    if load.get("model") != "open":
        return None
    from harness.config import LoadConfig, Stage
    from harness.load.shapes import open_shape

    stages = tuple(Stage(**s) for s in load.get("stages", ()))
    cfg = LoadConfig(**{**load, "stages": stages})
    shape: OpenShape = open_shape(cfg)
    return list(shape.points)


def render_html(rec: Recording, summary: dict[str, Any]) -> str:
    """The whole report page."""
    png = base64.b64encode(timeline_png(rec, offered_curve(rec))).decode()
    lat = summary["latency_ms"]
    res = summary["resources"]
    err = summary["errors"]
    verdict = summary.get("verdict")
    verdict_html = (
        f"<div class='verdict'><b>{html.escape(verdict.get('bottleneck', ''))}</b>: "
        f"{html.escape(verdict.get('summary', ''))}</div>" if verdict else
        "<p class='muted'>No diagnosis was made for this run.</p>"
    )
    run = rec.run
    machine = run.get("machine", {})
    events = "".join(
        f"<li>t = {html.escape(str(e.get('t')))} s: {html.escape(e.get('kind', ''))} {html.escape(str(e.get('pid', '')))}</li>"
        for e in summary.get("events", [])
    ) or "<li class='muted'>none</li>"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(summary['scenario'])} — fastapi-harness</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(summary['scenario'])} <span class="muted">— {html.escape(summary['status'])}, {html.escape(summary['started_at'])}</span></h1>
<h2>Verdict</h2>
{verdict_html}
<h2>Summary</h2>
<table>{_rows([
        ("server", f"{summary['server']} × {summary['workers']} worker(s)"),
        ("requests", f"{summary['requests']:,} in {summary['duration_s']:.1f} s"),
        ("throughput", f"{summary['throughput_rps']:,.1f} req/s"),
        ("latency (ms)", ", ".join(f"{k} {v:.2f}" for k, v in lat.items())),
        ("errors", f"{err['total']:,} ({err['rate']:.2%}) {err['by_kind'] or ''}"),
        ("worker CPU p90 (busiest)", f"{res['worker_cpu_p90']:.2f} cores"),
        ("worker RSS max", f"{res['worker_rss_max_mb']:.1f} MB"),
        ("FDs max (server)", res["fds_max"]),
        ("driver CPU p90", f"{res['driver_cpu_p90']:.2f} cores"),
        ("driver", f"{summary['load']['drivers']} process(es); late {summary['load']['late']:,}, dropped {summary['load']['dropped']:,}, aborted {summary['load']['aborted']:,}"),
    ])}</table>
<h2>Timeline</h2>
<img alt="throughput, latency, errors and resources against time" src="data:image/png;base64,{png}">
<h2>Events</h2><ul>{events}</ul>
<h2>Run</h2>
<table>{_rows([
        ("machine", f"{machine.get('cpus')} CPUs, {machine.get('memory_gb')} GB, Python {machine.get('python')}"),
        ("packages", ", ".join(f"{k} {v}" for k, v in machine.get("harness_packages", {}).items())),
        ("server command", " ".join(run.get("server", {}).get("command", []) or [run.get("server", {}).get("url", "")])),
        ("FD limit", json.dumps(run.get("limits", {}))),
    ])}</table>
<h2>Scenario</h2><pre>{html.escape(json.dumps(rec.scenario, indent=2))}</pre>
</body></html>
"""
