"""The seed's scaling shapes, for real: app instances behind nginx, a Redis cache, both booted by the harness,
sampled, compared, and stopped on every exit path (real nginx and redis-server; .ci/run installs them)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from harness.config import build_scenario
from harness.errors import ConfigError
from harness.load.driver import _template
from harness.proxy import nginx_conf
from harness.recording import Recording
from tests.conftest import ROOT, cli, cli_in_background, wait_until

SCENARIOS = ROOT / "scenarios"
BASE = {"load": {"users": 2, "duration": "2s"}, "requests": [{"path": "/"}]}



def gone(pid: int | None) -> bool:
    try:
        return pid is None or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ------------------------------------------------------------------ pure


@pytest.mark.parametrize("raw,words", [
    ({"app": {"instances": 2}}, "2 instances need a proxy in front of them"),
    ({"url": "http://127.0.0.1:9/", "proxy": {"kind": "nginx"}}, "a target already running (--url)"),
    ({"redis": {"start": True, "url": "redis://127.0.0.1:1/0"}}, "either start = true"),
    ({"redis": {"url": "http://x"}}, "expected redis://HOST:PORT/DB"),
    ({"requests": [{"path": "/items/{id}"}]}, "the only template a path takes is {rand:LO-HI}"),
    ({"requests": [{"path": "/items/{rand:9-1}"}]}, "low end is above its high end"),
])
def test_topologies_the_harness_cannot_run_are_refused(raw, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)").replace("{", r"\{")
                       .replace("}", r"\}")):
        build_scenario({**BASE, **raw})


def test_a_random_id_template_splits_the_request_line_only():
    wire = b"GET /items/{rand:1-10}?page={rand:3-3} HTTP/1.1\r\nX-Note: {rand:1-2}\r\n\r\n"
    assert _template(wire) == [b"GET /items/", (1, 10), b"?page=", (3, 3), b" HTTP/1.1\r\nX-Note: {rand:1-2}\r\n\r\n"]
    assert _template(b"GET /items/1 HTTP/1.1\r\n\r\n") is None


# ------------------------------------------------------------------ real nginx and redis-server

e2e = pytest.mark.e2e


@e2e
def test_the_nginx_configuration_passes_nginx_t(tmp_path):
    scenario = build_scenario({**BASE, "app": {"instances": 3}, "proxy": {"kind": "nginx", "balance": "least_conn"}})
    (tmp_path / "tmp").mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_conf(scenario.proxy, [8001, 8002, 8003], 8000, 8080, tmp_path))
    p = subprocess.run(["nginx", "-t", "-q", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "least_conn;" in conf.read_text() and conf.read_text().count("server 127.0.0.1:800") == 3


@e2e
def test_two_instances_behind_nginx_both_serve_and_nothing_outlives_the_run(tmp_path, env):
    out = tmp_path / "run"
    p = cli(env, "run", str(SCENARIOS / "instances.toml"), "--duration", "4s", "--out", str(out))
    assert p.returncode in (0, 3), p.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [i["instance"] for i in summary["instances"]] == [0, 1]
    assert all(i["requests"] > 0.3 * summary["requests"] for i in summary["instances"]), summary["instances"]
    assert summary["proxy"]["requests"] >= 0.9 * summary["requests"]
    rec = Recording.load(out)
    assert rec.run.server.kind == "nginx" and len({i["url"] for i in rec.run.server.instances}) == 2
    assert {p.role for s in rec.samples for p in s.procs} >= {"proxy", "worker", "driver"}
    assert "instances" in p.stdout and "nginx:" in p.stdout and "proxy" in (out / "report.html").read_text()
    assert all(gone(pid) for pid in [rec.run.server.pid, *(i["pid"] for i in rec.run.server.instances)])


@e2e
def test_an_instance_dying_mid_run_shows_in_the_proxy_errors_and_the_run_goes_on(tmp_path, env):
    out = tmp_path / "run"
    args = ("run", str(SCENARIOS / "instances.toml"), "--duration", "6s", "--out", str(out))
    with cli_in_background(env, *args) as proc:
        wait_until(proc, lambda: (out / "driver.jsonl").is_file() and (out / "driver.jsonl").stat().st_size > 0)
        victim = json.loads((out / "run.json").read_text())["server"]["instances"][1]["pid"]
        psutil.Process(victim).kill()
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode in (0, 3), stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["proxy"]["errors"].get("upstream-connect", 0) > 0, summary["proxy"]
    assert any(e["kind"] == "worker-exited" and e["pid"] == victim for e in summary["events"])
    assert "upstream-connect" in stdout and "worker-exited" in stdout


@e2e
def test_ctrl_c_stops_nginx_the_instances_and_redis(tmp_path, env):
    out = tmp_path / "run"
    with cli_in_background(env, "run", str(SCENARIOS / "instances.toml"), "--set", "redis.start=true", "--duration",
                           "60s", "--out", str(out)) as proc:
        wait_until(proc, lambda: (out / "driver.jsonl").is_file() and (out / "driver.jsonl").stat().st_size > 0)
        run = json.loads((out / "run.json").read_text())
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
    pids = [run["server"]["pid"], run["redis"]["pid"], *(i["pid"] for i in run["server"]["instances"])]
    assert all(pids) and all(gone(pid) for pid in pids)


@e2e
def test_compare_with_and_without_redis_reports_the_hit_rate_and_the_change(tmp_path, env):
    out = tmp_path / "cmp"
    scenario = tmp_path / "cache.toml"  # 50 ids instead of 2,000: the key space fills in a second
    scenario.write_text((SCENARIOS / "cache.toml").read_text().replace('app_dir = ".."', f'app_dir = "{ROOT}"')
                        .replace("{rand:1-2000}", "{rand:1-50}"))
    p = cli(env, "compare", str(scenario), "--set", "redis.start=false,true", "--fixed", "--duration", "5s",
            "--out", str(out), timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "cache hit rate" in p.stdout and "The cache " in p.stdout and "hit rate was" in p.stdout, p.stdout
    runs = sorted(d for d in out.iterdir() if (d / "summary.json").is_file())
    without, cached = (json.loads((d / "summary.json").read_text()) for d in runs)
    assert without["cache"] is None
    # 50 ids: each is missed about once, every other read hits (the ids are drawn afresh per request)
    assert 50 <= cached["cache"]["misses"] <= 150 and cached["cache"]["hits"] > 5 * cached["cache"]["misses"]
    assert "cache hit rate" in (out / "report.html").read_text()


@e2e
@pytest.mark.parametrize("args,words", [
    (("--set", "proxy.binary=nginx-not-here"), "[proxy] binary = 'nginx-not-here': not found; install it "
                                                "(`apt-get install nginx-light`"),
    (("--set", "redis.start=true", "--set", "redis.binary=/nowhere/redis-server"),
     "[redis] binary = '/nowhere/redis-server': not found"),
    (("--set", "proxy.kind=none"), "2 instances need a proxy in front of them"),
])
def test_a_missing_server_or_a_proxyless_topology_is_one_line_and_exit_2(tmp_path, env, args, words):
    p = cli(env, "run", str(SCENARIOS / "instances.toml"), *args, "--out", str(tmp_path / "run"))
    assert p.returncode == 2 and words in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_every_topology_scenario_is_valid():
    for name in ("instances", "cache", "cache_pool", "seed_topology"):
        scenario = build_scenario(__import__("tomllib").loads((SCENARIOS / f"{name}.toml").read_text()),
                                  base_dir=SCENARIOS)
        assert scenario.proxy.kind == "nginx" or scenario.redis.start, name
    assert Path(SCENARIOS / "seed_topology.toml").read_text().count("users = 10000") == 1


@e2e
def test_timeouts_behind_a_full_accept_queue_are_explained_with_the_kernels_counters(tmp_path, env):
    scenario = tmp_path / "backlog.toml"
    scenario.write_text(f"""name = "backlog"
[app]
target = "sample_app.main:app"
app_dir = "{ROOT}"
backlog = 8
[app.readiness]
path = "/health"
[load]
users = 600
duration = "5s"
timeout = "2s"
[[requests]]
path = "/health"
""")
    out = tmp_path / "run"
    p = cli(env, "run", str(scenario), "--out", str(out))
    assert p.returncode in (0, 3), p.stderr[-2000:]
    rec = Recording.load(out)
    assert sum((s.listen or {}).get("overflows", 0) for s in rec.samples) > 0
    verdict = json.loads((out / "summary.json").read_text())["verdict"]
    note = next(s["summary"] for s in verdict["secondary"] if s["bottleneck"] == "connection-errors")
    assert "turned away" in note and "of a 8 backlog" in note, note


@e2e
def test_redis_going_away_mid_run_is_counted_said_and_leaves_nothing(tmp_path, env):
    out = tmp_path / "run"
    with cli_in_background(env, "run", str(SCENARIOS / "cache.toml"), "--duration", "6s", "--out", str(out)) as proc:
        wait_until(proc, lambda: (out / "cache.jsonl").is_file() and (out / "cache.jsonl").stat().st_size > 0)
        redis = json.loads((out / "run.json").read_text())["redis"]["pid"]
        psutil.Process(redis).kill()
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode in (0, 1) and "Traceback" not in stderr, stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["errors"]["by_kind"].get("5xx", 0) > 0, summary["errors"]
    assert "Mid-run, Redis stopped answering at t=" in summary["verdict"]["summary"], summary["verdict"]["summary"]
    assert gone(redis)
