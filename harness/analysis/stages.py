"""Load stages and per-second signals on one timeline.

A stage is a stretch of steady offered load: the steps diagnose mode drove (``stage``
events), the scenario's ``[[load.stages]]``, or, for a plain run, equal windows of the run.
Every signal — driver, sampler, agents — is reduced to one value per second here, so
detectors compare like with like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

from harness.analysis import inside
from harness.analysis.series import load_window, percentile, proc_series
from harness.histogram import Histogram
from harness.recording import Recording, Second
from harness.records import Event

PLAIN_STAGE_S = 5  # window length when a plain run has no stages of its own


@dataclass(frozen=True)
class Stage:
    index: int
    t_start: float
    t_end: float
    offered_rps: float | None  # open model: the planned rate
    users: int | None  # closed model: the virtual users
    sent_rps: float
    achieved_rps: float  # ok responses per second
    answered_rps: float  # responses of any outcome per second
    requests: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    concurrency: float  # mean requests in flight (Little's law's N)
    worker_cpu: float  # busiest worker's mean CPU (cores)
    loop_lag_p99_ms: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def load(self) -> float:
        """What was offered: the planned rate, else what was sent."""
        return self.offered_rps if self.offered_rps is not None else self.sent_rps


@dataclass
class Timeline:
    """Per-second series, keyed by whole second since t0."""

    seconds: list[int] = field(default_factory=list)
    ok: dict[int, float] = field(default_factory=dict)
    sent: dict[int, float] = field(default_factory=dict)
    errors: dict[int, float] = field(default_factory=dict)
    p99_ms: dict[int, float] = field(default_factory=dict)
    worker_cpu: dict[int, float] = field(default_factory=dict)  # busiest worker
    worker_cpu_all: dict[int, list[float]] = field(default_factory=dict)
    loop_cpu: dict[int, float] = field(default_factory=dict)  # busiest worker's main (loop) thread, once a second
    server_db_cpu: dict[int, float] = field(default_factory=dict)  # the database server's processes together
    driver_cpu: dict[int, float] = field(default_factory=dict)  # busiest driver
    host_cpu: dict[int, float] = field(default_factory=dict)  # mean over cores, 0..1
    foreign_cpu: dict[int, float] = field(default_factory=dict)  # cores used on the host by everything else
    runq: dict[int, float] = field(default_factory=dict)  # busiest worker's runnable-but-waiting s/s
    lag_p99_ms: dict[int, float] = field(default_factory=dict)  # worst worker
    stalled_ms: dict[int, float] = field(default_factory=dict)
    fds: dict[int, float] = field(default_factory=dict)  # fullest server process
    fd_ratio: dict[int, float] = field(default_factory=dict)  # fds / its limit
    rss_mb: dict[int, float] = field(default_factory=dict)  # all workers together
    late: dict[int, int] = field(default_factory=dict)


def search_end(rec: Recording) -> Event | None:
    """How diagnose mode's search ended (``why``: knee, max-time, max-rate, max-users, collapse), if it did."""
    return next((e for e in reversed(rec.events) if e.kind == "search-ended"), None)


def collapsed(rec: Recording) -> bool:
    """Diagnose mode's calibration found the app collapsed: that burst is then the run's one stage."""
    end = search_end(rec)
    return end is not None and end.why == "collapse"


def calibration_windows(rec: Recording) -> list[tuple[float, float]]:
    """Diagnose mode's calibration bursts: saturated on purpose, so no onset may come from them
    (unless the app collapsed under one: then it is what the run is about)."""
    if collapsed(rec):
        return []
    marks = [e for e in rec.events if e.kind == "stage" and e.t_start is not None and e.t_end is not None]
    # a burst's effects last until the next stage starts (its requests drain in between)
    return [(e.t_start, marks[i + 1].t_start if i + 1 < len(marks) else e.t_end + 1)  # type: ignore[misc, operator]
            for i, e in enumerate(marks) if e.phase == "calibrate"]


def timeline(rec: Recording) -> Timeline:
    """Every signal of the run reduced to one value per second (calibration bursts left out)."""
    skip = calibration_windows(rec)
    tl = _timeline(rec)
    if skip:
        for name, series in vars(tl).items():
            if isinstance(series, dict):
                for t in [t for t in series if any(lo <= t < hi for lo, hi in skip)]:
                    del series[t]
        tl.seconds = [t for t in tl.seconds if not any(lo <= t < hi for lo, hi in skip)]
    return tl


def _timeline(rec: Recording) -> Timeline:
    tl = Timeline()
    for s in rec.seconds:
        span = s.span or 1.0
        tl.seconds.append(s.t)
        tl.ok[s.t] = s.outcomes.get("ok", 0) / span
        tl.sent[s.t] = s.sent / span
        tl.errors[s.t] = s.errors / span
        tl.p99_ms[s.t] = s.hist.percentile(0.99) / 1000
        tl.late[s.t] = s.late
    window = load_window(rec)
    for pts in proc_series(rec, "worker", "cpu", window).values():
        for t, v in pts:
            tl.worker_cpu_all.setdefault(t, []).append(v)
            tl.worker_cpu[t] = max(tl.worker_cpu.get(t, 0.0), v)
    for pts in proc_series(rec, "worker", "main_cpu", window).values():
        for t, v in pts:
            tl.loop_cpu[t] = max(tl.loop_cpu.get(t, 0.0), v)
    for pts in proc_series(rec, "database", "cpu", window).values():
        for t, v in pts:
            tl.server_db_cpu[t] = tl.server_db_cpu.get(t, 0.0) + v
    for pts in proc_series(rec, "driver", "cpu", window).values():
        for t, v in pts:
            tl.driver_cpu[t] = max(tl.driver_cpu.get(t, 0.0), v)
    for role in ("worker", "master"):
        for pid, pts in proc_series(rec, role, "fds", window).items():
            limits = dict(proc_series(rec, role, "fd_limit", window).get(pid, []))
            for t, v in pts:
                tl.fds[t] = max(tl.fds.get(t, 0.0), v)
                if limits.get(t):
                    tl.fd_ratio[t] = max(tl.fd_ratio.get(t, 0.0), v / limits[t])
    for pts in proc_series(rec, "worker", "rss_mb", window).values():
        for t, v in pts:
            tl.rss_mb[t] = tl.rss_mb.get(t, 0.0) + v
    host: dict[int, list[float]] = {}
    foreign: dict[int, list[float]] = {}
    for s in rec.samples:
        if window[0] <= s.t < window[1] and s.host_cpu:
            t = math.floor(s.t)
            host.setdefault(t, []).append(sum(s.host_cpu) / len(s.host_cpu))
            # what the host did beyond the run's own processes (server, drivers, database, harness)
            foreign.setdefault(t, []).append(max(0.0, sum(s.host_cpu) - sum(p.cpu for p in s.procs)))
    tl.host_cpu = {t: sum(v) / len(v) for t, v in host.items()}
    tl.foreign_cpu = {t: sum(v) / len(v) for t, v in foreign.items()}
    for pts in proc_series(rec, "worker", "runq", window).values():
        for t, v in pts:
            tl.runq[t] = max(tl.runq.get(t, 0.0), v)
    # the agents stream from the workers' start: only the seconds of load count (boot is not load)
    for pts in inside.loop_lag(rec).values():
        for t, _, p99, _ in pts:
            if window[0] <= t < window[1]:
                tl.lag_p99_ms[t] = max(tl.lag_p99_ms.get(t, 0.0), p99)
    for st in inside.stalls(rec):
        if window[0] <= st.t < window[1]:
            tl.stalled_ms[math.floor(st.t)] = tl.stalled_ms.get(math.floor(st.t), 0.0) + st.duration_ms
    return tl


def stage_bounds(rec: Recording) -> list[tuple[float, float, float | None, int | None]]:
    """(start, end, offered rate, users) of each stage of the run."""
    kept = ("step", "calibrate") if collapsed(rec) else ("step",)
    marked = [e for e in rec.events if e.kind == "stage" and (e.phase or "step") in kept]
    if marked:
        return [(e.t_start or 0.0, e.t_end or 0.0, e.offered_rps, e.users) for e in marked]
    load = rec.scenario.load
    end = load_window(rec)[1]
    if load.model == "open" and load.stages:
        out, t = [], 0.0
        for st in load.stages:
            out.append((t, min(t + st.duration_s, end), float(st.rate), None))
            t += st.duration_s
        return [b for b in out if b[0] < end]
    offered = float(load.rate) if load.model == "open" else None
    users = load.users if load.model == "closed" else None
    start = load.ramp_s if load.model == "open" else load.ramp_up_s
    start = min(start, max(0.0, end - PLAIN_STAGE_S))
    n = max(1, int((end - start) // PLAIN_STAGE_S))
    width = (end - start) / n
    return [(start + i * width, start + (i + 1) * width, offered, users) for i in range(n)]


def stages(rec: Recording, tl: Timeline | None = None) -> list[Stage]:
    """Per-stage throughput, latency, errors, concurrency and the key resources."""
    tl = tl or timeline(rec)
    out = []
    for i, (lo, hi, offered, users) in enumerate(stage_bounds(rec)):
        stage = stage_from_seconds(i, lo, hi, offered, users, rec.seconds, tl)
        if stage is not None:
            out.append(stage)
    return out


def stage_from_seconds(index: int, lo: float, hi: float, offered: float | None, users: int | None,
                       seconds: Sequence[Second], tl: Timeline | None = None) -> Stage | None:
    """A stage from the driver seconds in [lo, hi); its first second is skipped when it is long enough."""
    settle = lo + 1.0 if hi - lo >= 3.0 else lo  # the step's own transient
    secs = [s for s in seconds if settle <= s.t and s.t + s.span <= hi + 1e-6] or [s for s in seconds if lo <= s.t < hi]
    if not secs:
        return None
    span = sum(s.span for s in secs) or 1.0
    completed = sum(s.completed for s in secs)
    hist = Histogram.merged(s.hist for s in secs)
    ts = [s.t for s in secs]
    return Stage(
        index=index, t_start=lo, t_end=hi, offered_rps=offered, users=users,
        sent_rps=sum(s.sent for s in secs) / span,
        achieved_rps=sum(s.outcomes.get("ok", 0) for s in secs) / span,
        answered_rps=completed / span,
        requests=completed, errors=sum(s.errors for s in secs),
        p50_ms=hist.percentile(0.5) / 1000, p90_ms=hist.percentile(0.9) / 1000, p99_ms=hist.percentile(0.99) / 1000,
        concurrency=sum(s.inflight for s in secs) / len(secs),
        worker_cpu=_mean([tl.worker_cpu[t] for t in ts if t in tl.worker_cpu]) if tl else 0.0,
        loop_lag_p99_ms=percentile([tl.lag_p99_ms[t] for t in ts if t in tl.lag_p99_ms], 0.5) if tl else 0.0,
    )


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def stage_at(stages_: list[Stage], t: float) -> Stage | None:
    """The stage running at time ``t`` (between two stages: the one that just ran)."""
    started = [s for s in stages_ if s.t_start <= t]
    return started[-1] if started else None


def sustained_onset(
    series: dict[int, float], test: Callable[[float], bool], need: int = 2, within: int = 3
) -> int | None:
    """The first second from which ``test(value)`` holds in ``need`` of the ``within`` seconds starting there.

    One bad second (a GC pause, one slow request) is not an onset.
    """
    ts = sorted(series)
    for i, t in enumerate(ts):
        if not test(series[t]):
            continue
        window = [series[x] for x in ts[i:] if x - t < within]
        if len(window) >= need and sum(1 for v in window if test(v)) >= need:
            return t
    return None
