from __future__ import annotations

import dataclasses
import json

import pytest

from harness.analysis.summary import summarize
from harness.config import build_scenario
from harness.errors import ConfigError, RecordError
from harness.histogram import Histogram
from harness.recording import Recording, RunWriter
from harness.records import FORMAT, DriverDone, DriverSecond, Sample
from tests.conftest import DATA


def current(rec: Recording) -> Recording:
    """``rec`` as a run of the current format (what saving it writes)."""
    return dataclasses.replace(rec, run=dataclasses.replace(rec.run, format=FORMAT))


def test_round_trip(tmp_path):
    rec = Recording.load(DATA / "diagnose_blocking")
    again = Recording.load(rec.save(tmp_path / "copy"))
    assert again == rec and rec.agents and rec.events
    assert again.seconds == rec.seconds


def test_seconds_merge_drivers():
    rec = Recording(run=Recording.load(DATA / "smoke_run").run, driver_records=(
        DriverSecond(driver=0, t=0, span=1.0, sent=10, outcomes={"ok": 9, "5xx": 1}, hist=Histogram({100: 10}, 100),
                     lag_max_ms=2.0, late=1, cpu=0.5),
        DriverSecond(driver=1, t=0, span=1.0, sent=5, outcomes={"ok": 5}, hist=Histogram({100: 2, 300: 3}, 700),
                     lag_max_ms=9.0, cpu=0.25),
        DriverSecond(driver=0, t=1, span=0.5, sent=1, outcomes={"timeout": 1}, cpu=0.1),
        DriverDone(driver=0, sent=11, aborted=0, outcomes={"ok": 9, "5xx": 1, "timeout": 1}),
    ))
    s0, s1 = rec.seconds
    assert (s0.sent, s0.completed, s0.errors, s0.late, s0.lag_max_ms) == (15, 15, 1, 1, 9.0)
    assert s0.hist.counts == {100: 12, 300: 3} and s0.hist.max_us == 700
    assert s0.driver_cpu == (0.5, 0.25)
    assert (s1.t, s1.span, s1.errors) == (1, 0.5, 1)
    assert rec.totals.sent == 11 and rec.totals.drivers_done == 1


def test_torn_last_line_is_skipped(tmp_path):
    run = Recording.load(DATA / "smoke_run").save(tmp_path / "r")
    with open(run / "driver.jsonl", "a") as f:
        f.write('{"type": "second", "driver": 0, "t": 99, "se')
    assert max(s.t for s in Recording.load(run).seconds) < 99


def test_writer_appends_and_flushes(tmp_path):
    w = RunWriter(tmp_path / "live")
    w.write_run(
        status="running", scenario=build_scenario({"requests": [{"path": "/"}], "load": {"loops": 1}}).to_dict()
    )
    w.append(Sample(0.1, ()))
    # readable while the writer is still open: a crash now keeps this line
    assert json.loads((tmp_path / "live" / "samples.jsonl").read_text()) == {"t": 0.1, "procs": [], "host_cpu": []}
    with pytest.raises(TypeError, match="no field"):
        w.write_run(statsu="typo")
    w.close()
    rec = Recording.load(tmp_path / "live")
    assert rec.status == "running" and rec.run.format == FORMAT and rec.samples == (Sample(0.1, ()),)


def test_not_a_run_dir(tmp_path):
    with pytest.raises(ConfigError, match="not a run directory"):
        Recording.load(tmp_path)


def test_summary_of_committed_smoke_run():
    rec = Recording.load(DATA / "smoke_run")
    s = summarize(rec)
    assert s["requests"] == sum(x.completed for x in rec.seconds) > 0
    assert s["requests"] == rec.totals.sent  # every request accounted for
    assert s["errors"]["total"] == s["requests"] - sum(x.outcomes.get("ok", 0) for x in rec.seconds)
    lat = s["latency_ms"]
    assert 10.0 <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["p999"] <= lat["max"]
    assert s["throughput_rps"] == pytest.approx(s["requests"] / s["duration_s"], rel=1e-3)
    assert s["workers"] == 2 and len(s["worker_pids"]) == 2
    assert 0 < s["resources"]["worker_cpu_p90"] < 2
    assert s["resources"]["fds_max"] > 0 and s["resources"]["worker_rss_max_mb"] > 10


def test_the_previous_format_is_read_and_saved_as_the_current_one(tmp_path):
    old = DATA / "smoke_run"  # format 1: run.json has no "format"; retired fields (threads, labels, ...) dropped
    assert "format" not in json.loads((old / "run.json").read_text())
    rec = Recording.load(old)
    assert rec.run.format == 1 and rec.seconds and rec.samples[0].procs
    again = Recording.load(rec.save(tmp_path / "now"))
    assert again.run.format == FORMAT and again.seconds == rec.seconds and again.samples == rec.samples
    assert "threads" not in (tmp_path / "now" / "samples.jsonl").read_text()


def test_a_newer_format_is_refused_in_one_line(tmp_path):
    run = Recording.load(DATA / "smoke_run").save(tmp_path / "r")
    data = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**data, "format": FORMAT + 1}))
    with pytest.raises(RecordError, match=f"format {FORMAT + 1}, newer than this fastapi-harness reads"):
        Recording.load(run)


@pytest.mark.parametrize("stream", ["driver.jsonl", "samples.jsonl", "events.jsonl"])
def test_an_unknown_field_is_an_error_not_a_silent_drop(tmp_path, stream):
    run = Recording.load(DATA / "diagnose_blocking").save(tmp_path / "r")
    first, rest = (run / stream).read_text().split("\n", 1)
    (run / stream).write_text(json.dumps({**json.loads(first), "surprise": 1}) + "\n" + rest)
    with pytest.raises(RecordError, match="unknown field.*surprise"):
        Recording.load(run)


def test_every_committed_recording_round_trips(tmp_path):
    for run in sorted(p.parent for p in DATA.glob("*/run.json")):
        rec = Recording.load(run)
        assert Recording.load(rec.save(tmp_path / run.name)) == current(rec), run.name
