"""End to end on loopback: the real CLI boots the real sample app and drives real HTTP."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.analysis import inside
from harness.recording import Recording
from tests.conftest import APPS, ROOT, cli, cli_in_background, wait_until

pytestmark = pytest.mark.e2e  # boots servers or runs the CLI as a user does

SMOKE = str(ROOT / "scenarios" / "smoke.toml")



def write_scenario(path: Path, target: str, app_dir: Path, load: str, request: str = "/", extra: str = "") -> Path:
    path.write_text(
        f'[app]\ntarget = "{target}"\napp_dir = "{app_dir}"\n{extra}\n[load]\n{load}\n'
        f'[[requests]]\npath = "{request}"\n'
    )
    return path


def test_smoke_run_two_workers(tmp_path, env):
    out = tmp_path / "run"
    p = cli(env, "run", SMOKE, "--duration", "3s", "--out", str(out), "--quiet")
    assert p.returncode == 0, p.stderr
    summary = json.loads((out / "summary.json").read_text())
    for key in ("scenario", "started_at", "duration_s", "requests", "throughput_rps", "latency_ms", "errors",
                "workers", "server", "resources", "verdict"):
        assert key in summary
    assert summary["status"] == "completed" and summary["server"] == "uvicorn"
    assert summary["workers"] == 2 and len(set(summary["worker_pids"])) == 2
    assert 2.5 < summary["duration_s"] < 4.5
    lat = summary["latency_ms"]
    assert 10 <= lat["p50"] <= lat["p99"] <= lat["max"]  # /health sleeps 10 ms
    rec = Recording.load(out)
    ok = sum(s.outcomes.get("ok", 0) for s in rec.seconds)
    assert summary["requests"] == ok + summary["errors"]["total"] == rec.totals.sent > 100
    assert summary["errors"]["total"] == 0
    # both worker PIDs were sampled with CPU, memory and FDs, and the FD limit was raised and recorded
    sampled = {p.pid: p for s in rec.samples for p in s.procs if p.role == "worker"}
    assert set(sampled) == set(summary["worker_pids"])
    assert all(p.rss_mb > 0 and p.fds > 0 and p.fd_limit == rec.run.limits["nofile_soft"] for p in sampled.values())
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "smoke" in html
    assert (out / "server.stderr.log").exists()
    assert "requests" in p.stdout and str(out) in p.stdout


def test_closed_model_sends_users_times_loops_exactly(tmp_path, env):
    scenario = write_scenario(tmp_path / "loops.toml", "sample_app.main:app", ROOT,
                              'users = 7\nloops = 13\nramp_up = "500ms"\ndrivers = 2', "/fast")
    out = tmp_path / "run"
    p = cli(env, "run", str(scenario), "--out", str(out), "--quiet")
    assert p.returncode == 0, p.stderr
    rec = Recording.load(out)
    assert rec.totals.drivers_done == 2
    assert rec.totals.sent == 91 and rec.totals.outcomes == {"ok": 91}
    assert json.loads((out / "summary.json").read_text())["requests"] == 91
    assert inside.routes(rec)["GET /fast"].n == 91  # the agent counted each one, the last tick's too


def test_open_model_offers_the_planned_arrivals(tmp_path, env):
    scenario = write_scenario(tmp_path / "open.toml", "sample_app.main:app", ROOT,
                              'model = "open"\nrate = 150\nduration = "2s"', "/fast")
    out = tmp_path / "run"
    p = cli(env, "run", str(scenario), "--out", str(out), "--quiet")
    assert p.returncode == 0, p.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert 298 <= summary["load"]["sent"] <= 300 and summary["load"]["dropped"] == 0
    assert summary["requests"] == summary["load"]["sent"]


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_factory_app_under_each_server(tmp_path, env, server):
    scenario = write_scenario(tmp_path / "factory.toml", "factory_app:create_app", APPS, 'users = 4\nduration = "2s"',
                              "/pid", extra=f'factory = true\nserver = "{server}"\nworkers = 2')
    out = tmp_path / "run"
    p = cli(env, "run", str(scenario), "--out", str(out), "--quiet")
    assert p.returncode == 0, p.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["server"] == server and summary["workers"] == 2 and summary["errors"]["total"] == 0
    roles = {p.role for s in Recording.load(out).samples for p in s.procs}
    assert roles == {"master", "worker", "driver", "harness"}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_run_keeps_a_partial_report(tmp_path, env, sig):
    out = tmp_path / "run"
    with cli_in_background(env, "run", SMOKE, "--duration", "60s", "--out", str(out), "--quiet") as proc:
        wait_until(proc, lambda: _lines(out / "driver.jsonl") >= 2)  # two seconds of real load
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert ("Ctrl-C" if sig == signal.SIGINT else "SIGTERM") in stderr and "Traceback" not in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["requests"] > 0
    assert summary["requests"] + summary["load"]["aborted"] == summary["load"]["sent"]
    assert (out / "report.html").exists()


def test_app_that_fails_to_import(tmp_path, env):
    scenario = write_scenario(tmp_path / "broken.toml", "broken_app:app", APPS, "users = 1\nloops = 1")
    p = cli(env, "run", str(scenario), "--out", str(tmp_path / "run"))
    assert p.returncode == 2
    first = p.stderr.strip().splitlines()[0]
    assert first.startswith("fastapi-harness: the app exited during start-up"), p.stderr
    assert "No module named 'not_a_real_module'" in p.stderr
    assert "harness/launcher.py" not in p.stderr  # the app's traceback, not ours


@pytest.mark.parametrize("target,words", [
    ("custom_ap:app", ["No module named 'custom_ap'", "did you mean 'custom_app'?", "--app-dir"]),
    ("custom_app:application", ["has no attribute 'application'", "custom_app defines:", " app"]),
])
def test_a_mistyped_app_is_one_line_naming_the_fix(tmp_path, env, target, words):
    out = tmp_path / "run"
    p = cli(env, "run", "--app", target, "--app-dir", str(APPS), "--get", "/", "--out", str(out))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert all(w in p.stderr for w in words) and "Traceback" not in p.stderr, p.stderr
    assert str(out / "server.stderr.log") in p.stderr  # the whole output stays, and is pointed at
    assert json.loads((out / "run.json").read_text())["status"] == "boot-failed"


def test_an_inline_app_without_a_request_is_refused(tmp_path, env):
    p = cli(env, "run", "--app", "custom_app:app", "--app-dir", str(APPS), "--out", str(tmp_path / "run"))
    assert p.returncode == 2 and "no request to send: add --get PATH" in p.stderr
    assert not (tmp_path / "run").exists()


def test_a_run_answered_with_404s_is_invalid_naming_the_status_and_path(tmp_path, env):
    out = tmp_path / "run"
    p = cli(env, "run", "--app", "custom_app:app", "--app-dir", str(APPS), "--get", "/nope", "--users", "2",
                "--duration", "2s", "--out", str(out), "--quiet")
    assert p.returncode == 3 and "the run is invalid: most requests were answered 4xx" in p.stderr, p.stderr
    v = json.loads((out / "summary.json").read_text())["verdict"]
    assert v["bottleneck"] == "client-errors" and "404 for GET /nope" in v["summary"], v["summary"]


def test_post_sends_its_body_inline_or_from_a_file(tmp_path, env):
    order = tmp_path / "order.json"
    order.write_text('{"items": [1, 2]}')
    for body in ('{"items": []}', f"@{order}"):
        out = tmp_path / f"run{len(body)}"
        p = cli(env, "run", "--app", "custom_app:app", "--app-dir", str(APPS), "--post", "/orders", "--body", body,
                    "--users", "2", "--duration", "1s", "--out", str(out), "--quiet")
        summary = json.loads((out / "summary.json").read_text())
        assert p.returncode == 0 and summary["requests"] > 10 and summary["errors"]["total"] == 0, p.stderr
    p = cli(env, "run", "--app", "custom_app:app", "--app-dir", str(APPS), "--post", "/orders", "--body", "x=1",
                "--users", "2", "--duration", "1s", "--out", str(tmp_path / "plain"), "--quiet")
    assert p.returncode == 3 and "422 for POST /orders" in (tmp_path / "plain" / "summary.json").read_text()
    p = cli(env, "run", "--app", "custom_app:app", "--post", "/orders", "--body", "@missing.json")
    assert p.returncode == 2 and "--body @missing.json: cannot read it" in p.stderr


def test_port_in_use(tmp_path, env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        scenario = write_scenario(tmp_path / "port.toml", "sample_app.main:app", ROOT, "users = 1\nloops = 1",
                                  extra=f"port = {port}")
        p = cli(env, "run", str(scenario), "--out", str(tmp_path / "run"))
    assert p.returncode == 2 and f"port {port} on 127.0.0.1 is already in use" in p.stderr


def test_unreachable_url(tmp_path, env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = cli(env, "run", "--url", f"http://127.0.0.1:{port}", "--get", "/", "--out", str(tmp_path / "run"))
    assert p.returncode == 2 and "nothing answers at" in p.stderr and "Traceback" not in p.stderr


def test_remote_url_needs_explicit_opt_in(tmp_path, env):
    p = cli(env, "run", "--url", "http://192.0.2.1:80", "--get", "/", "--out", str(tmp_path / "run"))
    assert p.returncode == 2 and "--allow-remote" in p.stderr


def test_target_that_dies_mid_run(tmp_path, env):
    scenario = write_scenario(tmp_path / "dying.toml", "dying_app:app", APPS, 'users = 4\nduration = "20s"', "/work")
    out = tmp_path / "run"
    p = cli(env, "run", str(scenario), "--out", str(out))
    assert p.returncode == 1, p.stderr
    assert "the target exited mid-run (code 3)" in p.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "target-died" and summary["requests"] >= 299
    assert summary["duration_s"] < 15


def test_url_mode_samples_the_given_pid(tmp_path, env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "sample_app.main:app", "--port", str(port),
                               "--no-access-log", "--log-level", "warning"], cwd=ROOT,
                              env={**env, "FASTAPI_HARNESS_RUN_DIR": str(tmp_path)})  # its SQLite file goes there
    try:
        _wait_port(port)
        out = tmp_path / "run"
        p = cli(env, "run", "--url", f"http://127.0.0.1:{port}", "--get", "/fast", "--pid", str(server.pid),
                    "--users", "5", "--duration", "2s", "--out", str(out), "--quiet")
        assert p.returncode == 0, p.stderr
        summary = json.loads((out / "summary.json").read_text())
        assert summary["worker_pids"] == [server.pid] and summary["errors"]["total"] == 0
        assert summary["requests"] > 50
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_bad_flags_exit_2_without_traceback(tmp_path, env):
    p = cli(env, "run", SMOKE, "--workers", "0", "--out", str(tmp_path / "run"))
    assert p.returncode == 2 and "[app].workers: must be ≥ 1" in p.stderr and "Traceback" not in p.stderr
    p = cli(env, "run", str(tmp_path / "nope.toml"))
    assert p.returncode == 2 and "no such scenario file" in p.stderr
    p = cli(env, "run", SMOKE, "--duration", "0s")
    assert p.returncode == 2 and "[load].duration: must be > 0" in p.stderr


def _lines(path: Path) -> int:
    try:
        return sum(1 for _ in open(path))
    except FileNotFoundError:
        return 0


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    pytest.fail(f"server on {port} never came up")


def test_a_bug_in_analysis_is_a_crash_with_a_traceback(tmp_path, env):
    p = cli(env, "run", "--app", "sample_app.main:app", "--app-dir", str(ROOT), "--get", "/fast", "--users", "2",
                "--duration", "1s", "--detector", "tests.apps.detectors:buggy", "--out", str(tmp_path / "run"))
    assert p.returncode == 1 and "Traceback" in p.stderr and "a_module_that_is_not_installed" in p.stderr
    assert "--detector" not in p.stderr.splitlines()[-1]  # not dressed up as the user's mistake
    assert (tmp_path / "run" / "driver.jsonl").stat().st_size  # what was measured is kept


def test_every_option_of_every_command_has_help_text():
    import argparse

    from harness.cli import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    bare = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, sub in commands.choices.items()
            for a in sub._actions if not a.help]
    assert len(commands.choices) >= 6 and bare == []
    for name, sub in commands.choices.items():  # each --help ends with examples to copy
        tail = sub.format_help().rstrip().rpartition("\nexamples:\n")[2]
        assert tail.startswith("  fastapi-harness ") and tail.count("\n  ") >= 1, name  # 2-3 of them
