"""The agent's per-request tally and its CPU timer, run for real in this interpreter."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import sys
import threading
import time
import types

import pytest

from harness.agent.cputimer import CpuTimer, WakeupRelay
from harness.agent.hist import FAST, bucket_of
from harness.agent.middleware import MAX_ROUTES, AgentMiddleware


class Route:
    """What Starlette leaves in ``scope["route"]``: unhashable, with a path and its methods."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, path: str, methods: tuple[str, ...] = ("GET", "HEAD")) -> None:
        self.path, self.methods = path, set(methods)


class Agent:
    """The part of the agent the middleware talks to."""

    def __init__(self) -> None:
        self.routes = None
        self.started = self.stopped = 0
        self.threadpool = self
        self.statements = self.pools = types.SimpleNamespace(routes=None)

    def start(self, loop: object) -> None:
        self.started += 1

    def attach(self) -> None:
        pass

    def stop(self) -> None:
        self.stopped += 1


async def app(scope: dict, receive: object, send: object) -> None:
    if scope["path"] == "/boom":
        raise KeyError("boom")
    if scope["path"] == "/slow":
        await asyncio.sleep(FAST / 1e6 + 0.005)


def request(path: str, route: Route | None = None, method: str = "GET") -> dict:
    scope = {"type": "http", "method": method, "path": path}
    if route is not None:
        scope["route"] = route
    return scope


def serve(mw: AgentMiddleware, scopes: list) -> None:
    async def main() -> None:
        for scope in scopes:
            try:
                await mw(scope, None, None)
            except KeyError:
                pass

    asyncio.run(main())


def test_tally_counts_routes_raw_paths_errors_and_slow_requests_a_tick_later():
    agent = Agent()
    mw = AgentMiddleware(app, agent)
    assert agent.routes is mw
    # one route object for two methods is one route (Starlette adds HEAD to a GET route: not shown)
    fast, items = Route("/fast"), Route("/items/{id}", ("GET", "POST"))
    serve(
        mw,
        [request("/fast", fast)] * 5
        + [
            request("/items/1", items),
            request("/items/2", items),
            request("/items/3", items, "POST"),
            request("/nowhere"),
            request("/boom"),
            request("/slow", Route("/slow")),
        ],
    )
    assert agent.started == 1
    assert mw.drain()["routes"] == {}  # the tick just taken away is read at the next one
    rec = mw.drain()
    routes = rec["routes"]
    assert {k: v["n"] for k, v in routes.items()} == {
        "GET /fast": 5, "GET,POST /items/{id}": 3, "GET /nowhere": 1, "GET /boom": 1, "GET /slow": 1}
    assert rec["exceptions"] == {"GET /boom": {"KeyError": 1}}
    assert routes["GET /boom"]["errors"] == 1 and routes["GET /fast"]["errors"] == 0
    assert rec["inflight"] == 0
    slow = routes["GET /slow"]["hist"]
    assert slow["max"] >= FAST and slow["b"] == [(bucket_of(slow["max"]), 1)]
    fast_hist = routes["GET /fast"]["hist"]
    assert sum(n for _, n in fast_hist["b"]) == 5 and bucket_of(fast_hist["max"]) == fast_hist["b"][-1][0]
    assert mw.drain(final=True)["routes"] == {}


def test_a_routes_histogram_keeps_every_request_from_its_fastest_to_its_slowest():
    async def paced(scope: dict, receive: object, send: object) -> None:
        await asyncio.sleep(scope["wait"])

    mw = AgentMiddleware(paced, Agent())
    route = Route("/paced")
    waits = [0, 0.002, 0, 0.004, 0]
    serve(mw, [dict(request("/paced", route), wait=w) for w in waits])
    mw.drain()
    hist = mw.drain()["routes"]["GET /paced"]["hist"]
    assert sum(n for _, n in hist["b"]) == len(waits)
    assert hist["b"][-1][0] == bucket_of(hist["max"]) and hist["max"] >= 4000
    assert hist["b"][0][0] < bucket_of(2000)  # the instant ones, below the 2 ms one


def test_final_drain_counts_the_last_two_ticks():
    mw = AgentMiddleware(app, Agent())
    fast = Route("/fast")
    serve(mw, [request("/fast", fast)] * 3)
    mw.drain()
    serve(mw, [request("/fast", fast)] * 2)
    assert mw.drain(final=True)["routes"]["GET /fast"]["n"] == 5


def test_a_busy_worker_times_about_one_request_in_every_and_counts_them_all():
    mw = AgentMiddleware(app, Agent())
    a, b = Route("/a"), Route("/b")
    serve(mw, [request("/a", a)])  # starts the agent
    mw.drain()
    mw.drain()
    mw.every = 4
    serve(mw, [request(p, r) for _ in range(400) for p, r in (("/a", a), ("/b", b), ("/boom", None))])
    mw.drain()
    assert mw.every == 1  # judged by the tick just read, which had none
    rec = mw.drain()
    routes = rec["routes"]
    assert {k: v["n"] for k, v in routes.items()} == {"GET /a": 400, "GET /b": 400, "GET /boom": 400}
    assert rec["exceptions"] == {"GET /boom": {"KeyError": 400}}
    for st in routes.values():
        # two routes requested in turn are both timed (the gaps are random, not a stride of 4)
        assert 400 / 4 / 3 < st["timed"] < 400 / 4 * 3, st["timed"]
        assert sum(k for _, k in st["hist"]["b"]) == 4 * st["timed"]  # each timed request stands for 4


def test_the_share_timed_follows_the_rate():
    mw = AgentMiddleware(app, Agent())
    fast = Route("/fast")
    serve(mw, [request("/fast", fast)])
    time.sleep(0.01)
    mw.drain()
    mw.drain()  # the tick read: 1 request in ≥ 10 ms, well under a thousand a second
    assert mw.every == 1
    serve(mw, [request("/fast", fast)] * 500)
    mw._swapped_ns = time.perf_counter_ns() - 50_000_000  # as if they came in over 50 ms: 10,000 a second
    mw.drain()
    mw.drain()
    assert mw.every == 10
    serve(mw, [request("/fast", fast)] * 20)
    mw.drain()
    assert mw.drain()["routes"]["GET /fast"]["n"] == 20


def test_raw_paths_are_bounded():
    mw = AgentMiddleware(app, Agent())
    serve(mw, [request(f"/p{i}") for i in range(MAX_ROUTES + 10)])
    mw.drain()
    routes = mw.drain()["routes"]
    assert len(routes) == MAX_ROUTES + 1 and routes["other"]["n"] == 10


def test_lifespan_passes_through_and_stops_the_agent_at_shutdown():
    agent = Agent()
    seen = []

    async def lifespan_app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
        seen.append((await receive())["type"])

    async def receive() -> dict:
        return {"type": "lifespan.shutdown"}

    mw = AgentMiddleware(lifespan_app, agent)
    asyncio.run(mw({"type": "lifespan"}, receive, None))
    assert seen == ["lifespan.shutdown"] and agent.started == 1 and agent.stopped == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timer_create on a thread's CPU clock is Linux's")
def test_cpu_timer_counts_only_its_own_threads_cpu_time():
    count = [0]
    previous = signal.signal(signal.SIGPROF, lambda s, f: count.__setitem__(0, count[0] + 1))
    timer = CpuTimer()
    try:
        assert timer.start(0.01) == "thread"
        # another thread burns CPU without the GIL: a process-wide timer would count it too
        other = threading.Thread(target=lambda: [hashlib.sha256(b"x" * 20_000_000).digest() for _ in range(20)])
        other_cpu = time.process_time()
        other.start()
        start = time.thread_time()
        while time.thread_time() - start < 0.5:
            sum(range(1000))
        mine = time.thread_time() - start
        other.join()
        process = time.process_time() - other_cpu
        assert process > mine * 1.5  # the other thread did burn CPU alongside
        assert 0.6 * mine / 0.01 <= count[0] <= 1.3 * mine / 0.01
        timer.stop()
        timer.stop()  # twice is harmless (the lifespan and atexit both stop the agent)
        after = count[0]
        busy = time.thread_time()
        while time.thread_time() - busy < 0.1:
            sum(range(1000))
        assert count[0] == after and timer.kind == "off"
    finally:
        timer.stop()
        signal.signal(signal.SIGPROF, previous)


def test_the_relay_keeps_the_agents_signals_out_of_the_loops_pipe_and_passes_the_rest_on():
    """A loop's wakeup pipe (as uvloop sets one) gets SIGUSR1's byte after the relay's pass, never SIGPROF's
    or SIGALRM's; uninstalling gives the loop its pipe back."""
    import os

    loop_r, loop_w = os.pipe()
    os.set_blocking(loop_r, False)
    os.set_blocking(loop_w, False)
    handlers = {sig: signal.signal(sig, lambda s, f: None) for sig in (signal.SIGUSR1, signal.SIGPROF, signal.SIGALRM)}
    before = signal.set_wakeup_fd(loop_w)
    relay = WakeupRelay()
    try:
        assert relay.install() and relay.loop_fd == loop_w
        for sig in (signal.SIGPROF, signal.SIGUSR1, signal.SIGALRM, signal.SIGPROF):
            signal.raise_signal(sig)
        with pytest.raises(BlockingIOError):
            os.read(loop_r, 64)  # nothing reached the loop yet: the relay passes bytes on at its ticks
        relay.relay()
        assert os.read(loop_r, 64) == bytes([signal.SIGUSR1])
        relay.uninstall()
        assert signal.set_wakeup_fd(loop_w) == loop_w  # the loop's own pipe again
        relay.uninstall()  # twice is harmless
    finally:
        signal.set_wakeup_fd(before)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        os.close(loop_r)
        os.close(loop_w)


def test_a_handler_the_app_gave_uvloop_still_runs_behind_the_relay():
    """``loop.add_signal_handler`` (gunicorn's uvicorn worker does it for SIGQUIT) hears of its signal
    only through the loop's pipe: the relay, passing bytes on as the agent's thread does, gets it there."""
    import uvloop  # a dependency of the harness

    async def main() -> float:
        loop = asyncio.get_running_loop()
        heard = asyncio.Event()
        loop.add_signal_handler(signal.SIGUSR1, heard.set)
        relay = WakeupRelay()
        assert relay.install()
        stop = threading.Event()

        def agent_thread() -> None:
            while not stop.wait(0.1):
                relay.relay()

        thread = threading.Thread(target=agent_thread)
        thread.start()
        try:
            start = time.monotonic()
            signal.raise_signal(signal.SIGUSR1)
            await asyncio.wait_for(heard.wait(), 5)
            return time.monotonic() - start
        finally:
            stop.set()
            thread.join()
            relay.uninstall()
            loop.remove_signal_handler(signal.SIGUSR1)

    loop = uvloop.new_event_loop()
    try:
        took = loop.run_until_complete(main())
    finally:
        loop.close()
    assert took < 1.0


def test_the_relay_leaves_alone_a_process_where_no_loop_listens():
    assert signal.set_wakeup_fd(-1) == -1
    relay = WakeupRelay()
    assert not relay.install() and signal.set_wakeup_fd(-1) == -1
    relay.relay()
    relay.uninstall()


def test_pool_probe_counts_checkouts_per_pool_and_forgets_a_pool_that_is_gone(monkeypatch):
    import gc
    import sqlite3

    from sqlalchemy.pool import QueuePool

    from harness.agent.probes import PoolProbe

    for name in ("_do_get", "_do_return_conn"):  # the probe wraps them; put them back afterwards
        monkeypatch.setattr(QueuePool, name, getattr(QueuePool, name))
    probe = PoolProbe()
    probe.install()
    pools = [QueuePool(lambda: sqlite3.connect(":memory:"), pool_size=2, max_overflow=0) for _ in range(2)]
    for pool, n in zip(pools, (3, 1)):
        for _ in range(n):
            pool.connect().close()
    held = pools[0].connect()
    first = {p["id"]: p for p in probe.read()}
    assert len(first) == 2
    a, b = (first[f"QueuePool@{id(p):x}"] for p in pools)
    assert sum(n for _, n in a["acquire"]["b"]) == 4 and a["returns"] == 3 and a["checked_out"] == 1
    assert sum(n for _, n in b["acquire"]["b"]) == 1 and b["returns"] == 1 and b["checked_out"] == 0
    second = {p["id"]: p for p in probe.read()}  # a tick without checkouts: gauges, nothing counted twice
    assert second[a["id"]]["acquire"]["b"] == [] and second[a["id"]]["checked_out"] == 1
    held.close()
    del pools[1], pool
    gc.collect()
    assert [p["id"] for p in probe.read()] == [a["id"]]
