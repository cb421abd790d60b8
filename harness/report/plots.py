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


def timeline_png(
    rec: Recording, offered: list[tuple[float, float]] | None = None, onset_t: float | None = None
) -> bytes:
    """One PNG: throughput, latency, errors, CPU, RSS, FDs and TCP connections against time."""
    plt = _pyplot()
    secs = rec.seconds
    window = (-5.0, load_window(rec)[1] + 2.0)
    fig, axes = plt.subplots(7, 1, figsize=(11, 17), sharex=True, constrained_layout=True)
    ts = [s.t + s.span / 2 for s in secs]

    ax = axes[0]
    ax.plot(ts, [s.sent / s.span if s.span else 0 for s in secs], label="sent/s (offered)", color="#aaaaaa")
    if offered:
        ax.plot([t for t, _ in offered], [r for _, r in offered], label="offered rate", color="#555555", linestyle="--")
    ax.plot(
        ts, [s.outcomes.get("ok", 0) / s.span if s.span else 0 for s in secs], label="ok/s (achieved)", color="#1f77b4"
    )
    ax.set_ylabel("req/s")
    ax.set_title("Throughput")

    ax = axes[1]
    for q, color in ((0.5, "#2ca02c"), (0.95, "#ff7f0e"), (0.99, "#d62728")):
        ax.plot(ts, [s.hist.percentile(q) / 1000 for s in secs], label=f"p{round(q * 100)}", color=color)
    ax.set_ylabel("ms")
    ax.set_title("Latency")
    if any(s.hist.max_us > 0 for s in secs):
        ax.set_yscale("log")

    ax = axes[2]
    kinds = sorted({k for s in secs for k in s.outcomes if k != "ok"})
    for kind in kinds:
        ax.plot(ts, [s.outcomes.get(kind, 0) / s.span if s.span else 0 for s in secs], label=kind,
                color=ERROR_COLORS.get(kind))
    ax.set_ylabel("errors/s")
    ax.set_title("Errors by kind" + ("" if kinds else " (none)"))

    _per_process(axes[3], rec, "cpu", "cores", "CPU per process (1.0 = one core)", window)
    _per_process(axes[4], rec, "rss_mb", "MB", "Resident memory", window)
    _per_process(axes[5], rec, "fds", "open FDs", "File descriptors", window)

    ax = axes[6]
    for state, pts in sorted(tcp_series(rec).items()):
        ax.plot([t for t, _ in pts], [n for _, n in pts], label=state, drawstyle="steps-post")
    ax.set_ylabel("connections")
    ax.set_title("Server TCP connections by state")
    ax.set_xlabel("seconds since load start")

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.axvline(0, color="#999999", linewidth=0.8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", fontsize=8, ncol=4)
    axes[0].set_xlim(*window)
    if onset_t is not None:
        for ax in axes:
            ax.axvline(onset_t, color="#e6a700", linewidth=2)
        axes[0].annotate("first bottleneck", (onset_t, axes[0].get_ylim()[1] * 0.9), fontsize=8, color="#e6a700")
    for e in rec.events:
        if e.t is not None and e.kind in ("worker-started", "worker-exited", "target-died"):
            for ax in axes:
                ax.axvline(e.t, color="#d62728", linestyle=":", linewidth=1)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def inside_png(rec: Recording) -> bytes | None:
    """One PNG of what the agents saw: loop lag, threadpool, DB pools, GC; None without agent data."""
    lag = inside.loop_lag(rec)
    if not lag:
        return None
    plt = _pyplot()
    window = (-5.0, load_window(rec)[1] + 2.0)
    fig, axes = plt.subplots(4, 1, figsize=(11, 10), sharex=True, constrained_layout=True)
    ax = axes[0]
    for pid, pts in lag.items():
        ax.plot([t + 0.5 for t, *_ in pts], [p99 for _, _, p99, _ in pts], label=f"p99 worker {pid}")
        ax.plot([t + 0.5 for t, *_ in pts], [m for *_, m in pts], ":", label=f"max worker {pid}")
    for s in inside.stalls(rec):
        ax.axvspan(s.t, s.t + s.duration_ms / 1000, color="#d62728", alpha=0.15, linewidth=0)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylabel("ms")
    ax.set_title("Event-loop lag (shaded: stalls)")
    ax = axes[1]
    for pid, pts in inside.threadpool(rec).items():
        ax.plot([p[0] for p in pts], [p[2] for p in pts], label=f"borrowed {pid}")
        ax.plot([p[0] for p in pts], [p[3] for p in pts], "--", label=f"waiting {pid}")
        ax.axhline(pts[-1][1], color="#999999", linestyle=":", linewidth=1)
    ax.set_ylabel("threads / tasks")
    ax.set_title("anyio threadpool (dotted: token limit)")
    ax = axes[2]
    for (pid, pool_id), pts in inside.pools(rec).items():
        line = ax.plot([p.t for p in pts], [p.checked_out for p in pts], label=f"checked out {pid}")[0]
        ax.plot(
            [p.t for p in pts], [p.capacity for p in pts], ":", color=line.get_color(), label=f"size+overflow {pid}"
        )
    ax.set_ylabel("connections")
    ax.set_title("DB pools")
    ax = axes[3]
    gc = inside.gc_pause_ms(rec)
    ax.bar([t + 0.5 for t in gc], list(gc.values()), width=0.9, color="#8c564b")
    ax.set_ylabel("ms per s")
    ax.set_title("GC pauses (all workers)")
    ax.set_xlabel("seconds since load start")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", fontsize=8, ncol=4)
    axes[0].set_xlim(*window)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def _per_process(ax: Any, rec: Recording, metric: str, unit: str, title: str, window: tuple[float, float]) -> None:
    for role, style in (("worker", "-"), ("master", ":"), ("driver", "--")):
        for pid, pts in proc_series(rec, role, metric, window).items():
            ax.plot([t + 0.5 for t, _ in pts], [v for _, v in pts], style, label=f"{role} {pid}")
    ax.set_ylabel(unit)
    ax.set_title(title)
