"""The known-answer suite: each sample_app bottleneck, driven for real, gets its verdict."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.analysis.stages import stage_from_seconds
from harness.recording import Recording
from tests.conftest import APPS, ROOT, cli, harness_cmd

pytestmark = pytest.mark.e2e  # boots servers or runs the CLI as a user does

MAIN = ROOT / "sample_app" / "main.py"



def line_of(needle: str) -> int:
    return next(i for i, line in enumerate(MAIN.read_text().splitlines(), 1) if needle in line)


def verdict_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())["verdict"]


@pytest.mark.parametrize("scenario,kind,hotspot,site", [
    ("blocking", "event-loop-blocked", None, ("blocking", "time.sleep(0.05)")),
    ("cpu_json", "cpu-saturated", "json-serialization", None),
    ("log", "cpu-saturated", "logging", ("log_heavily", "log.info(")),
    ("db", "db-pool-exhausted", None, None),
    ("sync_sleep", "threadpool-exhausted", None, ("sync_sleep", "time.sleep(0.1)")),
    ("leak_fd", "fd-exhausted", None, None),
    ("leak_memory", "memory-growth", None, ("leak_memory", "leaked_memory.append(bytearray")),
    ("fast", "cpu-saturated", None, None),
    ("upstream", "http-client-pool-exhausted", None, ("call_upstream", 'upstream["client"].get("/slow")')),
    ("lock", "lock-contention", None, ("locked", "async with LOCK")),
    ("executor", "threadpool-exhausted", None, ("in_executor", "await loop.run_in_executor")),
    ("db_slow", "db-slow-queries", None, ("db_slow", 'text("SELECT id, kind FROM events')),
    ("db_n_plus_one", "cpu-saturated", "db-round-trips", ("db_n_plus_one", "names.append((await conn.execute")),
    ("db_stream", "db-pool-exhausted", None, ("rows", "async with engine.connect() as conn:  # checked out")),
    ("sync_db", "threadpool-exhausted", None, ("get_session", 'session.execute(text("SELECT id FROM items WHERE')),
    ("gc", "gc-pauses", None, None),
    ("middleware", "cpu-saturated", "framework", None),
    ("cache_pool", "redis-pool-exhausted", None, ("read_item", "async with redis.client() as held")),
])
def test_diagnose_names_the_bottleneck(tmp_path, env, scenario, kind, hotspot, site):
    out = tmp_path / "run"
    p = cli(env, "diagnose", str(ROOT / "scenarios" / f"{scenario}.toml"), "--out", str(out), "--max-time", "50s",
            *FLAGS.get(scenario, ()))
    assert p.returncode == 0, p.stderr[-3000:]
    v = verdict_of(out)
    assert v["bottleneck"] == kind, v["summary"]
    if hotspot:
        assert v["hotspot"] == hotspot
    if site:
        assert (v["call_site"]["file"], v["call_site"]["line"]) == (str(MAIN), line_of(site[1]))
        # (tracemalloc names a line, not its function)
        assert v["call_site"]["function"] == ("" if scenario == "leak_memory" else site[0])
    if kind == "cpu-saturated":
        # the hotspot and its app line come from py-spy's samples of the workers, taken from outside
        assert any(e.startswith("CPU samples from py-spy") for e in v["evidence"]), v["evidence"]
    if scenario in WORDS:
        assert WORDS[scenario] in v["summary"] + " ".join(v["evidence"]) + v["recommendation"], v
    if scenario == "fast":
        # /fast's own code is one line: its CPU is the framework's, unless a short hold's few samples
        # land in that line (the hottest frame is then the app's)
        assert v["hotspot"] in ("framework", "app-code") and "more workers" in v["recommendation"]
    assert (
        v["summary"].startswith("First bottleneck:") and html.escape(v["summary"]) in (out / "report.html").read_text()
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["duration_s"] <= 50  # --max-time
    assert_hold_within_answered(out)
    assert v["summary"].split(":")[0] in p.stdout


FLAGS = {"leak_memory": ("--set", "agent.tracemalloc=true")}  # where the growing memory was allocated
WORDS = {  # what each new verdict must say beyond its kind
    "db_slow": "`SELECT id, kind FROM events WHERE payload = ?`",
    "db_n_plus_one": "`SELECT name FROM items WHERE id = ?` sent",
    "db_stream": "each held",
    "sync_db": "a deadlock between the request threads and the pool",
    "gc": "full garbage collections stall the event loop",
    "middleware": "BaseHTTPMiddleware (sample_app.main.Tenant, sample_app.main.Timing, sample_app.main.RequestId)",
    "leak_memory": "in live allocations (the Python heap)",
}


def assert_hold_within_answered(out: Path) -> None:
    """The profile hold offers no more than the last step answered: a rate the server could not
    keep up with would only queue (and time out) for the whole window."""
    rec = Recording.load(out)
    stages = [e for e in rec.events if e.kind == "stage"]
    hold = next((e for e in stages if e.phase == "hold"), None)
    steps = [e for e in stages if e.phase == "step"]
    if hold is None or hold.offered_rps is None or not steps:  # (a calibration that collapsed has no steps)
        return
    last = steps[-1]
    answered = stage_from_seconds(0, last.t_start, last.t_end, last.offered_rps, None, rec.seconds).answered_rps
    assert hold.offered_rps <= round(max(1.0, min(last.offered_rps, answered)), 2), (hold, last, answered)


def test_health_at_a_load_it_holds_is_none(tmp_path, env):
    out = tmp_path / "run"
    p = cli(
        env, "run", str(ROOT / "scenarios" / "health.toml"), "--duration", "6s", "--out", str(out), "--quiet", "--check"
    )
    assert p.returncode == 0, p.stderr
    v = verdict_of(out)
    assert v["bottleneck"] == "none" and v["secondary"] == []


def test_a_starved_driver_makes_the_run_invalid(tmp_path, env):
    out = tmp_path / "run"
    p = cli(env, "run", str(ROOT / "scenarios" / "health.toml"), "--duration", "5s", "--rate", "1000",
            "--set", "load.connections=2", "--out", str(out), "--quiet")
    assert p.returncode == 3, p.stderr
    assert verdict_of(out)["bottleneck"] == "load-generator-saturated"
    assert "the run is invalid" in p.stderr


def test_check_fails_a_broken_slo(tmp_path, env):
    out = tmp_path / "run"
    p = cli(env, "run", str(ROOT / "scenarios" / "blocking.toml"), "--duration", "3s", "--slo-p99", "20ms",
            "--check", "--out", str(out), "--quiet")
    assert p.returncode == 1 and "SLO broken: p99" in p.stderr


def test_inline_app_from_any_directory(tmp_path, env):
    out = tmp_path / "run"
    p = cli(env, "diagnose", "--app", "custom_app:app", "--app-dir", str(APPS), "--get", "/items/3",
            "--users", "8", "--max-time", "25s", "--slo-p99", "500ms", "--out", str(out), "--quiet")
    assert p.returncode == 0, p.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scenario"] == "custom_app" and summary["requests"] > summary["errors"]["total"]
    # the app was found and served the route: no 4xx/5xx or connection errors. Timeouts may occur:
    # the profile hold offers what the last step answered, but both profilers slow the app meanwhile
    assert set(summary["errors"]["by_kind"]) <= {"timeout"}, summary["errors"]
    # a do-nothing endpoint on a shared 2-core host: the worker's CPU is the limit once a knee is
    # found; a search that ends on its --max-time before one says the app held up to there
    knee = summary["verdict"]["knee"] or {}
    assert summary["verdict"]["bottleneck"] == ("cpu-saturated" if "reason" in knee else "none"), summary["verdict"]
    assert summary["duration_s"] <= 25
    assert_hold_within_answered(out)


def test_a_run_saturated_from_its_start_says_so(tmp_path, env):
    out = tmp_path / "run"
    p = cli(env, "run", str(ROOT / "scenarios" / "blocking.toml"), "--users", "20", "--duration", "6s",
            "--out", str(out), "--quiet")
    assert p.returncode == 0, p.stderr
    v = verdict_of(out)
    assert v["bottleneck"] == "event-loop-blocked" and "saturated from the start at" in v["summary"]
    assert "event-loop-blocked" in p.stdout  # the terminal leads with it too


def test_a_busy_host_is_not_blamed_on_the_app(tmp_path, env):
    """Two busy loops pinned one per core: the run is invalid (host-contended), exit 3."""
    burn = "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])}); exec('while True: pass')"
    cores = sorted(os.sched_getaffinity(0))
    hogs = [subprocess.Popen([sys.executable, "-c", burn, str(cpu)], env=env) for cpu in cores]
    try:
        out = tmp_path / "run"
        # (not ``cli``: its second measurement of a contended run is what this test must not get)
        p = subprocess.run(harness_cmd("diagnose", str(ROOT / "scenarios" / "health.toml"), "--max-time", "15s",
                                       "--out", str(out), "--quiet"), env=env, capture_output=True, text=True)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert p.returncode == 3, p.stdout + p.stderr
    v = verdict_of(out)
    assert v["bottleneck"] == "host-contended" and "processes outside the run" in v["evidence"][0]
    assert any("python" in e for e in v["evidence"][1:]) and "the run is invalid" in p.stderr


def diagnose_on_postgres(tmp_path: Path, env, postgres: str, scenario: str) -> dict:
    """The verdict of ``scenario`` diagnosed with the sample app on the test cluster (asyncpg), watched."""
    out = tmp_path / "run"
    asyncpg_url = postgres.replace("postgresql://", "postgresql+asyncpg://")
    p = cli(env, "diagnose", str(ROOT / "scenarios" / f"{scenario}.toml"), "--out", str(out), "--max-time", "50s",
            "--quiet", "--set", f"app.env.SAMPLE_APP_DATABASE_URL={asyncpg_url}", "--set", f"database.url={postgres}")
    assert p.returncode == 0, p.stderr[-3000:]
    return verdict_of(out)


def test_n_plus_one_on_postgres_names_the_statement_and_its_count(tmp_path, env, postgres):
    v = diagnose_on_postgres(tmp_path, env, postgres, "db_n_plus_one")
    # asyncpg is fast: the CPU (round trips on a busy worker) or the pool (each request holding its
    # connection through its round trips) gives first, a second apart; either way the N+1 is what it names
    assert (v["bottleneck"], v["hotspot"]) in (("cpu-saturated", "db-round-trips"), ("db-pool-exhausted", None)), v
    count = re.search(r"`SELECT name FROM items WHERE id = \?` sent (\d+) times per request", v["summary"])
    assert count and 20 <= int(count.group(1)) <= 26, v["summary"]  # 25 a request (route counts lag a tick)
    assert v["call_site"]["function"] == "db_n_plus_one"


def test_a_slow_statement_on_postgres_is_named_with_pg_stat_activity(tmp_path, env, postgres):
    v = diagnose_on_postgres(tmp_path, env, postgres, "db_slow")
    assert v["bottleneck"] == "db-slow-queries", v["summary"]
    assert "`SELECT id, kind FROM events WHERE payload = ?`" in v["summary"]
    assert any(e.startswith("PostgreSQL pg_stat_activity:") for e in v["evidence"]), v["evidence"]
    assert v["call_site"]["function"] == "db_slow"
