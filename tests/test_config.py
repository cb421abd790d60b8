from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import pytest

from harness.config import DEFAULT_SCENARIO, build_scenario, load_scenario, parse_duration
from harness.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def minimal(**load) -> dict:
    return {"app": {"target": "main:app"}, "load": load or {"users": 5, "loops": 2}, "requests": [{"path": "/"}]}


def error_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as e:
        build_scenario(raw, source="x.toml")
    return str(e.value)


@pytest.mark.parametrize(
    "text,seconds", [("30s", 30), ("250ms", 0.25), ("2m", 120), ("1h", 3600), (5, 5), ("1.5s", 1.5)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["30 parsecs", "", "-1s", True, None])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_shipped_scenarios_parse():
    for path in sorted((ROOT / "scenarios").glob("*.toml")):
        s = load_scenario(path)
        assert s.requests, path
        assert Path(s.app.app_dir).is_dir(), path


def test_seed_million_is_the_article_test():
    s = load_scenario(ROOT / "scenarios" / "seed_million.toml")
    assert (s.load.model, s.load.users, s.load.ramp_up_s, s.load.loops) == ("closed", 10_000, 100.0, 100)
    assert s.planned_requests == 1_000_000
    assert [(r.method, r.path) for r in s.requests] == [("GET", "/health")]


def test_builtin_default_is_smoke_toml():
    raw = tomllib.loads((ROOT / "scenarios" / "smoke.toml").read_text())
    from_file = build_scenario(raw, base_dir=ROOT / "scenarios")
    embedded = build_scenario(copy.deepcopy(DEFAULT_SCENARIO), base_dir=ROOT)
    assert from_file == embedded


def test_app_dir_is_relative_to_the_file(tmp_path):
    (tmp_path / "s.toml").write_text(
        '[app]\ntarget = "m:app"\napp_dir = "src"\n[load]\nusers = 1\nloops = 1\n[[requests]]\npath = "/"\n'
    )
    assert load_scenario(tmp_path / "s.toml").app.app_dir == str(tmp_path / "src")


def test_json_body_sets_content_type():
    raw = minimal()
    raw["requests"] = [{"path": "/items", "method": "post", "json": {"a": 1}}]
    r = build_scenario(raw).requests[0]
    assert (r.method, r.body, r.headers["Content-Type"]) == ("POST", '{"a":1}', "application/json")


def test_open_model_with_stages():
    s = build_scenario(minimal(model="open", stages=[{"duration": "2s", "rate": 10}, {"duration": "3s", "rate": 20}]))
    assert s.planned_duration_s == 5.0
    assert [st.rate for st in s.load.stages] == [10, 20]


def test_overrides_apply_and_validate():
    s = build_scenario(minimal(), overrides={"app.workers": "4", "load.users": 7})
    assert (s.app.workers, s.load.users) == (4, 7)
    with pytest.raises(ConfigError, match=r"\[app\].workers.*≥ 1"):
        build_scenario(minimal(), overrides={"app.workers": 0})


@pytest.mark.parametrize("mutate,message", [
    (lambda r: r.update(lod={}), r"lod: unknown key; did you mean \[load\]"),
    (lambda r: r["load"].update(usrs=3), r"\[load\]\.usrs: unknown key; did you mean 'users'"),
    (lambda r: r["load"].update(users="many"), r"\[load\]\.users: expected a whole number"),
    (lambda r: r["load"].update(users=0), r"\[load\]\.users: must be ≥ 1"),
    (lambda r: r["app"].update(workers=0), r"\[app\]\.workers: must be ≥ 1"),
    (lambda r: r["app"].update(workers=1.5), r"\[app\]\.workers: expected a whole number"),
    (lambda r: r["app"].update(server="hypercorn"), r"\[app\]\.server: expected one of uvicorn, gunicorn"),
    (lambda r: r["app"].update(target="main"), r"\[app\]\.target: expected 'module:attribute'"),
    (lambda r: r["app"].update(factory="maybe"), r"\[app\]\.factory: expected true or false"),
    (lambda r: r["app"].update(readiness={"timeout": "0s"}), r"\[app.readiness\]\.timeout: must be > 0"),
    (lambda r: r["load"].update(duration="0s"), r"\[load\]\.duration: must be > 0"),
    (lambda r: r["load"].update(duration="-3s"), r"\[load\]\.duration: "),
    (lambda r: r["load"].update(think_time="soon"), r"\[load\]\.think_time: expected a duration"),
    (lambda r: r["load"].update(model="burst"), r"\[load\]\.model: expected one of closed, open"),
    (lambda r: r["load"].pop("loops"), r"a closed model needs loops or duration"),
    (lambda r: r["load"].update(rate=5), r"\[load\]\.rate: belongs to the open model"),
    (lambda r: r.update(requests=[]), r"no requests"),
    (lambda r: r.update(requests=[{"method": "GET"}]), r"\[\[requests\]\] #1\.path: missing"),
    (lambda r: r.update(requests=[{"path": "health"}]), r"path: must start with '/'"),
    (lambda r: r.update(requests=[{"path": "/", "method": "BREW"}]), r"method: expected one of"),
    (lambda r: r.update(requests=[{"path": "/", "weight": 0}]), r"weight: must be ≥ 1"),
    (lambda r: r.update(requests=[{"path": "/", "body": "x", "json": {}}]), r"either body or json"),
    (lambda r: r.update(slo={"p99": "fast"}), r"\[slo\]\.p99: expected a duration"),
    (lambda r: r.update(sampling={"interval": "0ms"}), r"\[sampling\]\.interval: must be > 0"),
])
def test_validation_errors_name_the_field(mutate, message):
    raw = minimal()
    mutate(raw)
    msg = error_of(raw)
    assert msg.startswith("x.toml: ")
    assert __import__("re").search(message, msg), msg


@pytest.mark.parametrize("load,message", [
    ({"model": "open"}, r"needs an arrival rate"),
    ({"model": "open", "rate": 10}, r"needs a duration"),
    ({"model": "open", "rate": 0, "duration": "1s"}, r"rate: must be > 0"),
    ({"model": "open", "rate": 10, "duration": "5s", "users": 3}, r"users: belongs to the closed model"),
    ({"model": "open", "rate": 10, "duration": "5s", "ramp": "9s"}, r"ramp .* is longer than duration"),
    ({"model": "open", "rate": 10, "stages": [{"duration": "1s", "rate": 1}]}, r"either \[\[load.stages\]\] or rate"),
    ({"model": "open", "stages": [{"rate": 1}]}, r"stages\]\] #1\.duration: missing"),
])
def test_open_model_errors(load, message):
    assert __import__("re").search(message, error_of(minimal(**load)))


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such scenario file"):
        load_scenario(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[app\n")
    with pytest.raises(ConfigError, match=r"bad.toml: not valid TOML"):
        load_scenario(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[app]\ntarget = "m:app"\nworkerz = 2\n[load]\nusers = 1\nloops = 1\n[[requests]]\npath = "/"\n')
    with pytest.raises(ConfigError, match=r"unknown.toml: \[app\]\.workerz: unknown key; did you mean 'workers'"):
        load_scenario(unknown)
