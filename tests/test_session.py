"""The session, the knee search and compare, without uvicorn: a fake target (real drivers, a real
recording) and a simulated session (no process, no clock)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from harness.config import build_scenario
from harness.histogram import Histogram
from harness.knee_search import DiagnoseOptions, KneeSearch
from harness.matrix import expand, parse_axes, run_matrix, summarize_matrix, validate
from harness.recording import Recording
from harness.records import DriverSecond, Event
from harness.runner import run_scenario
from tests.fakes import FakeTarget

RAW = {"name": "fake", "load": {"users": 4, "duration": "1s"}, "requests": [{"path": "/x"}]}


def test_a_fixed_load_against_a_fake_target_is_recorded(tmp_path):
    target = FakeTarget()
    status = run_scenario(build_scenario(RAW), tmp_path / "run", target=target)
    rec = Recording.load(tmp_path / "run")
    assert status == "completed" == rec.status and target.started and target.stopped
    assert rec.run.server.kind == "fake" and rec.run.server.url == target.url
    assert sum(s.completed for s in rec.seconds) == rec.totals.sent == target.served > 0
    # the fake target has no process of its own: the drivers and the harness itself are what is sampled
    assert {p.role for s in rec.samples for p in s.procs} == {"driver", "harness"}


class SimulatedSession:
    """A session whose target serves at most ``capacity`` req/s: below it every request takes 5 ms,
    above it the excess queues (achieved = capacity, latency grows). Time advances per drive."""

    agent_on = True

    def __init__(self, capacity: float):
        self.scenario = build_scenario({"name": "sim", "load": {"users": 20, "duration": "10s"},
                                        "requests": [{"path": "/"}], "slo": {"p99": "100ms"}})
        self.capacity, self.clock, self.events, self.profiles = capacity, 0.0, [], []

    def now(self) -> float:
        return self.clock

    def next_start(self) -> float:
        return float(int(self.clock) + 1)

    def event(self, kind: str, **fields: Any) -> None:
        self.events.append(Event(self.clock, kind, **fields))

    def request_profile(self, seconds: float) -> None:
        self.profiles.append(seconds)

    def drive(self, scenario: Any, start_s: float, deadline: float | None = None, **_: Any) -> list[DriverSecond]:
        load = scenario.load
        offered = load.rate if load.model == "open" else load.users / 0.005
        achieved = min(offered, self.capacity)
        latency_us = 5_000 if offered <= self.capacity else 500_000
        seconds = int(load.duration_s)
        self.clock = start_s + seconds
        return [DriverSecond(driver=0, t=int(start_s) + i, span=1.0, sent=int(offered), outcomes={"ok": int(achieved)},
                             hist=_hist(latency_us, int(achieved)))
                for i in range(seconds)]


def _hist(us: int, n: int) -> Histogram:
    h = Histogram()
    for _ in range(n):
        h.record(us)
    return h


def test_the_knee_search_steps_to_the_knee_and_holds_at_what_was_answered():
    session = SimulatedSession(capacity=300)
    lines: list[str] = []
    KneeSearch(DiagnoseOptions(max_time_s=60, step_s=4), lines.append)(session)
    steps = [e for e in session.events if e.phase == "step"]
    hold = next(e for e in session.events if e.phase == "hold")
    assert [e.phase for e in session.events][0] == "calibrate"
    # calibration saw 300 req/s; steps start at 40 % of it, ×1.5 until the offered rate outruns 300
    assert [e.offered_rps for e in steps] == [120.0, 180.0, 270.0, 405.0]
    assert "knee" in lines[-2] and hold.offered_rps == 300.0 and session.profiles == [4.0]


def test_a_calibration_that_collapses_is_profiled_there_not_stepped_from_one_request():
    session = SimulatedSession(capacity=0.5)  # 20 users get a response every 2 s between them
    lines: list[str] = []
    KneeSearch(DiagnoseOptions(max_time_s=60, step_s=4), lines.append)(session)
    assert [e.phase or e.why for e in session.events] == ["calibrate", "collapse", "hold"]
    hold = session.events[-1]
    assert hold.users == 20 and "collapsed" in lines[0] and session.profiles == [4.0]


def test_the_knee_search_stops_at_its_time_budget():
    session = SimulatedSession(capacity=1e9)
    lines: list[str] = []
    KneeSearch(DiagnoseOptions(max_time_s=20, step_s=4), lines.append)(session)
    assert session.clock <= 20 and any("--max-time" in line for line in lines)
    assert next(e for e in session.events if e.kind == "search-ended").why == "max-time"


def test_compare_runs_every_configuration_against_fake_targets(tmp_path):
    configs = expand(parse_axes(None, None, ["load.users=1,4"]))
    scenarios = validate(RAW, "test", None, {}, configs)
    targets: list[FakeTarget] = []

    def run(scenario: Any, run_dir: Any, say: Any) -> str:
        targets.append(FakeTarget())
        return run_scenario(scenario, run_dir, target=targets[-1])

    def finish(run_dir: Any) -> dict[str, Any]:
        rec = Recording.load(run_dir)
        n = sum(s.completed for s in rec.seconds)
        return {"requests": n, "throughput_rps": n, "latency_ms": {"p50": 1, "p99": 1}, "errors": {"rate": 0},
                "verdict": None}

    record = run_matrix(configs, scenarios, tmp_path, 1, "fixed", run, finish, lambda line: None)
    assert [r["label"] for r in record["runs"]] == ["users=1", "users=4"] and len(targets) == 2
    assert all(t.stopped and t.served for t in targets)
    table, curves = summarize_matrix(tmp_path, record, cores=2)
    assert [r["status"] for r in table["rows"]] == ["ok", "ok"] and set(curves) == {"users=1", "users=4"}


def test_diagnose_options_name_the_bad_flag():
    from harness.errors import ConfigError

    with pytest.raises(ConfigError, match="--max-time/--step"):
        DiagnoseOptions.from_flags(100, "soon", "4s")
    with pytest.raises(ConfigError, match="must be positive"):
        DiagnoseOptions.from_flags(0, "60s", "4s")
    assert dataclasses.asdict(DiagnoseOptions.from_flags(10, "30s", "2s"))["max_time_s"] == 30.0
