"""Renderers for comparisons: the configuration matrix, and the diff of two runs (HTML, Markdown)."""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING, Any, Sequence

from harness.analysis.compare import Delta
from harness.report.html import STYLE, _table
from harness.report.plots import _pyplot

if TYPE_CHECKING:
    from harness.matrix import RunDiff

TABLE_HEADER = ["configuration", "status", "max req/s in SLO", "± spread", "p50 ms", "p99 ms", "CPU-s / 1k req",
                "peak RSS MB", "efficiency", "first bottleneck"]
EXTRA = {"hit_rate": "cache hit rate", "proxy_cpu": "proxy CPU (cores)"}  # columns shown when a row has them


def _extras(table: dict[str, Any]) -> list[str]:
    return [k for k in EXTRA if any(k in r for r in table["rows"])]


def header(table: dict[str, Any]) -> list[str]:
    return TABLE_HEADER[:-1] + [EXTRA[k] for k in _extras(table)] + TABLE_HEADER[-1:]


def _cells(row: dict[str, Any], extras: Sequence[str] = ()) -> list[Any]:
    site = row.get("call_site") or {}
    where = f" at {site.get('file', '').rsplit('/', 1)[-1]}:{site.get('line')}" if site else ""
    if row["status"] != "ok":
        return [row["label"], row["status"], *[""] * (7 + len(extras)), row.get("error") or ""]
    return [row["label"], "ok", row.get("max_rps") or "—",
            row.get("spread_rps", "") if row.get("runs", 1) > 1 else "1 run", row.get("p50_ms", ""),
            row.get("p99_ms", ""), row.get("cpu_s_per_1k", ""), row.get("peak_rss_mb", ""), row.get("efficiency", ""),
            *(("—" if k not in row else f"{row[k]:.0%}" if k == "hit_rate" else row[k]) for k in extras),
            f"{row.get('bottleneck') or ''}{where}"]


def render_compare_markdown(table: dict[str, Any]) -> str:
    """The comparison as a Markdown table plus the recommendation."""
    head, extras = header(table), _extras(table)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in _cells(r, extras)) + " |" for r in table["rows"]]
    common = table.get("common_load_rps")
    note = (
        f"\nLatency at the common load every configuration held: {common:,.0f} req/s."
        if common and table["mode"] != "fixed"
        else ""
    )
    return "\n".join(lines) + note + f"\n\n**Recommendation:** {table['recommendation']}\n"


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    _pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def render_compare_html(table: dict[str, Any], curves: dict[str, list[Any]], record: dict[str, Any]) -> str:
    """compare/report.html: table, throughput and p99 against load overlaid, scaling efficiency, recommendation."""
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for label, stages in curves.items():
        x = [s.load for s in stages]
        a1.plot(x, [s.achieved_rps for s in stages], "o-", label=label)
        a2.plot(x, [s.p99_ms for s in stages], "o-", label=label)
    a1.set(xlabel="offered req/s", ylabel="achieved req/s", title="Throughput against load")
    a2.set(xlabel="offered req/s", ylabel="p99 ms", title="p99 against load")
    if any(s.p99_ms > 0 for st in curves.values() for s in st):
        a2.set_yscale("log")
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    parts = [f"<img alt='curves' src='data:image/png;base64,{_png(fig)}'>"]
    eff = [r for r in table["rows"] if r.get("efficiency") is not None]
    if len(eff) > 1:
        fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
        ws = [int(r["overrides"]["app.workers"]) for r in eff]
        ax.plot(ws, [r["efficiency"] for r in eff], "o-", label="measured")
        ax.axhline(1.0, color="#999999", linestyle=":", label="ideal (linear)")
        ax.set(xlabel="workers", ylabel="scaling efficiency", title="Scaling efficiency", ylim=(0, 1.2))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        parts.append(f"<img alt='efficiency' src='data:image/png;base64,{_png(fig)}'>")
    order = ", ".join(f"{r['order']}. {r['label']} (r{r['repeat']})" for r in record["runs"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>compare — fastapi-harness</title>
<style>{STYLE}</style></head><body>
<h1>Comparison <span class="muted">— {html.escape(table['mode'])} mode, {record['repeat']} repeat(s)</span></h1>
<div class="verdict">{html.escape(table['recommendation'])}</div>
<h2>Configurations</h2>{_table(header(table), [_cells(r, _extras(table)) for r in table['rows']])}
<h2>Curves</h2>{''.join(parts)}
<h2>Run order</h2><p class="muted">{html.escape(order)}{' — interrupted' if record.get('interrupted') else ''}</p>
</body></html>
"""


DIFF_HEADER = ["metric", "before", "after", "change", "95% interval", "significant"]
STEADY = ("Figures are over whole seconds of load, the first one left out (the bootstrap resamples them); "
          "each run's own summary counts every request over its whole duration")


def _diff_rows(deltas: Sequence[Delta]) -> list[list[str]]:
    return [[d.metric, f"{d.a:,.2f}", f"{d.b:,.2f}", f"{d.change:+.1%}", f"{d.low:+.1%} … {d.high:+.1%}",
             "yes" if d.significant else "no (within noise)"] for d in deltas]


def _diff_notes(d: RunDiff) -> list[str]:
    """What differs between the two runs' configurations, the verdict's move, the gate, the summaries."""
    return [("Configuration: " + "; ".join(d.config_changes)) if d.config_changes else "Same configuration.",
            d.verdict_change or "First bottleneck unchanged.",
            f"{STEADY}: {d.summary_rps[0]:,.1f} → {d.summary_rps[1]:,.1f} req/s there.",
            *(["**Regression:** " + "; ".join(d.regressions)] if d.regressions else [])]


def render_diff_markdown(d: RunDiff) -> str:
    """A pull-request comment: the deltas with their intervals, what changed, the verdict, the gate."""
    lines = [f"### fastapi-harness diff: `{d.before.path}` → `{d.after.path}`", "",
             "| " + " | ".join(DIFF_HEADER) + " |", "|" + "---|" * len(DIFF_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in _diff_rows(d.deltas)]
    return "\n".join([*lines, "", *"\n\n".join(_diff_notes(d)).split("\n")]) + "\n"


def render_diff_html(diffs: Sequence[RunDiff]) -> str:
    """diff.html: per pair, the deltas as a table, what changed, and throughput and p99 overlaid."""
    plt = _pyplot()
    parts = []
    for d in diffs:
        fig, (a1, a2) = plt.subplots(2, 1, figsize=(11, 7), sharex=True, constrained_layout=True)
        for rec, label in ((d.before, "before"), (d.after, "after")):
            secs = rec.seconds
            a1.plot([s.t for s in secs], [s.outcomes.get("ok", 0) / (s.span or 1) for s in secs], label=label)
            a2.plot([s.t for s in secs], [s.hist.percentile(0.99) / 1000 for s in secs], label=label)
        a1.set(ylabel="ok req/s", title="Throughput")
        a2.set(ylabel="p99 ms", xlabel="seconds since load start", title="p99")
        for ax in (a1, a2):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        notes = "".join(f"<p>{html.escape(n.replace('**', ''))}</p>" for n in _diff_notes(d))
        parts.append(f"<h2>{html.escape(d.label or str(d.before.path.name))} → "
                     f"{html.escape(str(d.after.path.name))}</h2>{_table(DIFF_HEADER, _diff_rows(d.deltas))}{notes}"
                     f"<img alt='overlaid' src='data:image/png;base64,{_png(fig)}'>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>diff — fastapi-harness</title>
<style>{STYLE}</style></head><body><h1>Diff</h1>{''.join(parts)}</body></html>
"""
