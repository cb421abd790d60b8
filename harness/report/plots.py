"""Matplotlib figures on one shared time axis (Agg backend, imported lazily)."""

from __future__ import annotations

import io
from typing import Any

from harness.analysis import inside
from harness.analysis.series import load_window, proc_series, tcp_series
from harness.recording import Recording

ERROR_COLORS = {"4xx": "#e6a700", "5xx": "#d62728", "timeout": "#9467bd", "connect-refused": "#8c564b",
                "connection-reset": "#e377c2", "other": "#7f7f7f"}


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def knee_png(stages: list[Any], knee: Any, onset_t: float | None) -> bytes:
    """Offered vs achieved throughput and p50/p99 per stage, the knee marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 4.5), constrained_layout=True)
    x = [s.load for s in stages]
    ax.plot(x, [s.achieved_rps for s in stages], "o-", color="#1f77b4", label="achieved req/s")
    ax.plot(x, x, ":", color="#999999", label="offered = achieved")
    ax.set_xlabel("offered load (req/s)" if stages and stages[0].offered_rps is not None else "sent (req/s)")
    ax.set_ylabel("req/s")
    lat = ax.twinx()
    lat.plot(x, [s.p50_ms for s in stages], "s--", color="#2ca02c", label="p50 ms")
    lat.plot(x, [s.p99_ms for s in stages], "s--", color="#d62728", label="p99 ms")
    if any(s.p99_ms > 0 for s in stages):
        lat.set_yscale("log")
        plain_ms(lat)
    lat.set_ylabel("latency (ms)")
    if knee is not None:
        at = next((s.load for s in stages if s.index == knee.stage), None)
        if at is not None:
            ax.axvline(at, color="#d62728", linewidth=2, alpha=0.4)
            ax.annotate(f"knee: {knee.reason}", (at, ax.get_ylim()[1] * 0.95), fontsize=8, ha="right", color="#d62728")
    handles = ax.get_legend_handles_labels()[0] + lat.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + lat.get_legend_handles_labels()[1]
    ax.legend(handles, labels, loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def plain_ms(ax: Any, log: bool = True) -> None:
    """Plain numbers on a log-scaled latency axis (2, 5, 10, 20, 50), not 2.4×10¹ or no label at all
    when the values span less than a decade."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if log:
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.4g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


PHASE_SHADE = {"calibrate": "#9467bd", "step": "#1f77b4", "refine": "#17becf", "hold": "#e6a700"}


def _stage_spans(rec: Recording) -> list[tuple[float, float, str, str]]:
    """(start, end, phase, label) of a search's stages: calibration, steps, refinement, the hold."""
    spans, n = [], 0
    for e in rec.events:
        if e.kind == "stage" and e.t_start is not None and e.t_end is not None:
            phase = e.phase or "step"
            n += phase == "step"
            spans.append((e.t_start, e.t_end, phase, f"step {n}" if phase == "step" else phase))
    return spans


def timeline_panels(rec: Recording) -> list[str]:
    """The timeline's panels: errors and TCP connections only where there were any."""
    errors = any(k != "ok" for s in rec.seconds for k in s.outcomes)
    return ["throughput", "latency", *(["errors"] if errors else []), "cpu", "rss", "fds",
            *(["tcp"] if tcp_series(rec) else []), *(["proxy"] if rec.proxy else []),
            *(["cache"] if rec.cache else [])]


def inside_panels(rec: Recording) -> list[str]:
    """The agents' panels: loop lag, then the threadpool, DB pools and GC only where they were used."""
    used_tokens = any(p[2] or p[3] for pts in inside.threadpool(rec).values() for p in pts)
    used_pools = any(p.checked_out for pts in inside.pools(rec).values() for p in pts)
    return ["lag", *(["threadpool"] if used_tokens else []), *(["pools"] if used_pools else []),
            *(["gc"] if any(inside.gc_pause_ms(rec).values()) else [])]


def timeline_png(
    rec: Recording, offered: list[tuple[float, float]] | None = None, onset_t: float | None = None
) -> bytes:
    """One PNG: throughput, latency, then errors, CPU, RSS, FDs and TCP connections against time, each
    panel only where it has something to show; a search's stages shaded on every panel."""
    plt = _pyplot()
    secs = rec.seconds
    window = (-5.0, load_window(rec)[1] + 2.0)
    ts = [s.t + s.span / 2 for s in secs]
    spans = _stage_spans(rec)
    kinds = sorted({k for s in secs for k in s.outcomes if k != "ok"})
    tcp = tcp_series(rec)
    panels = timeline_panels(rec)
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 2.4 * len(panels) + 0.6), sharex=True,
                             constrained_layout=True)
    ax_of = dict(zip(panels, axes))

    def between_stages(values: list[float]) -> list[float]:
        """A search sends nothing between its stages: the line breaks there rather than drop to 0."""
        if not spans:
            return values
        return [v if any(a <= t < b for a, b, *_ in spans) else float("nan") for t, v in zip(ts, values)]

    ax = ax_of["throughput"]
    ax.plot(ts, between_stages([s.sent / s.span if s.span else 0 for s in secs]), label="sent/s (offered)",
            color="#aaaaaa")
    if offered:
        ax.plot([t for t, _ in offered], [r for _, r in offered], label="offered rate", color="#555555", linestyle="--")
    ax.plot(ts, between_stages([s.outcomes.get("ok", 0) / s.span if s.span else 0 for s in secs]),
            label="ok/s (achieved)", color="#1f77b4")
    ax.set_ylabel("req/s")
    ax.set_title("Throughput")

    ax = ax_of["latency"]
    for q, color in ((0.5, "#2ca02c"), (0.95, "#ff7f0e"), (0.99, "#d62728")):
        ax.plot(ts, between_stages([s.hist.percentile(q) / 1000 for s in secs]), label=f"p{round(q * 100)}",
                color=color)
    ax.set_ylabel("ms")
    ax.set_title("Latency")
    if any(s.hist.max_us > 0 for s in secs):
        ax.set_yscale("log")
        plain_ms(ax)

    if kinds:
        ax = ax_of["errors"]
        for kind in kinds:
            ax.plot(ts, [s.outcomes.get(kind, 0) / s.span if s.span else 0 for s in secs], label=kind,
                    color=ERROR_COLORS.get(kind))
        ax.set_ylabel("errors/s")
        ax.set_title("Errors by kind")

    _per_process(ax_of["cpu"], rec, "cpu", "cores", "CPU per process (1.0 = one core)", window)
    _per_process(ax_of["rss"], rec, "rss_mb", "MB", "Resident memory", window)
    _per_process(ax_of["fds"], rec, "fds", "open FDs", "File descriptors", window)

    if tcp:
        ax = ax_of["tcp"]
        for state, pts in sorted(tcp.items()):
            ax.plot([t for t, _ in pts], [n for _, n in pts], label=state, drawstyle="steps-post")
        ax.set_ylabel("connections")
        ax.set_title("Server TCP connections by state")
    if rec.proxy:
        _proxy_panel(ax_of["proxy"], rec)
    if rec.cache:
        _cache_panel(ax_of["cache"], rec)
    axes[-1].set_xlabel("seconds since load start")

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.axvline(0, color="#999999", linewidth=0.8)
        for a, b, phase, _ in spans:
            ax.axvspan(a, b, color=PHASE_SHADE.get(phase, "#1f77b4"), alpha=0.07, linewidth=0)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", fontsize=8, ncol=4)
    axes[0].set_xlim(*window)
    top = axes[0].get_ylim()[1]
    for a, b, _, label in spans:
        axes[0].annotate(label, ((a + b) / 2, top * 0.98), fontsize=7, ha="center", va="top", color="#555555")
    if onset_t is not None:
        for ax in axes:
            ax.axvline(onset_t, color="#e6a700", linewidth=2)
        axes[0].annotate("first bottleneck", (onset_t, top * 0.85), fontsize=8, color="#e6a700")
    for e in rec.events:
        if e.t is not None and e.kind in ("worker-started", "worker-exited", "target-died"):
            for ax in axes:
                ax.axvline(e.t, color="#d62728", linestyle=":", linewidth=1)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def inside_png(rec: Recording) -> bytes | None:
    """One PNG of what the agents saw: loop lag, then the threadpool, DB pools and GC where there is
    anything to show; None without agent data."""
    lag = inside.loop_lag(rec)
    if not lag:
        return None
    plt = _pyplot()
    window = (-5.0, load_window(rec)[1] + 2.0)
    threadpool, pools, gc = inside.threadpool(rec), inside.pools(rec), inside.gc_pause_ms(rec)
    panels = inside_panels(rec)
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 2.5 * len(panels) + 0.5), sharex=True,
                             constrained_layout=True, squeeze=False)
    axes = axes[:, 0]
    ax_of = dict(zip(panels, axes))
    ax = ax_of["lag"]
    for pid, pts in lag.items():
        ax.plot([t + 0.5 for t, *_ in pts], [p99 for _, _, p99, _ in pts], label=f"p99 worker {pid}")
        ax.plot([t + 0.5 for t, *_ in pts], [m for *_, m in pts], ":", label=f"max worker {pid}")
    for s in inside.stalls(rec):
        ax.axvspan(s.t, s.t + s.duration_ms / 1000, color="#d62728", alpha=0.15, linewidth=0)
    ax.set_yscale("symlog", linthresh=1.0)
    plain_ms(ax, log=False)
    ax.set_ylabel("ms")
    ax.set_title("Event-loop lag (shaded: stalls)")
    if "threadpool" in ax_of:
        ax = ax_of["threadpool"]
        for pid, pts in threadpool.items():
            ax.plot([p[0] for p in pts], [p[2] for p in pts], label=f"borrowed {pid}")
            ax.plot([p[0] for p in pts], [p[3] for p in pts], "--", label=f"waiting {pid}")
            ax.axhline(pts[-1][1], color="#999999", linestyle=":", linewidth=1)
        ax.set_ylabel("threads / tasks")
        ax.set_title("anyio threadpool (dotted: token limit)")
    if "pools" in ax_of:
        ax = ax_of["pools"]
        for (pid, _), pts in pools.items():
            line = ax.plot([p.t for p in pts], [p.checked_out for p in pts], label=f"checked out {pid}")[0]
            ax.plot([p.t for p in pts], [p.capacity for p in pts], ":", color=line.get_color(),
                    label=f"size+overflow {pid}")
        ax.set_ylabel("connections")
        ax.set_title("DB pools")
    if "gc" in ax_of:
        ax = ax_of["gc"]
        ax.bar([t + 0.5 for t in gc], list(gc.values()), width=0.9, color="#8c564b")
        ax.set_ylabel("ms per s")
        ax.set_title("GC pauses (all workers)")
    axes[-1].set_xlabel("seconds since load start")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", fontsize=8, ncol=4)
    axes[0].set_xlim(*window)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def _proxy_panel(ax: Any, rec: Recording) -> None:
    """nginx each second: the requests it passed on, its connections, and its error-log lines."""
    ts = [p.t for p in rec.proxy]
    ax.plot(ts, [p.requests for p in rec.proxy], label="requests/s", color="#1f77b4")
    errors = [sum(p.errors.values()) + p.dropped for p in rec.proxy]
    if any(errors):
        ax.plot(ts, errors, label="errors + dropped /s", color="#d62728")
    ax.set_ylabel("per second")
    right = ax.twinx()
    right.plot(ts, [p.active for p in rec.proxy], label="connections", color="#7f7f7f", linestyle="--")
    right.set_ylabel("connections")
    right.legend(loc="upper right", fontsize=7)
    ax.set_title(f"Proxy ({rec.proxy[0].kind})")


def _cache_panel(ax: Any, rec: Recording) -> None:
    """Redis each second: commands, and the share of reads that hit."""
    ts = [c.t for c in rec.cache]
    ax.plot(ts, [c.commands for c in rec.cache], label="commands/s", color="#1f77b4")
    ax.set_ylabel("commands/s")
    right = ax.twinx()
    right.plot(ts, [100 * c.hit_rate if c.hit_rate is not None else float("nan") for c in rec.cache],
               label="hit rate %", color="#2ca02c")
    right.set_ylim(0, 100)
    right.set_ylabel("hit rate %")
    right.legend(loc="upper right", fontsize=7)
    ax.set_title(f"Cache ({rec.cache[0].kind})")


def _per_process(ax: Any, rec: Recording, metric: str, unit: str, title: str, window: tuple[float, float]) -> None:
    """Each server process its own line; the load generator's processes (a fleet per step) one line, summed."""
    for role, style in (("worker", "-"), ("master", ":"), ("proxy", "-."), ("cache", "-.")):
        for pid, pts in proc_series(rec, role, metric, window).items():
            ax.plot([t + 0.5 for t, _ in pts], [v for _, v in pts], style, label=f"{role} {pid}")
    fleet: dict[int, float] = {}
    for pts in proc_series(rec, "driver", metric, window).values():
        for t, v in pts:
            fleet[t] = fleet.get(t, 0.0) + v
    if fleet:
        ax.plot([t + 0.5 for t in sorted(fleet)], [fleet[t] for t in sorted(fleet)], "--", color="#7f7f7f",
                label="load generator")
    ax.set_ylabel(unit)
    ax.set_title(title)
