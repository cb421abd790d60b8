"""Instances behind a proxy and a Redis cache, on committed recordings: the redis-pool rule as recorded and
just either side of its threshold, the summary's instance shares, proxy and cache figures, the compare note."""

from __future__ import annotations

import dataclasses

from harness.analysis import detectors, inside
from harness.analysis.compare import topology_note
from harness.analysis.summary import summarize
from harness.analysis.verdict import context, diagnose
from harness.records import AgentTick
from tests.analysis.test_db_runtime import load, with_ticks
from tests.conftest import ROOT


def pools_scaled(tick: AgentTick, in_use: int = 0, waiting: int | None = None) -> AgentTick:
    """``tick`` with each redis pool's in-use count moved by ``in_use`` and its waiters set to ``waiting``."""
    pools = tuple(dataclasses.replace(p, in_use=min(p.in_use + in_use, p.max),
                                      waiting=p.waiting if waiting is None else waiting) for p in tick.redis_pools)
    return dataclasses.replace(tick, redis_pools=pools)


def test_a_small_redis_pool_held_across_awaits_is_the_verdict():
    v = diagnose(load("run_redis_pool")).verdict
    line = next(i for i, text in enumerate((ROOT / "sample_app" / "main.py").read_text().splitlines(), 1)
                if "async with redis.client() as held" in text)
    assert v.bottleneck == "redis-pool-exhausted", v.summary
    assert (v.call_site.function, v.call_site.line) == ("read_item", line)
    rule = v.findings[0].rule
    assert "all 2 connections of a redis-py pool were in use" in rule and "max_connections (now 2" in v.recommendation


def test_the_redis_pool_rule_needs_every_connection_taken_and_someone_waiting():
    rec = load("run_redis_pool")
    assert detectors.detect_redis_pool_exhausted(context(rec))
    one_free = with_ticks(rec, lambda t: pools_scaled(t, in_use=-1))
    nobody_waits = with_ticks(rec, lambda t: pools_scaled(t, waiting=0))
    for changed in (one_free, nobody_waits):
        assert not detectors.detect_redis_pool_exhausted(context(changed))
        assert diagnose(changed).verdict.bottleneck != "redis-pool-exhausted"


def test_the_redis_pool_wait_is_its_own_kind_not_a_lock():
    waits = inside.waits(load("run_redis_pool"))
    assert waits[0].kind == "redis-pool-acquire" and "read_item" in (waits[0].site or "")
    assert not detectors.detect_lock_contention(context(load("run_redis_pool")))


def test_two_instances_each_take_their_share_and_the_proxy_is_summed():
    rec = load("run_instances")
    s = summarize(rec)
    shares = [i["share"] for i in s["instances"]]
    assert len(shares) == 2 and all(0.4 <= x <= 0.6 for x in shares), s["instances"]
    assert set(inside.instance_of(rec).values()) == {0, 1}
    assert s["proxy"]["kind"] == "nginx" and s["proxy"]["errors"] == {}
    assert abs(s["proxy"]["requests"] - s["requests"]) <= 0.02 * s["requests"]  # nginx counted what the drivers got
    assert s["cache"] is None and summarize(load("run_cache"))["instances"] is None


def test_the_cache_summary_is_its_hits_over_its_reads():
    s = summarize(load("run_cache"))["cache"]
    assert s["hits"] + s["misses"] > 1000
    assert s["hit_rate"] == round(s["hits"] / (s["hits"] + s["misses"]), 4) and 0.5 < s["hit_rate"] < 1


def test_compare_says_whether_the_cache_helped():
    row = {"label": "", "max_rps": 0.0, "max_rps_runs": [], "peak_rss_mb": 90.0}
    without = {**row, "label": "start=false", "max_rps": 200.0, "max_rps_runs": [200.0]}
    helped = {**row, "label": "start=true", "max_rps": 400.0, "max_rps_runs": [400.0], "hit_rate": 0.8}
    even = {**helped, "max_rps": 204.0, "max_rps_runs": [204.0]}
    assert topology_note([without, helped]) == ("The cache helped on this host: start=true 400 req/s against "
                                                "start=false 200 (+100%); its hit rate was 80%.")
    assert "made no clear difference" in topology_note([without, even])
    assert topology_note([without]) == ""


def with_cache(rec, **values):
    return dataclasses.replace(rec, cache=tuple(dataclasses.replace(c, **values) for c in rec.cache))


def with_proxy(rec, **values):
    return dataclasses.replace(rec, proxy=tuple(dataclasses.replace(p, **values) for p in rec.proxy))


def with_role_cpu(rec, role, cpu):
    samples = tuple(dataclasses.replace(s, procs=tuple(dataclasses.replace(p, cpu=cpu) if p.role == role else p
                                                       for p in s.procs)) for s in rec.samples)
    return dataclasses.replace(rec, samples=samples)


def kinds(rec) -> set[str]:
    return {f.kind for f in diagnose(rec).findings}


def test_redis_at_its_one_core_is_redis_saturated_and_just_below_it_is_not():
    rec = load("run_cache")
    assert "redis-saturated" in kinds(with_cache(rec, cpu=0.95))
    assert "redis-saturated" not in kinds(with_cache(rec, cpu=0.85)) | kinds(rec)


def test_the_proxy_saturates_at_its_core_or_when_it_drops_connections():
    rec = load("run_instances")
    assert "proxy-saturated" not in kinds(rec) | kinds(with_role_cpu(rec, "proxy", 0.85))
    hot = diagnose(with_role_cpu(rec, "proxy", 0.95)).findings
    assert any(f.kind == "proxy-saturated" and "worker(s) at ≥ 90% of a core" in f.rule for f in hot)
    dropping = diagnose(with_proxy(rec, dropped=3)).findings
    assert any(f.kind == "proxy-saturated" and "could not handle" in f.rule for f in dropping)


def one_worker_scaled(rec, pid: int, keep: float):
    """``rec`` with worker ``pid`` counting only ``keep`` of its requests."""
    def scaled(tick):
        return dataclasses.replace(tick, routes={k: dataclasses.replace(r, n=int(r.n * keep))
                                                 for k, r in tick.routes.items()})

    return dataclasses.replace(rec, agents={p: [scaled(r) if p == pid and isinstance(r, AgentTick) else r for r in rows]
                                            for p, rows in rec.agents.items()})


def test_one_worker_taking_most_requests_at_its_core_is_noted_beside_the_verdict():
    rec = with_role_cpu(load("run_instances"), "worker", 0.9)
    assert "load-imbalance" not in kinds(rec)  # round robin: 50/50
    loser = next(pid for pid, k in inside.instance_of(rec).items() if k == 0)
    d = diagnose(one_worker_scaled(rec, loser, 0.2))  # the other takes 5/6
    note = next(f for f in d.findings if f.kind == "load-imbalance")
    assert "(instance 1)" in note.rule and d.verdict.bottleneck != "load-imbalance"
    assert "load-imbalance" in [s.bottleneck for s in d.verdict.secondary]
    assert "load-imbalance" not in kinds(one_worker_scaled(rec, loser, 0.5))  # 2/3: under the 75 % rule
    idle = with_role_cpu(load("run_instances"), "worker", 0.7)  # lopsided, but nobody was short of CPU
    assert "load-imbalance" not in kinds(one_worker_scaled(idle, loser, 0.2))


def test_a_cache_that_misses_in_front_of_a_limiting_database_is_noted():
    rec = load("run_cache")  # the database pool is a secondary finding here; the cache hit 81 %
    assert "cache-ineffective" not in kinds(rec)
    total = [(c.hits + c.misses) for c in rec.cache]
    missing = dataclasses.replace(rec, cache=tuple(dataclasses.replace(c, hits=n * 2 // 5, misses=n - n * 2 // 5)
                                                   for c, n in zip(rec.cache, total)))
    assert "cache-ineffective" in kinds(missing)
    assert "cache-ineffective" not in kinds(dataclasses.replace(rec, cache=tuple(
        dataclasses.replace(c, hits=n * 3 // 5, misses=n - n * 3 // 5) for c, n in zip(rec.cache, total))))


def test_timeouts_at_a_small_backlog_are_explained_by_the_kernels_counters():
    rec = load("run_backlog")  # 600 users at once on one worker with backlog = 8
    note = next(f for f in diagnose(rec).findings if f.kind == "connection-errors")
    assert "requests timed out after 2 s" in note.rule and "turned away" in note.rule and "of a 8 backlog" in note.rule
    assert "600 users on" in note.rule and "before the app" in note.rule
    quiet = dataclasses.replace(rec, samples=tuple(dataclasses.replace(s, listen=None) for s in rec.samples))
    assert "turned away" not in next(f for f in diagnose(quiet).findings if f.kind == "connection-errors").rule
    clean = dataclasses.replace(rec, driver_records=tuple(
        dataclasses.replace(r, outcomes={**r.outcomes, "timeout": 0}) if hasattr(r, "outcomes") else r
        for r in rec.driver_records))
    assert "connection-errors" not in kinds(clean)


def test_compare_says_what_the_second_instance_cost_and_gave():
    base = {"max_rps_runs": [], "proxy_cpu": 0.2}
    one = {**base, "label": "instances=1", "overrides": {"app.instances": "1"}, "max_rps": 1500.0,
           "max_rps_runs": [1500.0], "peak_rss_mb": 90.0}
    two = {**base, "label": "instances=2", "overrides": {"app.instances": "2"}, "max_rps": 1560.0,
           "max_rps_runs": [1560.0], "peak_rss_mb": 180.0, "proxy_cpu": 0.35}
    assert topology_note([one, two]) == (
        "2 instances made no clear difference on this host: instances=2 1,560 req/s against instances=1 1,500 (+4%); "
        "nginx used 0.35 cores; the server processes peaked at 180 MB against 90 MB.")

