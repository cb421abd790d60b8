"""The database and runtime rules on committed recordings: each verdict as recorded, and each rule
just above and just below its threshold (the recording's agent view scaled to put it there)."""

from __future__ import annotations

import dataclasses
import re
import statistics
from typing import Callable

import pytest

from harness.analysis import detectors, inside
from harness.analysis.verdict import context, diagnose
from harness.recording import Recording
from harness.records import AgentHello, AgentProfile, AgentTick, CpuProfile
from tests.conftest import DATA


def load(name: str) -> Recording:
    return Recording.load(DATA / name)


def with_ticks(rec: Recording, change: Callable[[AgentTick], AgentTick]) -> Recording:
    """``rec`` with every agent tick replaced by ``change(tick)``."""
    agents = {pid: [change(r) if isinstance(r, AgentTick) else r for r in rows] for pid, rows in rec.agents.items()}
    return dataclasses.replace(rec, agents=agents)


@pytest.mark.parametrize("name,kind,hotspot,function,words", [
    ("diagnose_db_slow", "db-slow-queries", None, "db_slow", "`SELECT id, kind FROM events WHERE payload = ?`"),
    ("diagnose_db_n_plus_one", "cpu-saturated", "db-round-trips", "db_n_plus_one", "sent 25 times per request"),
    ("diagnose_db_stream", "db-pool-exhausted", None, "rows", "each held"),
    ("diagnose_sync_db", "threadpool-exhausted", None, "get_session", "a deadlock between the request threads"),
    ("diagnose_gc", "gc-pauses", None, None, "full garbage collections"),
    ("diagnose_middleware", "cpu-saturated", "framework", None, "BaseHTTPMiddleware (sample_app.main.Tenant"),
    ("diagnose_leak_memory", "memory-growth", None, None, "in live allocations (the Python heap)"),
])
def test_known_recordings(name, kind, hotspot, function, words):
    v = diagnose(load(name)).verdict
    assert v.bottleneck == kind and words in v.summary, v.summary
    assert v.hotspot == hotspot
    if function:
        assert v.call_site.function == function and v.call_site.file.endswith("sample_app/main.py")


def test_the_slow_statement_is_named_with_what_the_database_showed():
    v = diagnose(load("diagnose_db_slow")).verdict
    assert "EXPLAIN ANALYZE" in v.recommendation and "index" in v.recommendation
    assert any("threads besides the loop" in e for e in v.evidence)
    assert not any(f.bottleneck == "db-pool-exhausted" for f in v.secondary)  # not mistaken for a small pool


def test_the_deadlock_gives_the_arithmetic_and_not_more_tokens():
    v = diagnose(load("diagnose_sync_db")).verdict
    assert any("tokens 40 > pool 5 + overflow 10" in e for e in v.evidence)
    assert "`async def`" in v.recommendation and "pool_size + max_overflow ≥ 40" in v.recommendation
    assert "total_tokens" not in v.recommendation


def test_threads_and_a_full_pool_that_still_return_connections_are_no_deadlock():
    def returning(t: AgentTick) -> AgentTick:
        return dataclasses.replace(t, pools=tuple(dataclasses.replace(p, returns=max(p.returns, 1)) for p in t.pools))

    v = diagnose(with_ticks(load("diagnose_sync_db"), returning)).verdict
    assert "deadlock" not in v.summary


def _trips_factor(rec: Recording) -> float:
    """How many times over the N+1 threshold of repeats per request the recording is."""
    ctx = context(rec)
    trips = detectors._round_trips(ctx, (0, float("inf")))
    return trips.per_request / detectors.N_PLUS_ONE_REPEATS


@pytest.mark.parametrize("margin,fires", [(1.05, True), (0.95, False)])
def test_n_plus_one_near_its_repeats_threshold(margin, fires):
    rec = load("diagnose_db_n_plus_one")
    scale = margin / _trips_factor(rec)  # the calls per request at margin × the threshold, the time unchanged

    def fewer(t: AgentTick) -> AgentTick:
        return dataclasses.replace(t, statements=tuple(dataclasses.replace(
            s, routes={r: (n * scale, ms) for r, (n, ms) in s.routes.items()}) for s in t.statements))

    v = diagnose(with_ticks(rec, fewer)).verdict
    assert v.bottleneck == "cpu-saturated"
    assert (v.hotspot == "db-round-trips") is fires, v.summary


@pytest.mark.parametrize("ratio,named", [(detectors.HELD_RATIO * 1.1, True), (detectors.HELD_RATIO * 0.9, False)])
def test_a_held_connection_near_its_ratio(ratio, named):
    def ran(t: AgentTick) -> AgentTick:
        return dataclasses.replace(t, pools=tuple(dataclasses.replace(
            p, holds={who: (n, ms, ms / ratio) for who, (n, ms, _) in p.holds.items()}) for p in t.pools))

    v = diagnose(with_ticks(load("diagnose_db_stream"), ran)).verdict
    assert v.bottleneck == "db-pool-exhausted"
    assert ("each held" in v.summary) is named and (v.call_site is not None) is named


def test_a_slow_statement_whose_cpu_is_the_loops_is_not_the_databases():
    rec = load("diagnose_db_slow")
    loop_only = dataclasses.replace(rec, samples=tuple(dataclasses.replace(s, procs=tuple(
        dataclasses.replace(p, main_cpu=p.cpu) if p.main_cpu is not None else p for p in s.procs))
        for s in rec.samples))
    assert detectors._slow_statement(context(loop_only)) is None
    assert detectors._slow_statement(context(rec)) is not None


@pytest.mark.parametrize("margin,fires", [(1.1, True), (0.9, False)])
def test_a_database_that_burns_the_cpu_is_busy_though_its_connections_look_idle(margin, fires):
    """PostgreSQL on this host: the scans took the cores, the loop picked results up late, and
    pg_stat_activity's snapshots found most connections idle in transaction; its processes' CPU against
    the workers' decides, scaled to ``margin`` × the workers'."""
    rec = load("diagnose_db_slow_pg")
    assert diagnose(rec).verdict.bottleneck == "db-slow-queries"
    onset = detectors._slow_statement(context(rec)).onset
    tl = context(rec).tl
    ratio = (statistics.median(sum(v) for t, v in tl.worker_cpu_all.items() if t >= onset)
             / statistics.median(v for t, v in tl.server_db_cpu.items() if t >= onset))
    scaled = dataclasses.replace(rec, samples=tuple(dataclasses.replace(s, procs=tuple(
        dataclasses.replace(p, cpu=p.cpu * ratio * margin) if p.role == "database" else p for p in s.procs))
        for s in rec.samples))
    busy, evidence = detectors._database_busy_past(context(scaled), onset)
    assert busy is fires and "its processes used" in evidence


@pytest.mark.parametrize("growth,fires", [(detectors.SLOW_GROWTH * 1.1, True), (detectors.SLOW_GROWTH * 0.9, False)])
def test_a_statement_near_its_growth_threshold(growth, fires):
    """Past the onset every statement takes ``growth`` × its time at the lowest load, its connection is
    held 1.5 × that, and the loop is never late: only the growth decides."""
    rec = load("diagnose_db_slow")
    slow = detectors._slow_statement(context(rec))

    def grown(t: AgentTick) -> AgentTick:
        if t.t - rec.t0 < slow.onset:
            return dataclasses.replace(t, lag_ms=())
        each = slow.base_ms * growth
        return dataclasses.replace(
            t, lag_ms=(), statements=tuple(dataclasses.replace(s, ms=s.n * each) for s in t.statements),
            pools=tuple(dataclasses.replace(p, hold_ms=p.returns * each * 1.5) for p in t.pools))

    assert (detectors._slow_statement(context(with_ticks(rec, grown))) is not None) is fires


@pytest.mark.parametrize("margin,fires", [(1.1, True), (0.9, False)])
def test_gc_pauses_near_their_share_of_stalled_time(margin, fires):
    rec = load("diagnose_gc")
    (found,) = detectors.detect_gc_pauses(context(rec))
    scale = margin * detectors.GC_SHARE / found.share  # pauses inside stalls: covered time scales with them

    def shorter(t: AgentTick) -> AgentTick:
        return dataclasses.replace(t, gc_full=tuple(dataclasses.replace(c, ms=c.ms * scale) for c in t.gc_full))

    assert bool(detectors.detect_gc_pauses(context(with_ticks(rec, shorter)))) is fires


@pytest.mark.parametrize("margin,where", [(1.1, "the Python heap"), (0.9, "RSS outside live allocations")])
def test_memory_growth_says_heap_or_rss_near_the_split(margin, where):
    rec = load("diagnose_leak_memory")
    (found,) = detectors.detect_memory_growth(context(rec))
    live, rss = map(float, re.search(r"grew ([\d.]+) MB/s of RSS's ([\d.]+)", found.evidence[0]).groups())
    scale = margin * detectors.HEAP_SHARE * rss / live
    first = {pid: pts[0] for pid, pts in inside.memory(rec).items()}

    agents = {}
    for pid, rows in rec.agents.items():
        _, blocks0, malloc0 = first[pid]
        agents[pid] = [dataclasses.replace(r, memory={
            "blocks": int(blocks0 + (r.memory["blocks"] - blocks0) * scale),
            "malloc": int(malloc0 + (r.memory["malloc"] - malloc0) * scale)})
            if isinstance(r, AgentTick) and r.memory else r for r in rows]
    v = diagnose(dataclasses.replace(rec, agents=agents)).verdict
    assert v.bottleneck == "memory-growth" and where in v.summary, v.summary


def _base_http(rec: Recording) -> tuple[float, float]:
    """(ms of busy py-spy samples under BaseHTTPMiddleware, ms of the other busy ones)."""
    hot = inside.cpu_hotspots(rec, (0, float("inf")))
    busy = sum(ms for c, ms in hot.categories.items() if c != "idle")
    return hot.base_http_share * busy, (1 - hot.base_http_share) * busy


@pytest.mark.parametrize("margin,named", [(1.1, True), (0.9, False)])
def test_middleware_is_named_near_its_share(margin, named):
    rec = load("diagnose_middleware")
    under, other = _base_http(rec)
    share = margin * detectors.BASE_HTTP_SHARE
    scale = share * other / ((1 - share) * under)  # samples under the layers counted `scale` times

    def fewer(p: CpuProfile) -> CpuProfile:
        return dataclasses.replace(p, stacks=tuple(
            (stack, n * scale if any(f[0].endswith("starlette/middleware/base.py") for f in stack) else n)
            for stack, n in p.stacks))

    v = diagnose(dataclasses.replace(rec, cpu_profiles=tuple(map(fewer, rec.cpu_profiles)))).verdict
    assert v.bottleneck == "cpu-saturated" and ("BaseHTTPMiddleware" in v.summary) is named, v.summary


def test_middleware_is_not_named_when_the_app_has_none():
    rec = load("diagnose_middleware")
    agents = {pid: [dataclasses.replace(r, middleware=()) if isinstance(r, AgentHello) else r for r in rows]
              for pid, rows in rec.agents.items()}
    v = diagnose(dataclasses.replace(rec, agents=agents)).verdict
    assert v.hotspot == "framework" and "BaseHTTPMiddleware" not in v.summary


def test_memory_growth_names_the_types_that_grew_in_the_profile_window():
    rec = load("diagnose_leak_memory")
    agents = {pid: [dataclasses.replace(r, grew_types=(("builtins.bytearray", 1200), ("builtins.dict", 3)))
                    if isinstance(r, AgentProfile) else r for r in rows] for pid, rows in rec.agents.items()}
    (found,) = detectors.detect_memory_growth(context(dataclasses.replace(rec, agents=agents)))
    assert "live objects that grew over the profile window: builtins.bytearray +1,200, builtins.dict +3" \
        in found.evidence
    (plain,) = detectors.detect_memory_growth(context(rec))  # recorded without the types: nothing claimed
    assert not any("live objects" in e for e in plain.evidence)


def test_full_collections_that_grew_with_the_backlog_are_the_overloads_symptom():
    """A do-nothing endpoint driven past its worker's core: full collections, rare and ~50 ms below the knee,
    came every second and grew to 182 ms once requests queued; the CPU is the first bottleneck."""
    v = diagnose(load("diagnose_overload_gc")).verdict
    assert v.bottleneck == "cpu-saturated" and not any(f.bottleneck == "gc-pauses" for f in v.secondary)


@pytest.mark.parametrize("margin,fires", [(1.1, True), (0.9, False)])
def test_gc_pauses_near_their_cost_per_request_below_the_onset(margin, fires):
    """/gc's collections are long at every load; scaled below the onset to ``margin`` × GC_BEFORE of their
    cost per request past it, the rule holds or calls them the backlog's."""
    rec = load("diagnose_gc")
    ctx = context(rec)
    (found,) = detectors.detect_gc_pauses(ctx)
    cut = rec.t0 + found.onset_t - 1
    served = {s.t: sum(s.outcomes.values()) for s in rec.seconds}
    before = sum(n for t, n in served.items() if 0 <= t < found.onset_t - 1)
    after = sum(n for t, n in served.items() if t >= found.onset_t - 1)
    full = inside.full_collections(rec)
    per_before = sum(c.ms for c in full if 0 <= c.t < found.onset_t - 1) / before
    per_after = sum(c.ms for c in full if c.t >= found.onset_t - 1) / after
    scale = margin * detectors.GC_BEFORE * per_after / per_before

    def cheaper(t: AgentTick) -> AgentTick:
        return dataclasses.replace(t, gc_full=tuple(dataclasses.replace(c, ms=c.ms * scale) if rec.t0 <= c.t < cut
                                                    else c for c in t.gc_full))

    assert bool(detectors.detect_gc_pauses(context(with_ticks(rec, cheaper)))) is fires
