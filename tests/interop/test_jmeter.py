"""JMeter test plans: import (5.x and 2.13 files, the usual elements), export, round trip, bad input, a run."""

from __future__ import annotations

import json

import pytest

from harness.config import build_scenario, load_scenario
from harness.errors import ConfigError
from harness.interop.jmeter import read_jmx, write_jmx
from tests.conftest import DATA, ROOT, cli

PLANS = DATA / "jmeter"
APP = {"target": "sample_app.main:app"}


@pytest.mark.parametrize("plan", ["seed_v5.jmx", "seed_v2.jmx"])
def test_the_seed_plan_is_the_closed_model(plan):
    raw, notes = read_jmx(PLANS / plan)
    s = build_scenario({**raw, "app": APP})
    assert (s.load.model, s.load.users, s.load.ramp_up_s, s.load.loops) == ("closed", 10_000, 100.0, 100)
    assert s.planned_requests == 1_000_000
    assert [(r.method, r.path) for r in s.requests] == [("GET", "/health")]
    assert notes == (["not supported, ignored: ResultCollector (Summary Report)"] if plan == "seed_v5.jmx" else [])


def test_headers_defaults_timers_controllers_and_disabled_elements():
    raw, notes = read_jmx(PLANS / "shop.jmx")
    s = build_scenario({**raw, "app": APP})
    assert (s.load.users, s.load.ramp_up_s, s.load.duration_s, s.load.loops) == (25, 5.0, 60.0, 0)
    assert s.load.think_time_s == pytest.approx(0.2)  # uniform 100 ms + up to 200 ms: its mean
    assert [(r.name, r.method, r.path) for r in s.requests] == [
        ("list items", "GET", "/items?page=2"), ("item", "GET", "/items/7"), ("checkout", "POST", "/checkout")]
    checkout = s.requests[2]
    assert checkout.body == '{"item": 7}'
    assert checkout.headers == {
        "Accept": "application/json",
        "Authorization": "Bearer secret-7",
        "Content-Type": "application/json",
    }
    assert s.requests[0].headers == {"Accept": "application/json"}
    assert "DELETE" not in {r.method for r in s.requests}  # the disabled sampler
    assert "not supported, ignored: ResponseAssertion (is 200)" in notes
    assert "not supported, ignored: BeanShellPostProcessor (legacy script)" in notes
    assert any(n.startswith("approximated: UniformRandomTimer") for n in notes)
    raw, _ = read_jmx(PLANS / "shop.jmx", {"users": "3"})
    assert raw["load"]["users"] == 3  # ${__P(users,25)} with -J users=3


@pytest.mark.parametrize(
    "scenario",
    [
        {
            "name": "rt",
            "app": APP,
            "load": {"users": 4, "ramp_up": "2s", "loops": 8, "think_time": "150ms"},
            "requests": [
                {"path": "/health", "weight": 3},
                {"path": "/items", "method": "POST", "json": {"a": 1}, "headers": {"X-K": "v"}},
            ],
        },
        {
            "name": "rt2",
            "app": APP,
            "load": {"users": 2, "duration": "30s"},
            "requests": [{"path": "/fast?x=1", "name": "fast"}],
        },
    ],
)
def test_export_then_import_round_trips(tmp_path, scenario):
    s = build_scenario(scenario)
    (tmp_path / "p.jmx").write_text(write_jmx(s))
    raw, notes = read_jmx(tmp_path / "p.jmx")
    back = build_scenario({**raw, "app": APP})
    assert notes == []
    fields = ("model", "users", "ramp_up_s", "loops", "duration_s", "think_time_s")
    assert [getattr(back.load, f) for f in fields] == [getattr(s.load, f) for f in fields]
    assert back.requests == s.requests and back.name == s.name


def test_export_refuses_what_jmeter_cannot_say():
    s = build_scenario(
        {"app": APP, "load": {"model": "open", "rate": 10, "duration": "5s"}, "requests": [{"path": "/"}]}
    )
    with pytest.raises(ConfigError, match="only closed-model scenarios"):
        write_jmx(s)
    s = build_scenario({"app": APP, "load": {"users": 1, "loops": 5}, "requests": [{"path": "/", "weight": 2}]})
    with pytest.raises(ConfigError, match="not a multiple"):
        write_jmx(s)


@pytest.mark.parametrize("text,message", [
    ("this is not xml", "not valid XML"),
    ("<testPlan/>", "root element is <testPlan>"),
    ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><jmeterTestPlan/>', "DOCTYPE/ENTITY"),
    ("<jmeterTestPlan><hashTree/></jmeterTestPlan>", "no enabled Thread Group"),
])
def test_bad_plans(tmp_path, text, message):
    (tmp_path / "bad.jmx").write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_jmx(tmp_path / "bad.jmx")


def test_plan_without_sampler_or_with_undefined_variable(tmp_path):
    seed = (PLANS / "seed_v5.jmx").read_text()
    (tmp_path / "nosampler.jmx").write_text(
        seed.replace('testname="GET /health" enabled="true"', 'testname="GET /health" enabled="false"')
    )
    with pytest.raises(ConfigError, match="no enabled HTTP Request sampler"):
        read_jmx(tmp_path / "nosampler.jmx")
    (tmp_path / "undefined.jmx").write_text(seed.replace(">/health<", ">/items/${MISSING}<"))
    with pytest.raises(ConfigError, match=r"variable \$\{MISSING\} is not defined"):
        read_jmx(tmp_path / "undefined.jmx")


@pytest.mark.e2e
def test_export_cli_and_a_run_from_the_seed_plan(tmp_path, env):
    out = cli(env, "export-jmx", str(ROOT / "scenarios" / "smoke.toml"), timeout=60)
    assert out.returncode == 0 and "<jmeterTestPlan" in out.stdout
    assert load_scenario(ROOT / "scenarios" / "smoke.toml").requests[0].path in out.stdout
    run = tmp_path / "run"
    p = cli(env, "run", "--jmx", str(PLANS / "seed_v5.jmx"), "--app", "sample_app.main:app",
            "--app-dir", str(ROOT), "--users", "20", "--loops", "5", "--set", "load.ramp_up=1s",
            "--out", str(run), "--quiet", timeout=120)
    assert p.returncode == 0, p.stderr
    assert "ResultCollector (Summary Report)" in p.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["requests"] == 100 and summary["errors"]["total"] == 0 and summary["scenario"] == "FastAPI_Test"
    p = cli(env, "run", "--jmx", str(PLANS / "seed_v5.jmx"), timeout=60)
    assert p.returncode == 2 and "add --app module:app" in p.stderr


@pytest.mark.e2e
def test_a_run_writes_a_jtl_matching_its_summary(tmp_path, env):
    import csv

    from harness.load.jtl import HEADER

    run, jtl = tmp_path / "run", tmp_path / "results.jtl"
    p = cli(env, "run", str(ROOT / "scenarios" / "smoke.toml"), "--duration", "3s", "--drivers", "2",
            "--jtl", str(jtl), "--out", str(run), "--quiet", timeout=120)
    assert p.returncode == 0, p.stderr
    with open(jtl, newline="") as f:
        assert f.readline().strip() == HEADER
        f.seek(0)
        rows = list(csv.DictReader(f))
    summary = json.loads((run / "summary.json").read_text())
    assert len(rows) == summary["requests"] > 100
    assert {r["label"] for r in rows} == {"GET /health", "GET /fast"} and all(r["success"] == "true" for r in rows)
    assert {r["threadName"].split("-")[0] for r in rows} == {"driver 0", "driver 1"}
    elapsed = sorted(int(r["elapsed"]) for r in rows)
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        jtl_value = elapsed[max(0, int(q * len(elapsed) + 0.999999) - 1)]
        # JTL keeps whole milliseconds (truncated), the histogram is within 0.4 %
        assert (
            summary["latency_ms"][name] - 1.0 - 0.01 * summary["latency_ms"][name]
            <= jtl_value
            <= summary["latency_ms"][name] * 1.01
        )
    start = min(int(r["timeStamp"]) for r in rows) / 1000
    assert abs(start - json.loads((run / "run.json").read_text())["t0"]) < 2.0
