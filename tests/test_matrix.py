"""compare (a real 2 × 2 matrix on loopback) and diff (on committed recordings)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from harness.analysis.summary import summarize
from harness.errors import ConfigError
from harness.histogram import Histogram
from harness.recording import Recording
from harness.records import DriverSecond
from tests.conftest import DATA, ROOT, cli


def slowed(rec: Recording, factor: float) -> Recording:
    """The same run with every second's successes (and their latencies) scaled by ``factor``."""
    out = []
    for r in rec.driver_records:
        if isinstance(r, DriverSecond):
            outcomes = {k: round(v * factor) if k == "ok" else v for k, v in r.outcomes.items()}
            hist = Histogram({b: max(1, round(c * factor)) for b, c in r.hist.counts.items()}, r.hist.max_us)
            r = dataclasses.replace(r, outcomes=outcomes, hist=hist, sent=round(r.sent * factor))
        out.append(r)
    return dataclasses.replace(rec, driver_records=tuple(out))


@pytest.mark.e2e
def test_diff_of_identical_runs_is_no_change(tmp_path, env):
    run = str(DATA / "diagnose_health")
    p = cli(env, "diff", run, run, "--fail-on-regression", "5%", "--out", str(tmp_path / "d"))
    assert p.returncode == 0, p.stderr
    data = json.loads((tmp_path / "d" / "diff.json").read_text())
    assert not any(d["significant"] for d in data[0]["deltas"]) and data[0]["regressions"] == []
    assert "First bottleneck unchanged." in p.stdout and "Same configuration." in p.stdout
    summary_rps = summarize(Recording.load(DATA / "diagnose_health"))["throughput_rps"]  # what its summary.json says
    assert data[0]["summary_rps"] == [summary_rps] * 2 and f"{summary_rps:,.1f} → {summary_rps:,.1f}" in p.stdout
    page = (tmp_path / "d" / "diff.html").read_text()
    assert "<table>" in page and "<pre>" not in page and "<td>throughput_rps</td>" in page


@pytest.mark.e2e
def test_diff_flags_a_throughput_cut(tmp_path, env):
    after = slowed(Recording.load(DATA / "diagnose_health"), 0.7).save(tmp_path / "after")
    p = cli(
        env,
        "diff",
        str(DATA / "diagnose_health"),
        str(after),
        "--fail-on-regression",
        "5%",
        "--out",
        str(tmp_path / "d"),
    )
    assert p.returncode == 1, p.stdout + p.stderr
    assert "throughput fell 30.0%" in p.stderr
    thr = next(
        d
        for d in json.loads((tmp_path / "d" / "diff.json").read_text())[0]["deltas"]
        if d["metric"] == "throughput_rps"
    )
    assert thr["significant"] and thr["change"] < -0.25 and thr["high"] < -0.05


@pytest.mark.e2e
def test_diff_names_a_verdict_change(tmp_path, env):
    p = cli(env, "diff", str(DATA / "diagnose_db"), str(DATA / "diagnose_db"), "--out", str(tmp_path / "d"))
    assert p.returncode == 0
    q = cli(env, "diff", str(DATA / "diagnose_blocking"), str(DATA / "diagnose_db"), "--out", str(tmp_path / "e"))
    assert q.returncode == 2 and "different scenarios" in q.stderr and "--force" in q.stderr
    r = cli(
        env, "diff", str(DATA / "diagnose_blocking"), str(DATA / "diagnose_db"), "--force", "--out", str(tmp_path / "f")
    )
    assert r.returncode == 0 and "First bottleneck moved from event-loop-blocked to db-pool-exhausted." in r.stdout
    assert "Configuration: " in r.stdout and "name: blocking → db" in r.stdout


@pytest.mark.e2e
def test_compare_two_by_two(tmp_path, env):
    out = tmp_path / "cmp"
    p = cli(env, "compare", str(ROOT / "scenarios" / "db.toml"), "--fixed", "--duration", "2s", "--workers", "1,2",
            "--set", "app.env.SAMPLE_APP_POOL_SIZE=1,8", "--out", str(out), "--quiet")
    assert p.returncode == 0, p.stderr
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["label"]: r for r in summary["table"]["rows"]}
    assert set(rows) == {"workers=1,SAMPLE_APP_POOL_SIZE=1", "workers=1,SAMPLE_APP_POOL_SIZE=8",
                         "workers=2,SAMPLE_APP_POOL_SIZE=1", "workers=2,SAMPLE_APP_POOL_SIZE=8"}
    run_dirs = sorted(d.name for d in out.iterdir() if (d / "run.json").exists())
    assert len(run_dirs) == 4 and [r["dir"] for r in summary["runs"]["runs"]] == run_dirs
    for w in (1, 2):
        small = summary["runs"]["runs"][
            [r["label"] for r in summary["runs"]["runs"]].index(f"workers={w},SAMPLE_APP_POOL_SIZE=1")
        ]
        big = summary["runs"]["runs"][
            [r["label"] for r in summary["runs"]["runs"]].index(f"workers={w},SAMPLE_APP_POOL_SIZE=8")
        ]
        # a pool 8 times larger serves /db/query several times faster
        assert big["summary"]["throughput_rps"] > 2 * small["summary"]["throughput_rps"]
        assert (
            small["summary"]["verdict"]["bottleneck"] == "db-pool-exhausted"
            or small["summary"]["latency_ms"]["p99"] > 200
        )
    assert "Recommendation" in p.stdout and (out / "report.html").read_text().count("<tr>") >= 5


@pytest.mark.e2e
def test_compare_inline_app_measures_capacities_by_bisection(tmp_path, env):
    """/executor's capacity is its threads / 50 ms (40 and 80 req/s): the ×1.5 grid alone would read
    the last step held; compare bisects past the knee and reports what a finer level held."""
    out = tmp_path / "cmp"
    p = cli(env, "compare", "--app", "sample_app.main:app", "--app-dir", str(ROOT), "--get", "/executor",
            "--set", "app.env.SAMPLE_APP_EXECUTOR_WORKERS=2,4", "--max-time", "30s", "--step", "3s",
            "--out", str(out))
    assert p.returncode == 0, p.stderr
    rows = {r["label"]: r for r in json.loads((out / "summary.json").read_text())["table"]["rows"]}
    for threads in (2, 4):
        row = rows[f"SAMPLE_APP_EXECUTOR_WORKERS={threads}"]
        rec = Recording.load(out / next(r["dir"] for r in json.loads((out / "runs.json").read_text())["runs"]
                                        if r["label"] == row["label"]))
        refined = [e for e in rec.events if e.kind == "stage" and e.phase == "refine"]
        (capacity,) = [e for e in rec.events if e.kind == "capacity"]
        # each bisection halves the grid's bracket around the knee (as many as --max-time leaves room for)
        knee = [e.offered_rps for e in rec.events if e.kind == "stage" and e.phase == "step"][-1]
        gap = (knee - knee / 1.5) / 2 ** len(refined)
        assert refined and 0 < capacity.broke_at - capacity.offered_rps <= gap + 0.01, rec.events
        assert 0.75 * 20 * threads <= row["max_rps"] <= 1.05 * 20 * threads, row
    assert "refine 1:" in p.stderr and "| 1 run |" in p.stdout


@pytest.mark.e2e
def test_compare_refuses_bad_input(tmp_path, env):
    scenario = str(ROOT / "scenarios" / "db.toml")
    p = cli(env, "compare", scenario, "--out", str(tmp_path / "a"))
    assert p.returncode == 2 and "nothing to compare" in p.stderr
    p = cli(env, "compare", scenario, "--set", "app.wrokers=1,2", "--out", str(tmp_path / "b"))
    assert p.returncode == 2 and "app.wrokers" in p.stderr.replace("[app].wrokers", "app.wrokers")
    p = cli(env, "compare", scenario, "--workers", "1,x", "--out", str(tmp_path / "c"))
    assert p.returncode == 2 and "configuration workers=x" in p.stderr and "expected a whole number" in p.stderr
    p = cli(env, "compare", scenario, "--workers", "1,2,3,4", "--set", "app.env.SAMPLE_APP_POOL_SIZE=1,2,3,4",
            "--out", str(tmp_path / "d"))
    assert p.returncode == 2 and "16 runs" in p.stderr and "--yes" in p.stderr
    p = cli(env, "compare", scenario, "--app", "sample_app.main:app", "--workers", "1,2", "--out", str(tmp_path / "e"))
    assert p.returncode == 2 and "a scenario file or --app" in p.stderr
    p = cli(env, "compare", "--app", "sample_app.main:app", "--workers", "1,2", "--out", str(tmp_path / "f"))
    assert p.returncode == 2 and "no request to send: add --get PATH" in p.stderr


def test_diff_as_a_function_on_committed_runs(tmp_path):
    from harness.matrix import diff_runs

    same = diff_runs(DATA / "diagnose_health", DATA / "diagnose_health", threshold=0.05)
    assert len(same) == 1 and same[0].verdict_change is None and same[0].regressions == []
    after = slowed(Recording.load(DATA / "diagnose_health"), 0.7).save(tmp_path / "after")
    cut = diff_runs(DATA / "diagnose_health", after, threshold=0.05)[0]
    assert any("throughput fell 30.0%" in r for r in cut.regressions)
    with pytest.raises(ConfigError, match="different scenarios"):
        diff_runs(DATA / "diagnose_blocking", DATA / "diagnose_db")
    moved = diff_runs(DATA / "diagnose_blocking", DATA / "diagnose_db", force=True)[0]
    assert moved.verdict_change == "First bottleneck moved from event-loop-blocked to db-pool-exhausted."
    assert moved.refused and json.loads(json.dumps(moved.to_json()))["refused"] == moved.refused
