from __future__ import annotations

import json

import pytest

from harness.analysis.summary import summarize
from harness.errors import ConfigError
from harness.recording import Recording, RunWriter
from tests.conftest import DATA


def test_round_trip(tmp_path):
    rec = Recording.load(DATA / "smoke_run")
    again = Recording.load(rec.save(tmp_path / "copy"))
    assert again == rec
    assert again.seconds == rec.seconds


def test_seconds_merge_drivers():
    rec = Recording(run={}, driver_records=(
        {"type": "second", "driver": 0, "t": 0, "span": 1.0, "sent": 10, "outcomes": {"ok": 9, "5xx": 1},
         "hist": {"b": [[100, 10]], "max": 100}, "lag_max_ms": 2.0, "late": 1, "cpu": 0.5},
        {"type": "second", "driver": 1, "t": 0, "span": 1.0, "sent": 5, "outcomes": {"ok": 5},
         "hist": {"b": [[100, 2], [300, 3]], "max": 700}, "lag_max_ms": 9.0, "late": 0, "cpu": 0.25},
        {"type": "second", "driver": 0, "t": 1, "span": 0.5, "sent": 1, "outcomes": {"timeout": 1}, "cpu": 0.1},
        {"type": "done", "driver": 0, "sent": 11, "aborted": 0, "outcomes": {"ok": 9, "5xx": 1, "timeout": 1}},
    ))
    s0, s1 = rec.seconds
    assert (s0.sent, s0.completed, s0.errors, s0.late, s0.lag_max_ms) == (15, 15, 1, 1, 9.0)
    assert s0.hist.counts == {100: 12, 300: 3} and s0.hist.max_us == 700
    assert s0.driver_cpu == (0.5, 0.25)
    assert (s1.t, s1.span, s1.errors) == (1, 0.5, 1)
    assert rec.totals["sent"] == 11 and rec.totals["drivers_done"] == 1


def test_torn_last_line_is_skipped(tmp_path):
    run = Recording.load(DATA / "smoke_run").save(tmp_path / "r")
    with open(run / "driver.jsonl", "a") as f:
        f.write('{"type": "second", "driver": 0, "t": 99, "se')
    assert max(s.t for s in Recording.load(run).seconds) < 99


def test_writer_appends_and_flushes(tmp_path):
    w = RunWriter(tmp_path / "live")
    w.write_run(status="running", scenario={"name": "x"})
    w.append("samples.jsonl", {"t": 0.1, "procs": []})
    # readable while the writer is still open: a crash now keeps this line
    assert json.loads((tmp_path / "live" / "samples.jsonl").read_text()) == {"t": 0.1, "procs": []}
    w.close()
    assert Recording.load(tmp_path / "live").status == "running"


def test_not_a_run_dir(tmp_path):
    with pytest.raises(ConfigError, match="not a run directory"):
        Recording.load(tmp_path)


def test_summary_of_committed_smoke_run():
    rec = Recording.load(DATA / "smoke_run")
    s = summarize(rec)
    assert s["requests"] == sum(x.completed for x in rec.seconds) > 0
    assert s["requests"] == rec.totals["sent"]  # every request accounted for
    assert s["errors"]["total"] == s["requests"] - sum(x.outcomes.get("ok", 0) for x in rec.seconds)
    lat = s["latency_ms"]
    assert 10.0 <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["p999"] <= lat["max"]
    assert s["throughput_rps"] == pytest.approx(s["requests"] / s["duration_s"], rel=1e-3)
    assert s["workers"] == 2 and len(s["worker_pids"]) == 2
    assert 0 < s["resources"]["worker_cpu_p90"] < 2
    assert s["resources"]["fds_max"] > 0 and s["resources"]["worker_rss_max_mb"] > 10
