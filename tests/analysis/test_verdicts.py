"""The verdict's newer rules on committed recordings: unexplained knees, CPU plateaus, a collapsed
calibration, a search that ran out of budget, the host's own contention."""

from __future__ import annotations

import dataclasses

import pytest

from harness.analysis.detectors import _cpu_plateau
from harness.analysis.stages import Stage
from harness.analysis.verdict import diagnose
from harness.histogram import Histogram
from harness.recording import Recording
from harness.records import DriverDone, DriverSecond, Event
from tests.conftest import DATA


def load(name: str) -> Recording:
    return Recording.load(DATA / name)


def quieter(rec: Recording, factor: float) -> Recording:
    """``rec`` with every process's and the host's CPU scaled by ``factor`` and the agents' view dropped:
    the same knee, with no resource near its limit."""
    samples = tuple(dataclasses.replace(s, host_cpu=tuple(c * factor for c in s.host_cpu),
                                        procs=tuple(dataclasses.replace(p, cpu=p.cpu * factor) for p in s.procs))
                    for s in rec.samples)
    return dataclasses.replace(rec, samples=samples, agents={})


def test_a_knee_no_rule_explains_is_unexplained_with_what_was_ruled_out():
    d = diagnose(quieter(load("diagnose_fast"), 0.5))  # a knee (throughput stopped following), CPU at half
    v = d.verdict
    assert v.bottleneck == "unexplained", v.summary
    assert "no rule explains why" in v.summary and v.onset.t_s == d.knee.t_s
    ruled = [e for e in v.evidence if e.startswith("ruled out")]
    assert len(ruled) == 8 and any("the busiest worker peaked at 0.5" in e for e in ruled)
    assert "profiles" in v.recommendation  # a diagnose run: its own profiles, not "run diagnose"
    assert diagnose(quieter(load("diagnose_fast"), 0.9)).verdict.bottleneck == "cpu-saturated"  # near the rule


def _stage(i: int, load: float, cpu: float) -> Stage:
    return Stage(index=i, t_start=4.0 * i, t_end=4.0 * i + 4, offered_rps=load, users=None, sent_rps=load,
                 achieved_rps=load, answered_rps=load, requests=1000, errors=0, p50_ms=5, p90_ms=8, p99_ms=10,
                 concurrency=1.0, worker_cpu=cpu, loop_lag_p99_ms=1.0)


@pytest.mark.parametrize("cpus,expected", [
    ((0.50, 0.72, 0.73), 4.0),  # stops rising at 0.72 of a core while the load rose 50 %: CPU-bound
    ((0.50, 0.72, 0.79), None),  # still rising (+10 %)
    ((0.50, 0.66, 0.66), None),  # flat, but below 0.7 of a core: something else limits it
])
def test_a_cpu_plateau_near_its_threshold(cpus, expected):
    plateau = _cpu_plateau([_stage(i, 100 * 1.5 ** i, c) for i, c in enumerate(cpus)])
    assert (plateau[0] if plateau else None) == expected


def test_a_search_that_ran_out_of_time_says_so():
    rec = load("diagnose_health")
    ended = dataclasses.replace(rec, events=(*rec.events, Event(30.0, "search-ended", why="max-time",
                                                                offered_rps=200.0)))
    v = diagnose(ended).verdict
    assert v.bottleneck == "none" and "search ended on its --max-time budget" in v.summary


def test_a_collapsed_calibration_is_the_verdict_in_those_words():
    rec = load("diagnose_sync_sleep")
    calib = next(e for e in rec.events if e.kind == "stage" and e.phase == "calibrate")
    # as if the burst had got nothing back: the app collapsed under its users
    secs = [dataclasses.replace(r, outcomes={"timeout": 1}, hist=Histogram())
            if isinstance(r, DriverSecond) and calib.t_start <= r.t < calib.t_end else r for r in rec.driver_records]
    events = (*(e for e in rec.events if e.phase != "step"),  # a collapsed calibration is not stepped from
              Event(calib.t_end, "search-ended", why="collapse", users=calib.users))
    d = diagnose(dataclasses.replace(rec, driver_records=tuple(secs), events=events))
    assert d.knee is not None and d.knee.reason.startswith(f"the app collapsed at {calib.users} users")
    assert [s.index for s in d.stages] == [0] and "collapsed" in d.verdict.summary
    assert "p99 went" not in d.verdict.summary


def test_a_busy_host_is_a_validity_verdict_naming_the_other_processes():
    v = diagnose(load("run_host_contended")).verdict
    assert v.bottleneck == "host-contended" and v.invalid and v.secondary == ()
    assert "processes outside the run used" in v.evidence[0]
    assert [e.split(" (pid")[0] for e in v.evidence[1:3]] == ["python", "python"]  # the two busy loops


def test_the_same_host_quiet_is_not_contended():
    rec = load("run_host_contended")
    ours = dataclasses.replace(rec, samples=tuple(  # as if the busy loops had been part of the run
        dataclasses.replace(s, host_cpu=tuple(min(1.0, c) * 0.3 for c in s.host_cpu), foreign=None)
        for s in rec.samples))
    assert diagnose(ours).verdict.bottleneck != "host-contended"


def test_a_run_saturated_from_its_first_second_says_so():
    v = diagnose(load("run_blocking_from_start")).verdict
    assert v.bottleneck == "event-loop-blocked" and "saturated from the start at" in v.summary
    assert "p99 went" not in v.summary and v.call_site.function == "blocking" and v.onset.t_s >= 0


@pytest.mark.parametrize("share,invalid", [(0.52, True), (0.48, False)])
def test_a_run_answered_mostly_4xx_is_invalid_naming_the_status_and_path(share, invalid):
    rec = load("smoke_run")
    records = []
    for r in rec.driver_records:
        if isinstance(r, DriverSecond) and r.outcomes.get("ok"):
            refused = round(r.outcomes["ok"] * share)
            r = dataclasses.replace(r, outcomes={**r.outcomes, "ok": r.outcomes["ok"] - refused, "4xx": refused})
        elif isinstance(r, DriverDone):
            r = dataclasses.replace(r, statuses=(("GET /fsat", 404, 1000),))
        records.append(r)
    v = diagnose(dataclasses.replace(rec, driver_records=tuple(records))).verdict
    assert (v.bottleneck == "client-errors") is invalid, v.summary
    if invalid:
        assert v.invalid and "404 for GET /fsat" in v.summary and f"({share:.0%})" in v.summary


@pytest.mark.parametrize("after,source", [(1.0, "py-spy"), (3.9, "py-spy"), (4.1, "agent")])
def test_a_profile_that_overlaps_the_window_is_its_cpu_samples(after, source):
    """An onset a second into the hold still reads the hold's py-spy profile, which began just before it."""
    from harness.analysis.inside import cpu_hotspots

    rec = load("diagnose_middleware")
    (profile,) = [p for p in rec.cpu_profiles if p.samples]
    hot = cpu_hotspots(rec, (profile.t_start + after, float("inf")))
    assert hot.source == source and bool(hot.why_not) is (source == "agent")


def test_a_failed_profile_says_why_in_the_evidence():
    """py-spy that could not attach: the CPU samples are the agent's, and the evidence says what py-spy said."""
    rec = load("diagnose_middleware")
    failed = "py-spy failed (exit 1): Permission denied (os error 13)"
    profiles = tuple(dataclasses.replace(p, samples=0, stacks=(), error=failed) for p in rec.cpu_profiles)
    v = diagnose(dataclasses.replace(rec, cpu_profiles=profiles)).verdict
    assert v.bottleneck == "cpu-saturated"
    assert f"CPU samples from the agent's sampler on the loop thread (py-spy did not run: {failed})" in v.evidence


@pytest.mark.parametrize("cause,expected", [("connections refused", "server-errors"), (None, "cpu-saturated")])
def test_errors_with_a_known_cause_outrank_an_earlier_resource(cause, expected):
    from harness.analysis.findings import Finding
    from harness.analysis.verdict import first_bottleneck

    cpu = Finding("cpu-saturated", 1.0, "worker ≥ 80 %", "more workers", 0.85)
    errors = Finding("server-errors", 9.0, "error rate 12 %", "fewer connections", 0.9, cause=cause)
    assert first_bottleneck([cpu, errors], None, None).kind == expected


@pytest.mark.parametrize("refused,fires", [(6, True), (4, False)])
def test_refused_connections_in_one_second_are_the_verdict_past_the_error_limit(refused, fires):
    """The pools grew past PostgreSQL's max_connections in the first second only: 2 workers × 40 against 50."""
    rec = load("run_pg_refused")
    records = []
    for r in rec.driver_records:  # that second's failures scaled to `refused` 5xx (1 % of ≈ 500 is the limit)
        if isinstance(r, DriverSecond) and r.outcomes.get("5xx"):
            r = dataclasses.replace(r, outcomes={"ok": r.outcomes["ok"], "5xx": refused})
        records.append(r)
    v = diagnose(dataclasses.replace(rec, driver_records=tuple(records))).verdict
    assert (v.bottleneck == "server-errors") is fires, v.summary
    if fires:
        assert "the database refuses connections" in v.summary and "= 80 connections against max_connections = 50" \
            in v.summary


def test_steal_time_is_named_when_the_hypervisor_took_the_cpu():
    rec = load("run_host_contended")
    # as on a busy VM: nobody on this machine to name, the CPU went to other machines
    stolen = dataclasses.replace(rec, samples=tuple(
        dataclasses.replace(s, foreign=() if s.foreign is not None else None,
                            steal=0.9 if s.foreign is not None else None) for s in rec.samples))
    v = diagnose(stolen).verdict
    assert v.bottleneck == "host-contended" and "steal time" in v.summary and "hypervisor" in v.summary, v.summary
    assert "steal time" not in diagnose(rec).verdict.summary  # busy loops on this machine: named as processes
