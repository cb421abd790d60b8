"""The in-process agent under real load on loopback: each bottleneck endpoint shows its signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.recording import Recording
from harness.records import AgentHello
from tests.conftest import APPS, ROOT, cli, cli_in_background, wait_until

pytestmark = pytest.mark.e2e  # boots servers or runs the CLI as a user does

SCENARIOS = ROOT / "scenarios"


def run(
    env, tmp_path: Path, scenario: str, *flags: str, expect: int = 0
) -> tuple[dict, Recording, subprocess.CompletedProcess]:
    out = tmp_path / "run"
    path = scenario if os.sep in scenario else str(SCENARIOS / f"{scenario}.toml")
    p = cli(env, "run", path, "--out", str(out), "--quiet", *flags, timeout=180)
    assert p.returncode == expect, p.stderr
    if expect:
        return {}, None, p  # type: ignore[return-value]
    return json.loads((out / "summary.json").read_text()), Recording.load(out), p


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_stall_watchdog_names_the_blocking_call(tmp_path, env):
    summary, rec, _ = run(env, tmp_path, "blocking", "--duration", "3s")
    top = summary["agent"]["stall_sites"][0]
    assert top["file"] == str(ROOT / "sample_app" / "main.py")
    assert (top["line"], top["function"]) == (line_of(ROOT / "sample_app" / "main.py", "time.sleep(0.05)"), "blocking")
    assert top["kind"] == "blocking-wait" and top["share"] > 0.9
    assert summary["agent"]["loop_lag_ms"]["p99_worst_second"] > 40
    assert {r.watchdog for rows in rec.agents.values() for r in rows if isinstance(r, AgentHello)} == {"sigalrm"}


def test_stall_watchdog_leaves_an_apps_own_sigalrm_alone(tmp_path, env):
    """The app installed a SIGALRM handler: the agent watches from its thread and never fires the app's handler."""
    scenario = tmp_path / "alarm.toml"
    scenario.write_text(
        f'[app]\ntarget = "alarm_app:app"\napp_dir = "{APPS}"\n[app.readiness]\npath = "/fast"\n'
        '[load]\nusers = 10\nduration = "3s"\n[[requests]]\npath = "/blocking"\n[[requests]]\npath = "/fast"\n'
    )
    summary, rec, _ = run(env, tmp_path, str(scenario))
    assert {r.watchdog for rows in rec.agents.values() for r in rows if isinstance(r, AgentHello)} == {"thread"}
    top = summary["agent"]["stall_sites"][0]
    assert (top["file"], top["line"]) == (str(APPS / "old_app.py"), line_of(APPS / "old_app.py", "time.sleep(0.05)"))
    assert top["kind"] == "blocking-wait"
    assert not (rec.path / "alarms.log").exists()  # the app's handler would have written it


def test_pool_exhaustion_on_sqlite(tmp_path, env):
    summary, rec, _ = run(env, tmp_path, "db", "--duration", "3s")
    (pool,) = summary["agent"]["pools"]
    assert pool["size"] == 2 and pool["max_overflow"] == 0
    assert pool["checked_out_max"] == 2
    # 30 users share 2 connections each held ≥ 50 ms: waiting for one takes several holds
    assert pool["acquire_p99_ms"] >= 100
    assert (rec.path / "sample_app.db").exists()


def test_pool_exhaustion_on_postgres(tmp_path, env, postgres):
    asyncpg_url = postgres.replace("postgresql://", "postgresql+asyncpg://")
    summary, rec, _ = run(
        env,
        tmp_path,
        "db_postgres",
        "--duration",
        "3s",
        "--set",
        f"app.env.SAMPLE_APP_DATABASE_URL={asyncpg_url}",
        "--set",
        f"database.url={postgres}",
    )
    (pool,) = summary["agent"]["pools"]
    assert pool["checked_out_max"] == pool["size"] == 2 and pool["acquire_p99_ms"] >= 100
    watched = [r for r in rec.db if r.kind == "postgres"]
    assert watched and watched[0].max_connections == 50
    assert max(r.total for r in watched) >= 2  # the app's two pooled connections, seen from the server
    db_conns = [p.db_conns for s in rec.samples for p in s.procs if p.db_conns is not None]
    assert max(db_conns) == 2 == summary["resources"]["db_conns_max"]


def test_connections_refused_by_postgres_are_explained(tmp_path, env, postgres):
    """2 workers × a pool of 40 against the test cluster's max_connections = 50. The kernel may hand one
    worker most of the users' connections: 160 users leave the other enough to pass the limit anyway."""
    asyncpg_url = postgres.replace("postgresql://", "postgresql+asyncpg://")
    summary, _, _ = run(env, tmp_path, "db", "--duration", "6s", "--users", "160", "--workers", "2",
                        "--set", f"app.env.SAMPLE_APP_DATABASE_URL={asyncpg_url}", "--set", f"database.url={postgres}",
                        "--set", "app.env.SAMPLE_APP_POOL_SIZE=40", "--set", "app.env.SAMPLE_APP_POOL_TIMEOUT=5")
    v = summary["verdict"]
    assert v["bottleneck"] == "server-errors", v["summary"]
    assert "the database refuses connections" in v["summary"]
    assert "2 workers × (pool_size + max_overflow = 40) = 80 connections against max_connections = 50" in v["summary"]
    assert "PgBouncer" in v["recommendation"]


def test_asyncpg_used_directly_is_timed(postgres):
    """asyncpg without SQLAlchemy: its query methods are wrapped, and the app's line is found."""
    import asyncio

    import asyncpg

    from harness.agent.statements import StatementProbe

    probe = StatementProbe()
    probe.install()

    async def query() -> None:
        conn = await asyncpg.connect(postgres)
        try:
            for i in range(3):
                await conn.fetchval("SELECT $1::int + 1", i)  # the app's line
        finally:
            await conn.close()

    try:
        asyncio.run(query())
        (st,) = [s for s in probe.read() if s["sql"] == "SELECT ?::int + ?"]
    finally:
        for name in ("execute", "executemany", "fetch", "fetchrow", "fetchval"):  # the probe's wrappers off
            original = getattr(asyncpg.connection.Connection, name)
            setattr(asyncpg.connection.Connection, name, getattr(original, "__wrapped__", original))
    assert st["n"] == 3 and st["site"].startswith(f"{__file__}:") and st["site"].endswith(" query")


def test_missing_postgres_is_named(tmp_path, env):
    _, _, p = run(
        env, tmp_path, "db_postgres", "--set", "database.url=postgresql://postgres@127.0.0.1:1/postgres", expect=2
    )
    assert "cannot reach PostgreSQL at postgresql://postgres@127.0.0.1:1/postgres" in p.stderr
    assert "Traceback" not in p.stderr


def test_threadpool_exhaustion(tmp_path, env):
    summary, _, _ = run(env, tmp_path, "sync_sleep", "--duration", "3s")
    tp = summary["agent"]["threadpool"]
    assert tp["total"] == 40 and tp["borrowed_max"] == 40 and tp["waiting_max"] > 0
    assert next(iter(summary["agent"]["threadpool_hotspots"])) == "app-code"


@pytest.mark.parametrize("scenario,category", [("cpu_json", "json-serialization"), ("log", "logging")])
def test_hotspot_categories(tmp_path, env, scenario, category):
    summary, _, _ = run(env, tmp_path, scenario, "--duration", "3s")
    hot = summary["agent"]["hotspots"]
    assert next(iter(hot)) == category and hot[category] > 0.5, hot


def test_every_worker_streams_including_a_respawned_one(tmp_path, env):
    out = tmp_path / "run"
    with cli_in_background(
        env, "run", str(SCENARIOS / "smoke.toml"), "--duration", "10s", "--out", str(out), "--quiet"
    ) as proc:
        wait_until(proc, lambda: len(list(out.glob("agent-*.jsonl"))) >= 2 and _has_load(out))
        victim = int(sorted(out.glob("agent-*.jsonl"))[0].stem.split("-")[1])
        os.kill(victim, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    rec = Recording.load(out)
    kinds = {(e.kind, e.pid) for e in rec.events}
    assert ("worker-exited", victim) in kinds
    started = [pid for kind, pid in kinds if kind == "worker-started"]
    assert started, rec.events
    sampled = {p.pid for s in rec.samples for p in s.procs if p.role == "worker"}
    assert victim in sampled and set(started) <= sampled
    assert sampled <= set(rec.agents)  # a stream for every worker, the respawned one included
    summary = json.loads((out / "summary.json").read_text())
    assert summary["agent"]["missing"] == [] and any(e["kind"] == "worker-exited" for e in summary["events"])


def test_profile_window_writes_pyinstrument_and_yappi(tmp_path, env):
    summary, rec, _ = run(env, tmp_path, "fast", "--duration", "4s", "--users", "10",
                          "--set", "agent.profile_at=1s", "--set", "agent.profile_for=1500ms")
    (profile,) = summary["agent"]["profiles"]
    files = {f.rsplit("-", 1)[-1] for f in profile["files"]}
    assert files == {"pyinstrument.html", "pyinstrument.json", "yappi.json", "yappi.txt"}, profile
    html = (rec.path / f"profile-{profile['pid']}-1-pyinstrument.html").read_text()
    assert "pyinstrument" in html.lower()
    table = json.loads((rec.path / f"profile-{profile['pid']}-1-yappi.json").read_text())
    assert table and all({"function", "total_s", "calls"} <= set(row) for row in table)
    assert "yappi.txt" in (rec.path / "report.html").read_text()


def test_profilers_missing_from_the_apps_interpreter_are_said_with_the_fix(tmp_path, env):
    blocked = tmp_path / "blocked"  # as if the app's interpreter had neither profiler installed
    blocked.mkdir()
    for name in ("pyinstrument", "yappi"):
        (blocked / f"{name}.py").write_text(f"raise ImportError('No module named {name}')\n")
    summary, rec, p = run(env, tmp_path, "fast", "--duration", "4s", "--users", "10",
                          "--set", "agent.profile_at=1s", "--set", "agent.profile_for=1500ms",
                          "--set", f"app.env.PYTHONPATH={blocked}")
    (profile,) = summary["agent"]["profiles"]
    python = rec.run.server.command[0]
    why = f"no profile: pyinstrument and yappi are not installed in {python} — `{python} -m pip install"
    assert profile["files"] == [] and profile["errors"][0].startswith(why), profile
    assert why in " ".join(p.stdout.replace("│", " ").split()) and why in (rec.path / "report.html").read_text()


def test_no_agent_runs_the_plain_app(tmp_path, env):
    summary, rec, _ = run(env, tmp_path, "smoke", "--duration", "2s", "--no-agent")
    assert summary["agent"] is None and not rec.agents and summary["errors"]["total"] == 0
    assert not (rec.path / ".agent").exists() or "fastapi_harness_agent" not in " ".join(rec.run.server.command)


def test_agent_that_cannot_write_leaves_the_app_serving(tmp_path, env):
    summary, rec, _ = run(env, tmp_path, "smoke", "--duration", "2s",
                          "--set", "app.env.FASTAPI_HARNESS_AGENT_STREAM_DIR=/nonexistent/agent-streams")
    assert summary["errors"]["total"] == 0 and summary["requests"] > 100
    assert sorted(summary["agent"]["missing"]) == sorted(summary["worker_pids"])
    assert "cannot write" in (rec.path / "server.stderr.log").read_text()
    assert "Agent coverage is incomplete" in (rec.path / "report.html").read_text()


def test_target_that_is_not_asgi(tmp_path, env):
    scenario = tmp_path / "bad.toml"
    scenario.write_text(
        f'[app]\ntarget = "not_asgi:app"\napp_dir = "{APPS}"\n[load]\nusers = 1\nloops = 1\n[[requests]]\npath = "/"\n'
    )
    _, _, p = run(env, tmp_path, str(scenario), expect=2)
    assert "not_asgi:app is not an ASGI application (it is a dict)" in p.stderr


def test_app_with_its_own_loop_policy_and_middleware(tmp_path, env):
    scenario = tmp_path / "custom.toml"
    scenario.write_text(f'[app]\ntarget = "custom_app:app"\napp_dir = "{APPS}"\n[app.readiness]\npath = "/items/1"\n'
                        '[load]\nusers = 5\nduration = "2s"\n[[requests]]\npath = "/items/7"\n')
    summary, rec, _ = run(env, tmp_path, str(scenario))
    from harness.analysis import inside

    routes = inside.routes(rec)
    assert routes["GET /items/{item_id}"].n >= summary["requests"]  # the template, not the raw path
    assert summary["agent"]["loop_lag_ms"]["max"] > 0 and summary["errors"]["total"] == 0


def test_agent_in_an_old_stack(tmp_path, env, tmp_path_factory):
    """FastAPI 0.79, pydantic 1, uvicorn 0.18 in their own virtualenv, on the oldest Python here."""
    python = _old_stack_python(tmp_path_factory.getbasetemp())
    scenario = tmp_path / "old.toml"
    scenario.write_text(
        f'[app]\ntarget = "old_app:app"\napp_dir = "{APPS}"\npython = "{python}"\n'
        '[app.readiness]\npath = "/fast"\n[load]\nusers = 5\nduration = "2s"\n[[requests]]\npath = "/blocking"\n'
    )
    summary, rec, _ = run(env, tmp_path, str(scenario))
    hello = next(r for rows in rec.agents.values() for r in rows if isinstance(r, AgentHello))
    assert hello.versions["fastapi"] == "0.79.0" and hello.versions["pydantic"].startswith("1.")
    assert hello.versions["uvicorn"] == "0.18.3"
    top = summary["agent"]["stall_sites"][0]
    assert (top["file"], top["line"]) == (str(APPS / "old_app.py"), line_of(APPS / "old_app.py", "time.sleep(0.05)"))
    assert summary["agent"]["threadpool"]["total"] == 40


def _has_load(out: Path) -> bool:
    try:
        return (out / "driver.jsonl").stat().st_size > 0
    except FileNotFoundError:
        return False


def _old_stack_python(tmp: Path) -> str:
    """A virtualenv with the old stack, on the oldest CPython ≥ 3.9 on this machine: built under the
    session's temp dir, or kept in $FASTAPI_HARNESS_TEST_CACHE when set (the README's Tests section)."""
    candidates = sorted(
        Path.home().glob(".pyenv/versions/3.*/bin/python3"), key=lambda p: _version(p.parent.parent.name)
    )
    base = next((str(p) for p in candidates if _version(p.parent.parent.name) >= (3, 9)), sys.executable)
    version = subprocess.check_output(
        [base, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], text=True
    ).strip()
    venv = Path(os.environ.get("FASTAPI_HARNESS_TEST_CACHE") or tmp) / f"old-stack-py{version}"
    python = venv / "bin" / "python"
    if not (venv / "ready").exists():
        subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "fastapi==0.79.0", "pydantic<2", "uvicorn==0.18.3"],
                       check=True, timeout=600)
        (venv / "ready").write_text("")
    return str(python)


def _version(name: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in name.split(".")[:2])
    except ValueError:
        return (0,)
