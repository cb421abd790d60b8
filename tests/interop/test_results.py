"""Other tools' results: JTL (CSV, XML), Locust stats history, k6 JSON; ingest; --driver-cmd against the booted app."""

from __future__ import annotations

import json
import sys

import pytest

from harness.errors import ConfigError
from harness.interop.results import kind_of, read_results
from harness.load.jtl import HEADER
from harness.recording import Recording
from tests.conftest import DATA, ROOT, cli

RESULTS = DATA / "results"



def totals(res) -> dict:
    out: dict = {}
    for s in res.seconds.values():
        for k, n in s["outcomes"].items():
            out[k] = out.get(k, 0) + n
    return out


def test_jtl_csv_of_a_few_thousand_lines():
    res = read_results(RESULTS / "smoke.jtl")
    assert res.fmt == "jmeter-jtl-csv" and totals(res) == {"ok": 3611} and not res.problems


def test_jtl_csv_with_bad_lines_and_missing_columns(tmp_path):
    text = (RESULTS / "smoke.jtl").read_text().splitlines()
    (tmp_path / "bad.jtl").write_text(
        "\n".join(text[:50] + ["garbage,line", "17x,abc,GET /health,200"] + text[50:100]) + "\n"
    )
    res = read_results(tmp_path / "bad.jtl")
    assert totals(res) == {"ok": 99} and res.problems["unparsable line"] == 2
    (tmp_path / "cols.jtl").write_text("timeStamp,label\n1,x\n")
    with pytest.raises(ConfigError, match="lacks column"):
        read_results(tmp_path / "cols.jtl")


def test_jtl_xml_locust_and_k6():
    xml = read_results(RESULTS / "results.xml")
    assert totals(xml) == {"ok": 3, "5xx": 1, "timeout": 1} and xml.problems["unparsable sample"] == 1
    locust = read_results(RESULTS / "locust_stats_history.csv")
    assert sum(totals(locust).values()) == 600 and totals(locust)["other"] == 5
    assert locust.problems["unparsable row"] == 1
    k6 = read_results(RESULTS / "k6.json")
    assert totals(k6) == {"ok": 5, "connection-reset": 1} and k6.problems["unparsable line"] == 1


@pytest.mark.parametrize(
    "code,ok,kind",
    [
        ("200", True, "ok"),
        ("200", False, "other"),
        ("404", False, "4xx"),
        ("503", False, "5xx"),
        ("Non HTTP response code: java.net.SocketTimeoutException", False, "timeout"),
        ("Non HTTP response code: java.net.ConnectException", False, "connect-refused"),
        ("Non HTTP response code: java.net.SocketException", False, "connection-reset"),
    ],
)
def test_outcome_kinds(code, ok, kind):
    assert kind_of(code, ok) == kind


@pytest.mark.e2e
def test_ingest_a_file_into_a_new_recording(tmp_path, env):
    p = cli(env, "ingest", str(RESULTS / "smoke.jtl"), "--out", str(tmp_path / "r"))
    assert p.returncode == 0, p.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["requests"] == 3611 and summary["verdict"]["bottleneck"] == "none"
    assert 10 <= summary["latency_ms"]["p50"] <= 12  # /health sleeps 10 ms


@pytest.mark.e2e
def test_ingest_refuses_results_from_another_time(tmp_path, env):
    run = tmp_path / "run"
    p = cli(env, "run", str(ROOT / "scenarios" / "smoke.toml"), "--duration", "1s", "--out", str(run), "--quiet")
    assert p.returncode == 0
    (run / "driver.jsonl").write_text("")  # as if another tool had driven it
    q = cli(env, "ingest", str(RESULTS / "results.xml"), "--into", str(run))
    assert q.returncode == 2 and "do not overlap" in q.stderr


@pytest.mark.e2e
def test_driver_cmd_drives_the_booted_app(tmp_path, env):
    out = tmp_path / "run"
    tool = f"{sys.executable} {ROOT / 'tests' / 'tools' / 'fake_jmeter.py'} {{url}} {{jtl}} 300"
    p = cli(
        env,
        "run",
        "--app",
        "sample_app.main:app",
        "--app-dir",
        str(ROOT),
        "--driver-cmd",
        tool,
        "--out",
        str(out),
        "--quiet",
    )
    assert p.returncode == 0, p.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"] == 300 and summary["errors"]["total"] == 0 and summary["verdict"]["bottleneck"]
    rec = Recording.load(out)
    assert any(p.role == "driver" for s in rec.samples for p in s.procs)  # the external tool was sampled
    assert rec.agents  # and the app's agent watched it


@pytest.mark.e2e
def test_driver_cmd_failure_shows_its_stderr(tmp_path, env):
    tool = f"{sys.executable} {ROOT / 'tests' / 'tools' / 'fake_jmeter.py'} {{url}} {{jtl}} 10 3"
    p = cli(env, "run", "--app", "sample_app.main:app", "--app-dir", str(ROOT), "--driver-cmd", tool,
            "--out", str(tmp_path / "run"), "--quiet")
    assert p.returncode == 1 and "--driver-cmd exited with code 3" in p.stderr and "simulated failure" in p.stderr


def test_ingest_as_a_function_into_a_new_run_and_into_a_sampled_one(tmp_path, data_copy):
    from harness.interop.ingest import ingest

    run_dir, res = ingest(RESULTS / "smoke.jtl", out=tmp_path / "new")
    rec = Recording.load(run_dir)
    assert rec.run.mode == "ingest" and rec.run.ingested["format"] == res.fmt
    assert sum(s.completed for s in rec.seconds) == rec.totals.sent == 3611

    sampled = data_copy("smoke_run")  # a run whose app was sampled while "another tool" drove it
    (sampled / "driver.jsonl").write_text("")
    t0 = Recording.load(sampled).t0
    rows = [f"{int((t0 + 0.5 + i * 0.02) * 1000)},12,GET /health,200,OK,t-1,text,true,,0,76,1,1,u,12,0,0"
            for i in range(100)]
    jtl = tmp_path / "tool.jtl"
    jtl.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    into, res = ingest(jtl, into=sampled)
    rec = Recording.load(into)
    assert into == sampled and rec.totals.sent == 100 and rec.samples and not res.problems
    with pytest.raises(ConfigError, match="already has load results"):
        ingest(jtl, into=sampled)
    (sampled / "driver.jsonl").write_text("")
    with pytest.raises(ConfigError, match="do not overlap"):
        ingest(RESULTS / "smoke.jtl", into=sampled)
