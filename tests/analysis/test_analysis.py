"""Detectors, knee and verdict on committed recordings (no processes), including borderline and noisy ones."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from harness.analysis.detectors import theil_sen
from harness.analysis.findings import Verdict
from harness.analysis.knee import find_knee, fit_usl
from harness.analysis.stages import Stage, stages, sustained_onset
from harness.analysis.summary import summarize
from harness.analysis.verdict import diagnose
from harness.histogram import Histogram
from harness.recording import Recording
from harness.records import AgentTick, DriverSecond
from tests.conftest import DATA


def load(name: str) -> Recording:
    return Recording.load(DATA / name)


@pytest.mark.parametrize("name,kind,hotspot,function", [
    ("diagnose_blocking", "event-loop-blocked", None, "blocking"),
    ("diagnose_cpu_json", "cpu-saturated", "json-serialization", None),
    ("diagnose_log", "cpu-saturated", "logging", "log_heavily"),
    ("diagnose_db", "db-pool-exhausted", None, None),
    ("diagnose_sync_sleep", "threadpool-exhausted", None, "sync_sleep"),
    ("diagnose_leak_fd", "fd-exhausted", None, None),
    ("diagnose_leak_memory", "memory-growth", None, None),
    ("diagnose_fast", "cpu-saturated", "framework", None),
    ("diagnose_health", "none", None, None),
    ("diagnose_starved", "load-generator-saturated", None, None),
])
def test_known_recordings(name, kind, hotspot, function):
    v = diagnose(load(name)).verdict
    assert v.bottleneck == kind, v.summary
    assert Verdict.from_json(json.loads(json.dumps(v.to_json()))) == v  # summary.json's verdict reads back
    assert v.hotspot == hotspot
    if function:
        assert v.call_site.function == function and v.call_site.file.endswith("sample_app/main.py")
    if kind not in ("none", "load-generator-saturated"):
        assert v.onset.t_s is not None and v.recommendation and 0 < v.confidence <= 1


def test_invalid_run_claims_nothing_else():
    v = diagnose(load("diagnose_starved")).verdict
    assert v.secondary == () and v.invalid and "load generator" in v.summary


def test_blocked_loop_is_named_with_its_evidence():
    v = diagnose(load("diagnose_blocking")).verdict
    assert v.knee["offered_rps"] and v.onset.offered_rps
    assert "`blocking()`" in v.summary
    assert any("stalls" in e for e in v.evidence)
    assert "worker CPU" in v.summary and "await" in v.recommendation


def test_pool_finding_says_whether_the_database_was_busy():
    v = diagnose(load("diagnose_db")).verdict
    assert any("SQLite runs inside the worker" in e for e in v.evidence)
    assert any("acquire wait p99" in e for e in v.evidence)


def test_fd_onset_precedes_the_errors():
    d = diagnose(load("diagnose_leak_fd"))
    fd = next(f for f in d.findings if f.kind == "fd-exhausted")
    errors = next(f for f in d.findings if f.kind == "server-errors")
    assert fd.onset_t <= errors.onset_t


def _with_agent_ticks(rec: Recording, change) -> Recording:
    agents = {
        pid: tuple(change(r) if isinstance(r, AgentTick) else r for r in rows) for pid, rows in rec.agents.items()
    }
    return dataclasses.replace(rec, agents=agents)


def test_a_short_gc_pause_is_not_a_blocked_loop():
    rec = load("diagnose_health")
    ticks = [r for rows in rec.agents.values() for r in rows if isinstance(r, AgentTick)]
    victim = ticks[len(ticks) // 2].seq
    noisy = _with_agent_ticks(rec, lambda r: dataclasses.replace(r, lag_ms=(*r.lag_ms, 45.0), gc_pause_ms=45.0,
                                                                 gc_collections=(0, 0, 1)) if r.seq == victim else r)
    d = diagnose(noisy)
    assert d.verdict.bottleneck == "none"
    assert not [f for f in d.findings if f.kind == "event-loop-blocked"]


def test_a_sustained_late_loop_is_a_blocked_loop():
    rec = load("diagnose_health")
    t0 = rec.t0
    late = _with_agent_ticks(rec, lambda r: dataclasses.replace(r, lag_ms=(80.0,) * 10) if 3 <= r.t - t0 < 6 else r)
    kinds = [f.kind for f in diagnose(late).findings]
    assert "event-loop-blocked" in kinds


def test_one_slow_request_is_not_a_knee():
    rec = load("diagnose_health")
    records = list(rec.driver_records)
    i = next(i for i, r in enumerate(records) if isinstance(r, DriverSecond) and r.t == 4)
    hist = Histogram(dict(records[i].hist.counts), records[i].hist.max_us).merge(Histogram({2400: 1}))  # one of ~30 s
    records[i] = dataclasses.replace(records[i], hist=hist)
    d = diagnose(dataclasses.replace(rec, driver_records=tuple(records)))
    assert d.knee is None and d.verdict.bottleneck == "none"


def test_summary_carries_the_verdict():
    rec = load("diagnose_db")
    s = summarize(rec, diagnose(rec).verdict)
    assert s["verdict"]["bottleneck"] == "db-pool-exhausted" and s["agent"]["pools"][0]["checked_out_max"] == 2


def _stage(i: int, offered: float, achieved: float, p99: float, requests: int = 1000, errors: int = 0) -> Stage:
    return Stage(index=i, t_start=i * 4.0, t_end=i * 4.0 + 4, offered_rps=offered, users=None, sent_rps=offered,
                 achieved_rps=achieved, answered_rps=achieved * requests / max(1, requests - errors),
                 requests=requests, errors=errors, p50_ms=p99 / 2, p90_ms=p99 * 0.8,
                 p99_ms=p99, concurrency=achieved * p99 / 2000, worker_cpu=0.5, loop_lag_p99_ms=1.0)


def test_knee_is_where_throughput_stops_following():
    st = [_stage(0, 100, 100, 10), _stage(1, 150, 149, 11), _stage(2, 225, 224, 12), _stage(3, 338, 250, 400)]
    knee = find_knee(st)
    assert knee.stage == 3 and "achieved 250" in knee.reason and knee.last_good_rps == 224


def test_knee_from_latency_alone_and_from_the_slo():
    st = [_stage(0, 100, 100, 10), _stage(1, 150, 150, 12), _stage(2, 225, 225, 60)]
    assert find_knee(st).stage == 2
    assert find_knee(st[:2]) is None
    assert find_knee(st[:2], slo_p99_ms=11).stage == 1


def test_no_knee_on_noise():
    rnd = random.Random(4)
    st = [_stage(i, 100 * 1.5 ** i, 100 * 1.5 ** i * rnd.uniform(0.97, 1.0), rnd.uniform(8, 14)) for i in range(6)]
    assert find_knee(st) is None


def test_usl_recovers_its_parameters():
    lam, sigma, kappa = 100.0, 0.05, 0.002
    st = []
    for i, n in enumerate([1, 2, 4, 8, 16, 32]):
        x = lam * n / (1 + sigma * (n - 1) + kappa * n * (n - 1))
        st.append(dataclasses.replace(_stage(i, x, x, 10), concurrency=n))
    usl = fit_usl(st)
    assert usl.lam == pytest.approx(lam, rel=0.01) and usl.sigma == pytest.approx(sigma, rel=0.05)
    assert usl.kappa == pytest.approx(kappa, rel=0.05) and usl.peak_n == pytest.approx(
        ((1 - sigma) / kappa) ** 0.5, rel=0.05
    )
    assert fit_usl(st[:3]) is None


def test_theil_sen_interval():
    rnd = random.Random(1)
    growing = [(t, 100 + 2.0 * t + rnd.gauss(0, 1)) for t in range(30)]
    slope, lo, hi = theil_sen(growing)
    assert slope == pytest.approx(2.0, abs=0.2) and lo > 0
    flat = [(t, 100 + rnd.gauss(0, 1)) for t in range(30)]
    _, lo, hi = theil_sen(flat)
    assert lo < 0 < hi


def test_one_bad_second_is_not_an_onset():
    series = {t: 0.0 for t in range(10)}
    series[3] = 100.0
    assert sustained_onset(series, lambda v: v > 50) is None
    series[4] = 100.0
    assert sustained_onset(series, lambda v: v > 50) == 3


def test_plain_run_stages_are_windows():
    st = stages(load("smoke_run"))
    assert len(st) >= 1 and all(s.users == 20 for s in st) and st[0].achieved_rps > 0


def test_only_loading_a_users_detector_is_a_usage_error():
    from harness.errors import ConfigError

    rec = load("diagnose_health")
    with pytest.raises(ConfigError, match="--detector tests.apps.nowhere:detect: No module named"):
        diagnose(rec, ("tests.apps.nowhere:detect",))
    with pytest.raises(ConfigError, match="'NOT_A_FUNCTION' is not a function"):
        diagnose(rec, ("tests.apps.detectors:NOT_A_FUNCTION",))
    # a bug inside analysis (here, inside the detector's own body) is a crash, not the user's mistake
    with pytest.raises(ImportError, match="a_module_that_is_not_installed"):
        diagnose(rec, ("tests.apps.detectors:buggy",))
    assert diagnose(rec, ("tests.apps.detectors:nothing",)).verdict.bottleneck == "none"
