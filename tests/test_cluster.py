"""Load from a Ray cluster's nodes (``--cluster``): two nodes on this machine, driving the sample app."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from harness.histogram import Histogram
from harness.recording import Recording
from harness.records import DriverSecond
from tests.conftest import ROOT, cli, cli_in_background

pytestmark = pytest.mark.e2e


def _run(env, out: Path, address: str, *flags: str, expect: int = 0) -> subprocess.CompletedProcess:
    p = cli(env, "run", "--app", "sample_app.main:app", "--app-dir", str(ROOT), "--get", "/health",
            "--cluster", address, "--drivers", "1", "--out", str(out), "--quiet", *flags, timeout=180)
    assert p.returncode == expect, p.stderr
    return p


def _drivers() -> list[int]:
    """The driver processes running anywhere on this machine."""
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if "harness.load.driver" in " ".join(p.info["cmdline"] or ())]


@contextlib.contextmanager
def _flowing(env, out: Path, address: str, duration: str) -> Iterator[subprocess.Popen]:
    """A cluster run in the background, once both load nodes' first seconds are recorded."""
    with cli_in_background(env, "run", "--app", "sample_app.main:app", "--app-dir", str(ROOT), "--get", "/health",
                           "--cluster", address, "--drivers", "1", "--users", "4", "--duration", duration,
                           "--out", str(out), "--quiet") as harness:
        deadline = time.monotonic() + 60
        while not ((out / "driver.jsonl").exists() and (out / "driver.jsonl").read_text().count("\n") >= 2):
            assert harness.poll() is None and time.monotonic() < deadline, harness.communicate()
            time.sleep(0.2)
        yield harness


def test_shards_on_two_nodes_add_up_exactly(tmp_path, env, ray_cluster):
    cluster, _ = ray_cluster
    out = tmp_path / "run"
    _run(env, out, cluster.address, "--users", "4", "--loops", "25")
    rec = Recording.load(out)
    nodes = rec.run.cluster["nodes"]
    assert len(nodes) == 2 and len({n["node_id"] for n in nodes}) == 2
    assert sorted(d for n in nodes for d in n["drivers"]) == [0, 1]
    assert all(abs(n["offset_ms"]) < 50 and n["uncertainty_ms"] < 50 for n in nodes)  # one machine, one clock
    seconds = [r for r in rec.driver_records if isinstance(r, DriverSecond)]
    by_driver = {k: sum(sum(r.outcomes.values()) for r in seconds if r.driver == k) for k in (0, 1)}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"] == sum(by_driver.values()) == 4 * 25 and all(by_driver.values())
    merged = Histogram.merged(r.hist for r in seconds)
    per_driver = Histogram.merged(Histogram.merged(r.hist for r in seconds if r.driver == k) for k in (0, 1))
    assert merged.to_json() == per_driver.to_json() == Histogram.merged(s.hist for s in rec.seconds).to_json()


def test_a_lost_node_marks_the_run_degraded_and_nothing_is_left(tmp_path, env, ray_cluster):
    cluster, node = ray_cluster
    out = tmp_path / "run"
    with _flowing(env, out, cluster.address, "10s") as harness:
        cluster.remove_node(node, allow_graceful=False)
        try:
            assert harness.wait(timeout=120) == 0, harness.stderr.read()
        finally:
            cluster.add_node(num_cpus=1)  # two nodes again for the tests after this one
            cluster.wait_for_nodes()
    rec = Recording.load(out)
    lost = [e for e in rec.events if e.kind == "node-lost"]
    assert len(lost) == 1 and 0 < lost[0].t < 12
    assert [n["lost_at"] is not None for n in rec.run.cluster["nodes"]].count(True) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert f"load node {lost[0].node}" in summary["verdict"]["summary"] and "degraded" in summary["verdict"]["summary"]
    assert not _drivers()


def test_ctrl_c_stops_every_shard_on_every_node(tmp_path, env, ray_cluster):
    cluster, _ = ray_cluster
    out = tmp_path / "run"
    with _flowing(env, out, cluster.address, "60s") as harness:
        assert len(_drivers()) == 2
        harness.send_signal(signal.SIGINT)
        assert harness.wait(timeout=60) == 130, harness.stderr.read()
    deadline = time.monotonic() + 10
    while _drivers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _drivers()


def test_a_cluster_that_does_not_answer_is_one_line(tmp_path, env):
    p = _run(env, tmp_path / "run", "127.0.0.1:9", "--users", "1", "--loops", "1", expect=2)
    assert "--cluster 127.0.0.1:9: cannot connect" in p.stderr and "Traceback" not in p.stderr


def test_without_ray_it_names_the_extra(tmp_path, env):
    fake = tmp_path / "no_ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    p = _run({**env, "PYTHONPATH": f"{fake.parent}:{env['PYTHONPATH']}"}, tmp_path / "run", "auto", "--users", "1",
             "--loops", "1", expect=2)
    assert "--cluster needs Ray, an optional extra: pip install 'fastapi-harness[ray]'" in p.stderr
    assert "Traceback" not in p.stderr
