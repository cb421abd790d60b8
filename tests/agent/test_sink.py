"""The agent of an app the harness did not boot, streaming over TCP to the harness's sink."""

from __future__ import annotations

import collections
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.agent.core import Agent
from harness.agent.sink import TcpStream
from harness.recording import Recording
from harness.sampling.sink import AgentSink
from tests.conftest import ROOT, cli, cli_in_background


def _line(record: dict) -> bytes:
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


def _until(check, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.fixture
def sink(tmp_path):
    s = AgentSink("127.0.0.1", 0, tmp_path)
    s.start()
    yield s
    s.stop()


def _connect(sink: AgentSink, hello: dict) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", sink.port))
    conn.sendall(_line({"type": "sink", **hello}))
    return conn


def test_another_runs_token_is_refused_and_nothing_is_written(sink, tmp_path):
    with _connect(sink, {"token": "not-this-run", "pid": 7}) as conn:
        conn.sendall(_line({"type": "tick", "seq": 1}))
        _until(lambda: sink.refused == 1)
    assert not sink.agents and not list(tmp_path.glob("agent-*.jsonl"))


def test_ticks_sent_again_are_kept_once_and_process_figures_become_samples(sink, tmp_path):
    """An agent on another machine (another boot id): its lines go to its stream file, a tick resent
    after a reconnect once, and its /proc figures make the worker's samples (rates between readings)."""
    with _connect(sink, {"token": sink.token, "pid": 4242, "host": "elsewhere", "boot_id": "another-machine"}) as conn:
        conn.sendall(b"".join(_line(r) for r in (
            {"type": "hello", "pid": 4242},
            {"type": "proc", "t": 100.0, "cpu_s": 1.0, "main_cpu_s": 0.5, "rss_mb": 80.0, "fds": 12, "fd_limit": 1024},
            {"type": "tick", "seq": 1}, {"type": "tick", "seq": 2}, {"type": "tick", "seq": 2},
            {"type": "proc", "t": 102.0, "cpu_s": 2.5, "main_cpu_s": 1.5, "rss_mb": 90.0, "fds": 14, "fd_limit": 1024},
        )))
        _until(lambda: sink.agents.get(4242) and (sink.agents[4242].proc or {}).get("t") == 102.0)
    assert sink.local_pids() == []
    (sample,) = sink.remote_samples()
    assert (sample.pid, sample.role, sample.cpu, sample.main_cpu, sample.rss_mb, sample.fds) == (
        4242, "worker", 0.75, 0.5, 90.0, 14)
    assert sink.remote_samples() == []  # nothing new since
    _until(lambda: (tmp_path / "agent-4242.jsonl").read_text().count("\n") == 3)
    kinds = [json.loads(x)["type"] + str(json.loads(x).get("seq", "")) for x in
             (tmp_path / "agent-4242.jsonl").read_text().splitlines()]
    assert kinds == ["hello", "tick1", "tick2"]


def test_an_agent_on_this_machine_is_sampled_by_its_pid(sink):
    stream = TcpStream(sink.url, pid=31337)
    stream.write(_line({"type": "hello", "pid": 31337}))
    _until(lambda: sink.local_pids() == [31337])
    stream.close()


def test_the_agent_keeps_what_it_could_not_send_and_counts_what_fell_out(tmp_path):
    """The harness away: lines wait in the bounded buffer; when it listens again, the agent's next write
    sends the gap (how many fell out, its own tick pushing out one more) and the lines kept, in order."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = Agent({"sink": f"tcp://127.0.0.1:{port}/t0ken", "hot_hz": 0})
    agent.pending = collections.deque(maxlen=3)
    for _ in range(5):  # 5 ticks (the first with the process's figures), nobody listening
        agent.stream.next_try = 0.0
        agent._write()
    assert len(agent.pending) == 3 and agent.lost == 3 and "ConnectionRefused" in agent.last_error
    sink = AgentSink("127.0.0.1", port, tmp_path)
    sink.token = "t0ken"
    sink.start()
    try:
        agent.stream.next_try = 0.0
        agent._write()
        assert not agent.pending and agent.lost == 0
        agent.stream.close()
        path = tmp_path / f"agent-{agent.pid}.jsonl"
        _until(lambda: path.exists() and path.read_text().count("\n") == 4)
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        assert rows[0]["type"] == "gap" and rows[0]["lost"] == 4
        assert [r["seq"] for r in rows[1:]] == [4, 5, 6]
    finally:
        sink.stop()


# ------------------------------------------------------------------ as a user runs it

REQUESTS = ("--get", "/blocking", "--get", "/db/query", "--users", "8", "--duration", "4s")


def _inside(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    agent = summary["agent"]
    rec = Recording.load(run_dir)
    pools = {p.id for rows in rec.agents.values() for r in rows for p in getattr(r, "pools", ())}
    return {"verdict": summary["verdict"]["bottleneck"], "site": summary["verdict"]["call_site"],
            "stall": (agent["stall_sites"][0]["function"], agent["stall_sites"][0]["kind"]),
            "hot": bool(agent["hotspots"]), "pools": bool(pools), "workers": summary["worker_pids"]}


@pytest.mark.e2e
def test_an_app_started_by_hand_is_seen_from_inside_as_a_booted_one(tmp_path, env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hand = tmp_path / "by-hand"
    app = None
    with cli_in_background(env, "run", "--url", f"http://127.0.0.1:{port}", "--agent-sink", "0", *REQUESTS,
                           "--out", str(hand), "--quiet") as harness:
        first = harness.stderr.readline()
        assert first.startswith("agent sink: tcp://127.0.0.1:"), first
        url = first.split()[-1]
        try:
            app = subprocess.Popen([sys.executable, "-m", "fastapi_harness_agent", "--sink", url, "--", "uvicorn",
                                    "sample_app.main:app", "--port", str(port), "--log-level", "warning"],
                                   cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            assert harness.wait(timeout=120) == 0, harness.stderr.read()
        finally:
            if app is not None:
                app.send_signal(signal.SIGTERM)  # the wrapper hands it to the server
                assert app.wait(timeout=20) in (0, -signal.SIGTERM), app.stderr.read()
    booted = tmp_path / "booted"
    p = cli(env, "run", "--app", "sample_app.main:app", "--app-dir", str(ROOT), *REQUESTS,
            "--out", str(booted), "--quiet", timeout=120)
    assert p.returncode == 0, p.stderr
    by_hand, as_booted = _inside(hand), _inside(booted)
    assert len(by_hand["workers"]) == 1 and by_hand["workers"] != [app.pid]  # uvicorn, the wrapper's child
    assert {k: v for k, v in by_hand.items() if k != "workers"} == {k: v for k, v in as_booted.items()
                                                                     if k != "workers"}
    assert by_hand["stall"] == ("blocking", "blocking-wait") and by_hand["hot"] and by_hand["pools"]
    run = json.loads((hand / "run.json").read_text())["server"]
    assert run["agent_sink"].startswith("tcp://127.0.0.1:") and list(run["agents"]) == [str(by_hand["workers"][0])]


@pytest.mark.e2e
def test_no_agent_connecting_is_said_with_what_to_start(tmp_path, env):
    p = cli(env, "run", "--url", "http://127.0.0.1:9", "--agent-sink", "0", "--get", "/",
            "--set", "agent.sink_wait=1s", "--out", str(tmp_path / "run"), timeout=60)
    assert p.returncode == 2, p.stderr
    assert "no agent connected within 1 s; start the app with `python -m fastapi_harness_agent --sink tcp://" \
        in p.stderr and "Traceback" not in p.stderr


def test_the_sink_goes_with_url(tmp_path, env):
    p = cli(env, "run", "--app", "sample_app.main:app", "--agent-sink", "0", "--get", "/health",
            "--out", str(tmp_path / "run"), timeout=60)
    assert p.returncode == 2 and "goes with --url" in p.stderr and "Traceback" not in p.stderr


def test_an_app_that_attaches_the_agent_itself_streams_to_the_sink(sink, tmp_path):
    """``fastapi_harness_agent.attach(app, sink=…)`` in the app's own code: the same records arrive."""
    import asyncio

    import fastapi_harness_agent

    async def app(scope: dict, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                pass
            return
        await asyncio.sleep(0)

    wrapped = fastapi_harness_agent.attach(app, sink=sink.url, hot_hz=0, app_dir=str(tmp_path))
    alarm = signal.getsignal(signal.SIGALRM)

    async def serve() -> None:
        messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

        async def receive() -> dict:
            await asyncio.sleep(0.3)  # requests are served meanwhile
            return next(messages)

        lifespan = asyncio.ensure_future(wrapped({"type": "lifespan"}, receive, None))
        await asyncio.sleep(0.05)
        for _ in range(3):
            await wrapped({"type": "http", "method": "GET", "path": "/x"}, None, None)
        await lifespan  # its shutdown stops the agent, which sends its last records

    try:
        asyncio.run(serve())
    finally:
        signal.signal(signal.SIGALRM, alarm)
    path = tmp_path / f"agent-{wrapped.agent.pid}.jsonl"
    _until(lambda: path.exists() and '"GET /x"' in path.read_text())
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert rows[0]["type"] == "hello" and "sink" not in rows[0]["options"]  # the token stays out of the run
    assert sum(r.get("routes", {}).get("GET /x", {}).get("n", 0) for r in rows) == 3
