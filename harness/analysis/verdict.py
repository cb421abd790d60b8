"""The verdict: validity first, then the earliest finding that coincides with the knee.

Ties (onsets within a second of each other) are broken in causal order: the driver, the
loop, CPU, the threadpool, pools, FDs, memory, errors. Everything else found is listed as
secondary. ``server-errors`` names the first bottleneck only when its onset precedes every
resource's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.analysis.detectors import CAUSAL_ORDER, Context, run_detectors
from harness.analysis.findings import Finding, Onset, Secondary, Verdict
from harness.analysis.knee import Knee, find_knee, fit_usl
from harness.analysis.series import role_pids
from harness.analysis.stages import Stage, calibration_windows, timeline
from harness.analysis.stages import stages as stages_of
from harness.recording import Recording

TIE_S = 1.0
NO_KNEE_NEEDED = ("fd-exhausted", "memory-growth", "server-errors")


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
    workers = len(role_pids(rec, "worker")) or rec.run.server.workers or 1
    workers = min(workers, rec.scenario.app.workers or workers)
    return Context(rec=rec, tl=tl, stages=st, knee=knee, slo_p99_ms=slo.p99_ms, slo_errors=slo.error_rate,
                   cores=rec.run.machine.cpus or 1, workers=workers, calibration=tuple(calibration_windows(rec)))


def diagnose(rec: Recording, extra_detectors: tuple[str, ...] = ()) -> Diagnosis:
    """Stages, knee, findings and the verdict of a recording."""
    ctx = context(rec)
    findings = run_detectors(ctx, extra_detectors)
    return Diagnosis(ctx.stages, ctx.knee, findings, verdict_of(findings, ctx))


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
    chosen = min(tied, key=lambda f: rank.get(f.kind, len(rank)))
    if chosen.kind == "server-errors":
        # errors name the bottleneck only when they come before every resource onset
        resources = [f for f in timed if f.kind != "server-errors" and f.onset_t <= chosen.onset_t + TIE_S]  # type: ignore[operator]
        if resources:
            chosen = min(resources, key=lambda f: (f.onset_t, rank.get(f.kind, 99)))
    return chosen


def verdict_of(findings: list[Finding], ctx: Context) -> Verdict:
    """The first bottleneck among ``findings``, or ``none``."""
    knee = ctx.knee
    usl = fit_usl(ctx.stages) if len(ctx.stages) >= 4 else None
    knee_dict = {**knee.to_dict(), "usl": usl.to_dict() if usl else None} if knee else (
        {"usl": usl.to_dict()} if usl else None)
    invalid = [f for f in findings if f.kind == "load-generator-saturated"]
    if invalid:
        f = invalid[0]
        return _verdict(
            f, [], knee_dict, "The run is invalid: the load generator, not the app, limited it — " + f.rule + "."
        )
    knee_end = next((s.t_end for s in ctx.stages if knee and s.index == knee.stage), None)
    chosen = first_bottleneck(findings, knee, knee_end)
    if knee is None and chosen is not None and chosen.kind not in NO_KNEE_NEEDED and not _slo_broken(ctx):
        # a saturated resource while the app still held the load is worth telling, not a bottleneck yet
        secondary = findings
        chosen = None
    else:
        secondary = [f for f in findings if f is not chosen]
    if chosen is None:
        held = max((s.achieved_rps for s in ctx.stages), default=0.0)
        slo = f" within its SLO (p99 ≤ {ctx.slo_p99_ms:.0f} ms)" if ctx.slo_p99_ms else ""
        text = (f"No bottleneck: the app held the whole offered load{slo}, up to {held:,.0f} req/s."
                if knee is None else f"The load broke the app at the knee ({knee.reason}) but no detector found why; "
                                     "look at the profiles and the timeline.")
        return Verdict(
            bottleneck="none",
            summary=text,
            evidence=(f"knee: {knee.reason}",) if knee else (),
            recommendation=""
            if knee is None
            else "profile at the knee (fastapi-harness diagnose) and read the hotspots",
            confidence=0.8 if knee is None else 0.3,
            secondary=_secondary(secondary),
            knee=knee_dict,
            findings=tuple(findings),
        )
    return _verdict(chosen, secondary, knee_dict, _sentence(chosen, ctx))


def _slo_broken(ctx: Context) -> bool:
    return any(s.p99_ms > ctx.slo_p99_ms for s in ctx.stages) if ctx.slo_p99_ms else False


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
    where = f"from {f.onset_offered_rps:,.0f} req/s (t = {f.onset_t:.0f} s)" if f.onset_offered_rps else (
        f"from t = {f.onset_t:.0f} s" if f.onset_t is not None else "")
    knee = ctx.knee
    p99 = f"; p99 went {knee.baseline_p99_ms:.0f} ms → {knee.p99_ms:.0f} ms" if knee else ""
    cpu = max(ctx.tl.worker_cpu.values(), default=0.0)
    tail = (
        f" while worker CPU peaked at {cpu:.0%} of a core"
        if f.kind in ("event-loop-blocked", "db-pool-exhausted", "threadpool-exhausted")
        else ""
    )
    advice = f.recommendation[:1].upper() + f.recommendation[1:]
    return f"First bottleneck: {f.summary or f.kind}, {where}{p99}{tail}. {advice}."
