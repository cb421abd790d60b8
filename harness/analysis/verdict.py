"""The verdict: validity first, then the earliest finding that coincides with the knee.

Ties (onsets within a second of each other) are broken in causal order: the driver, the
loop, CPU, the threadpool, pools, FDs, memory, errors. Everything else found is listed as
secondary. ``server-errors`` names the first bottleneck only when its onset precedes every
resource's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from harness.analysis import inside, topology
from harness.analysis.detectors import (
    CAUSAL_ORDER,
    DRIVER_BUSY,
    FOREIGN_CORES,
    LOOP_BLOCKED_MS,
    PLATEAU_CPU,
    WORKER_BUSY,
    Context,
    run_detectors,
)
from harness.analysis.findings import INVALID, Finding, Onset, Secondary, Verdict, readable_paths
from harness.analysis.knee import Knee, find_knee, fit_usl
from harness.analysis.series import role_pids
from harness.analysis.stages import Stage, calibration_windows, collapsed, search_end, timeline
from harness.analysis.stages import stages as stages_of
from harness.recording import Recording

TIE_S = 0.5  # onsets are whole seconds: only those in the same second tie


@dataclass(frozen=True)
class Diagnosis:
    stages: list[Stage]
    knee: Knee | None
    findings: list[Finding]
    verdict: Verdict


def context(rec: Recording) -> Context:
    """Everything the detectors look at, computed once."""
    tl = timeline(rec)
    st = stages_of(rec, tl)
    slo = rec.scenario.slo
    knee = find_knee(st, slo.p99_ms, slo.error_rate)
    if collapsed(rec) and st:
        s = st[0]
        knee = Knee(stage=s.index, t_s=s.t_start, offered_rps=None, users=s.users, last_good_rps=None,
                    reason=f"the app collapsed at {s.users} users: {s.requests} responses in "
                           f"{s.t_end - s.t_start:.0f} s", baseline_p99_ms=0.0, p99_ms=round(s.p99_ms, 2))
    workers = len(role_pids(rec, "worker")) or rec.run.server.workers or 1
    workers = min(workers, rec.scenario.app.workers * rec.scenario.app.instances or workers)
    return Context(rec=rec, tl=tl, stages=st, knee=knee, slo_p99_ms=slo.p99_ms, slo_errors=slo.error_rate,
                   cores=rec.run.machine.cpus or 1, workers=workers, calibration=tuple(calibration_windows(rec)))


def diagnose(rec: Recording, extra_detectors: tuple[str, ...] = ()) -> Diagnosis:
    """Stages, knee, findings and the verdict of a recording."""
    ctx = context(rec)
    findings = run_detectors(ctx, extra_detectors)
    v = verdict_of(findings, ctx)
    beside = [] if v.invalid else topology.notes(ctx, findings)
    if beside:  # about the shape of the run, never its first bottleneck
        v = dataclasses.replace(v, secondary=(*v.secondary, *_secondary(beside)),
                                evidence=(*v.evidence, *(f.rule for f in beside)))
    return Diagnosis(ctx.stages, ctx.knee, findings + beside, v)


def first_bottleneck(findings: list[Finding], knee: Knee | None, knee_end: float | None) -> Finding | None:
    """The finding that names the first bottleneck, or None."""
    if not findings:
        return None
    timed = [f for f in findings if f.onset_t is not None]
    if knee is not None and knee_end is not None:
        pool = [f for f in timed if f.onset_t <= knee_end + TIE_S] or timed
    else:
        pool = timed
    if not pool:
        return findings[0]
    rank = {k: i for i, k in enumerate(CAUSAL_ORDER)}
    earliest = min(f.onset_t for f in pool)  # type: ignore[type-var]
    tied = [f for f in pool if f.onset_t <= earliest + TIE_S]  # type: ignore[operator]
    # errors with a known cause (the database refused connections: workers × pool above its limit) are
    # the verdict whenever they come before the knee's end: the CPU or a pool saturating first does not
    # fix requests that fail, and which onset comes first is a race between the pools' growth and the load
    chosen = next((f for f in pool if f.kind == "server-errors" and f.cause), None) or min(
        tied, key=lambda f: rank.get(f.kind, len(rank)))
    if chosen.kind == "server-errors" and not chosen.cause:
        # errors name the bottleneck only when they come before every resource onset
        resources = [f for f in timed if f.kind != "server-errors" and f.onset_t <= chosen.onset_t + TIE_S]  # type: ignore[operator]
        if resources:
            chosen = min(resources, key=lambda f: (f.onset_t, rank.get(f.kind, 99)))
    return chosen


INVALID_WHY = {"client-errors": "most requests were answered 4xx, so it measured the app's error responses",
               "load-generator-saturated": "the load generator, not the app, limited it",
               "host-contended": "processes outside the run took the CPU the app needed"}


def verdict_of(findings: list[Finding], ctx: Context) -> Verdict:
    """The first bottleneck among ``findings``; ``unexplained`` when something gave and no rule says
    why; ``none`` only when the app held the load, latency stayed flat and nothing saturated. Paths in
    its words are the app's relative to its directory, a library's from its package."""
    v = _verdict_of(findings, ctx)
    lost = servers_lost(ctx.rec)
    if lost:
        v = dataclasses.replace(v, summary=f"{v.summary} {lost}", evidence=(*v.evidence, lost))
    app_dir = None if ctx.rec.scenario.url else ctx.rec.scenario.app.app_dir

    def short(text: str) -> str:
        return readable_paths(text, app_dir)

    return dataclasses.replace(
        v, summary=short(v.summary), recommendation=short(v.recommendation),
        evidence=tuple(short(e) for e in v.evidence),
        secondary=tuple(dataclasses.replace(s, summary=short(s.summary)) for s in v.secondary))


def servers_lost(rec: Recording) -> str:
    """A sentence on what stopped while the load ran and the run went on: server processes that exited
    (an instance behind a proxy, a worker its master did not replace in time), with what the proxy saw,
    and the services beside the app that stopped answering (Redis, nginx); else ""."""
    hi = rec.seconds[-1].t + 1.0 if rec.seconds else 0.0
    during = [e for e in rec.events if e.t is not None and 0.0 <= e.t < hi]
    exited = [e for e in during if e.kind == "worker-exited"]
    sentences = []
    if exited:
        instance = inside.instance_of(rec)
        which = ", ".join(f"pid {e.pid}" + (f" (instance {instance[e.pid]})" if e.pid in instance else "")
                          + f" at t={e.t:.0f}s" for e in exited)
        connect = sum(p.errors.get("upstream-connect", 0) for p in rec.proxy if p.t >= exited[0].t)
        seen = (f"; the proxy logged {connect:,} failed connections to it and sent the requests elsewhere"
                if connect else "")
        sentences.append(f"Mid-run, a server process exited: {which}{seen}; the figures after it are of what was "
                         "left.")
    for e in during:
        if e.kind == "node-lost":
            sentences.append(f"Mid-run, load node {e.node} ({e.host}) stopped answering at t={e.t:.0f}s: the run is "
                             "degraded from then on — its share of the load was not sent elsewhere, so the offered "
                             "load after it is what the other nodes sent.")
        if e.kind == "watcher-stopped":
            service, _, why = (e.why or "").partition(": ")  # the session writes "Service: error"
            sentences.append(f"Mid-run, {service} stopped answering at t={e.t:.0f}s ({why}); what the app did after "
                             "it is in the errors and exceptions by route.")
    return " ".join(sentences)


def _verdict_of(findings: list[Finding], ctx: Context) -> Verdict:
    knee = ctx.knee
    usl = fit_usl(ctx.stages) if len(ctx.stages) >= 4 else None
    knee_dict = {**knee.to_dict(), "usl": usl.to_dict() if usl else None} if knee else (
        {"usl": usl.to_dict()} if usl else None)
    invalid = [f for f in findings if f.kind in INVALID]
    if invalid:
        f = invalid[0]
        return _verdict(f, [], knee_dict, f"The run is invalid: {INVALID_WHY[f.kind]} — {f.rule}.")
    chosen = first_bottleneck(findings, knee, ctx.knee_end)
    if chosen is not None:
        return _verdict(chosen, [f for f in findings if f is not chosen], knee_dict, _sentence(chosen, ctx))
    if knee is not None:
        return _unexplained(ctx, knee, knee_dict)
    held = max((s.achieved_rps for s in ctx.stages), default=0.0)
    slo = f" within its SLO (p99 ≤ {ctx.slo_p99_ms:.0f} ms)" if ctx.slo_p99_ms else ""
    end = search_end(ctx.rec)
    budget = (f"; the search ended on its --{end.why} budget before anything gave: raise it to look further"
              if end is not None and end.why in ("max-time", "max-rate", "max-users") else "")
    return Verdict(bottleneck="none", summary=f"No bottleneck: the app held the whole offered load{slo}, up to "
                                              f"{held:,.0f} req/s{budget}.",
                   recommendation="", confidence=0.8, knee=knee_dict)


def _unexplained(ctx: Context, knee: Knee, knee_dict: dict[str, Any] | None) -> Verdict:
    """Something gave and no rule explains it: what was ruled out, with its numbers, and where the time went."""
    after = (knee.t_s, float("inf"))
    _, top = inside.hotspots(ctx.rec, after)
    hot = next(((c, w, ms) for c, w, ms in top if c == "app-code"), top[0] if top else None)
    waited = inside.waits(ctx.rec, after)
    where = "".join([
        f"; requests waited most in {waited[0].kind}" + (f" at {waited[0].site}" if waited[0].site else "")
        + f" ({waited[0].share:.0%} of their waiting time)" if waited else "",
        f"; the hottest frame after it was {hot[1]} ({hot[0]}, {hot[2]:.0f} ms of CPU)" if hot else ""])
    profiled = ctx.rec.run.mode == "diagnose"
    return Verdict(
        bottleneck="unexplained", onset=Onset(knee.t_s, knee.offered_rps, knee.users),
        summary=f"The load broke the app at the knee ({knee.reason}) and no rule explains why{where}.",
        evidence=(f"knee: {knee.reason}", *ruled_out(ctx)),
        recommendation="read the workers' profiles taken at the knee (the report links them) and the timeline"
                       if profiled else "run `fastapi-harness diagnose` on this scenario: it profiles every worker "
                                        "at the knee",
        confidence=0.3, knee=knee_dict,
    )


def ruled_out(ctx: Context) -> list[str]:
    """Each rule that did not fire, with the numbers it saw, for an ``unexplained`` verdict."""
    tl = ctx.tl
    tp = [pt for pts in inside.threadpool(ctx.rec).values() for pt in pts]
    pools = [p for pts in inside.pools(ctx.rec).values() for p in pts]
    fd = max(tl.fd_ratio.values(), default=0.0)
    out = [
        f"ruled out the load generator: its busiest process used {max(tl.driver_cpu.values(), default=0.0):.2f} "
        f"of a core (rule: ≥ {DRIVER_BUSY:.2f})",
        f"ruled out the host: other processes used at most {max(tl.foreign_cpu.values(), default=0.0):.2f} cores "
        f"(rule: ≥ {FOREIGN_CORES})",
        f"ruled out a blocked loop: loop-lag p99 peaked at {max(tl.lag_p99_ms.values(), default=0.0):.0f} ms "
        f"(rule: ≥ {LOOP_BLOCKED_MS:.0f} ms with the worker mostly idle)",
        f"ruled out CPU: the busiest worker peaked at {max(tl.worker_cpu.values(), default=0.0):.2f} of a core "
        f"(rule: ≥ {WORKER_BUSY:.2f}, or a plateau ≥ {PLATEAU_CPU:.2f}) and the host at "
        f"{max(tl.host_cpu.values(), default=0.0):.0%}",
        (f"ruled out the threadpool: at most {max(b for _, _, b, _ in tp)} of {tp[-1][1]} tokens borrowed"
         if tp else "ruled out the threadpool: no sync endpoint ran (anyio's limiter unused)"),
        (f"ruled out DB pools: at most {max(p.checked_out for p in pools)} of {pools[-1].capacity} connections "
         "checked out" if pools else "ruled out DB pools: no SQLAlchemy pool was used"),
        f"ruled out file descriptors: at most {fd:.0%} of the limit",
    ]
    errors = sum(s.errors for s in ctx.rec.seconds)
    requests = sum(s.completed for s in ctx.rec.seconds)
    out.append(f"ruled out errors: {errors:,} of {requests:,} requests failed")
    return out


def _secondary(findings: list[Finding]) -> tuple[Secondary, ...]:
    return tuple(Secondary(f.kind, f.summary or f.rule) for f in findings)


def _verdict(f: Finding, secondary: list[Finding], knee: dict[str, Any] | None, summary: str) -> Verdict:
    return Verdict(
        bottleneck=f.kind, summary=summary, onset=Onset(f.onset_t, f.onset_offered_rps, f.onset_users),
        call_site=f.call_site, hotspot=f.hotspot, evidence=(f.rule, *f.evidence), recommendation=f.recommendation,
        confidence=f.confidence, secondary=_secondary(secondary), knee=knee, findings=(f, *secondary),
    )


def _sentence(f: Finding, ctx: Context) -> str:
    """'First bottleneck: …, from 40 req/s (t = 6 s); p99 went 12 ms → 840 ms while …'."""
    knee = ctx.knee
    first = ctx.stages[0] if ctx.stages else None
    from_start = (first is not None and f.onset_t is not None and f.onset_t <= first.t_end
                  and (knee is None or knee.stage == first.index) and not collapsed(ctx.rec)
                  and f.kind != "server-errors")  # errors are no saturation
    if from_start:
        # no stage before the load broke the app: it was saturated from the first one
        where = f"saturated from the start at {first.achieved_rps:,.0f} req/s" + (
            f" ({first.users} users)" if first.users else "")
        knee = None  # no baseline to have risen from
    elif f.onset_offered_rps:
        where = f"from {f.onset_offered_rps:,.0f} req/s (t = {f.onset_t:.0f} s)"
    else:
        where = f"from t = {f.onset_t:.0f} s" if f.onset_t is not None else ""
    if knee is None:
        p99 = ""
    elif collapsed(ctx.rec) or knee.p99_ms < 1.2 * knee.baseline_p99_ms:
        p99 = f"; {knee.reason}"  # latency did not rise (much): say what did give
    else:
        p99 = f"; p99 went {knee.baseline_p99_ms:.0f} ms → {knee.p99_ms:.0f} ms"
    cpu = max(ctx.tl.worker_cpu.values(), default=0.0)
    tail = (
        f" while worker CPU peaked at {cpu:.0%} of a core"
        if f.kind in ("event-loop-blocked", "db-pool-exhausted", "threadpool-exhausted", "http-client-pool-exhausted",
                      "lock-contention")
        else ""
    )
    advice = f.recommendation[:1].upper() + f.recommendation[1:]
    return f"First bottleneck: {f.summary or f.kind}, {where}{p99}{tail}. {advice}."
