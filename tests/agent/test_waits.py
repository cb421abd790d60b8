"""Where requests wait: the agent's walk of in-flight requests, against real awaits on a real loop."""

from __future__ import annotations

import asyncio
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from harness.agent.middleware import AgentMiddleware
from harness.agent.waits import WaitProbe, executors


class FakeAgent:
    """What the middleware needs of the agent, without its thread or signals."""

    routes: Any = None
    waits: Any = None
    statements = pools = types.SimpleNamespace(routes=None)

    def start(self, loop: Any) -> None:
        self.loop = loop


LOCK = asyncio.Lock()
POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-io")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope["path"]
    if path == "/lock":
        async with LOCK:
            await asyncio.sleep(0.3)
    elif path == "/executor":
        await asyncio.get_running_loop().run_in_executor(POOL, time.sleep, 0.3)
    elif path == "/sleep":
        await asyncio.sleep(0.3)
    elif path == "/http":
        await scope["client"].get("/")
    elif path == "/aiohttp":
        async with scope["client"].get("/") as response:
            await response.read()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.readuntil(b"\r\n\r\n"):
        await asyncio.sleep(0.3)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_each_kind_of_wait_is_named_at_the_apps_line(loop):
    agent = FakeAgent()
    mw = AgentMiddleware(app, agent)
    mw.ready = True

    async def serve(path: str, client: Any = None) -> None:
        scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "headers": [],
                 "client": client}
        await mw(scope, lambda: None, lambda m: asyncio.sleep(0))

    async def start() -> Any:
        server = await asyncio.start_server(upstream, "127.0.0.1", 0)
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}",
                                   limits=httpx.Limits(max_connections=1))
        tasks = [asyncio.ensure_future(serve(p, client)) for p in ("/lock", "/lock", "/executor", "/executor",
                                                                   "/sleep", "/http", "/http")]
        return server, client, tasks

    server, client, tasks = asyncio.run_coroutine_threadsafe(start(), loop).result()
    time.sleep(0.1)  # every request is in flight for longer than the walk's 5 ms
    probe: WaitProbe = agent.waits
    probe.walk(loop)
    time.sleep(0.05)
    probe.walk(loop)
    found = probe.read()
    asyncio.run_coroutine_threadsafe(asyncio.wait(tasks), loop).result()

    async def close() -> None:
        await client.aclose()
        server.close()

    asyncio.run_coroutine_threadsafe(close(), loop).result()
    kinds = {key.partition("|")[0]: key.partition("|")[2] for key in found["waits_ms"]}
    assert {"lock", "executor", "sleep", "http-pool-acquire", "http-response"} <= set(kinds), found
    lock_line = next(i for i, line in enumerate(open(__file__), 1) if "async with LOCK:" in line)
    assert kinds["lock"].endswith(f"test_waits.py:{lock_line} app")  # "file:line function" of the app's await
    assert all(ms > 0 for ms in found["waits_ms"].values())
    (pool,) = found["http_pools"]
    assert pool["kind"] == "httpcore" and pool["limit"] == 1 and "test_waits.py" in pool["site"]
    mine = next(e for e in found["executors"] if e["name"] == "test-io")
    assert mine["max_workers"] == 1 and mine["busy"] == 1 and mine["queued"] == 1
    assert probe.active


def test_a_fast_request_is_not_walked(loop):
    agent = FakeAgent()
    AgentMiddleware(app, agent)  # gives the agent its wait probe
    agent.waits.walk(loop)  # nothing in flight
    assert agent.waits.read()["waits_ms"] == {} and not agent.waits.active
    assert isinstance(executors(), list)


def test_an_executors_busy_threads_are_counted_after_many_completions():
    """The executor's idle semaphore counts completed items, not idle threads; the gauge must not."""
    release = threading.Event()
    ex = ThreadPoolExecutor(2, thread_name_prefix="gauge")
    try:
        for f in [ex.submit(int) for _ in range(20)]:
            f.result()
        held = [ex.submit(release.wait) for _ in range(2)]
        deadline = time.monotonic() + 5
        while sum(f.running() for f in held) < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        gauge = next(e for e in executors() if e["name"] == "gauge")
        assert (gauge["threads"], gauge["busy"], gauge["queued"]) == (2, 2, 0)
        release.set()
        for f in held:
            f.result()
        while next(e for e in executors() if e["name"] == "gauge")["busy"] and time.monotonic() < deadline:
            time.sleep(0.001)
        assert next(e for e in executors() if e["name"] == "gauge")["busy"] == 0
    finally:
        release.set()
        ex.shutdown()


def test_an_aiohttp_connectors_limit_is_found_from_the_requests_waiting_on_it(loop):
    import aiohttp  # in the test extra
    agent = FakeAgent()
    mw = AgentMiddleware(app, agent)
    mw.ready = True

    async def start() -> Any:
        server = await asyncio.start_server(upstream, "127.0.0.1", 0)
        session = aiohttp.ClientSession(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}",
                                        connector=aiohttp.TCPConnector(limit=1))
        scope = {"type": "http", "method": "GET", "path": "/aiohttp", "raw_path": b"/aiohttp", "headers": [],
                 "client": session}
        tasks = [asyncio.ensure_future(mw(dict(scope), lambda: None, lambda m: asyncio.sleep(0))) for _ in range(3)]
        return server, session, tasks

    server, session, tasks = asyncio.run_coroutine_threadsafe(start(), loop).result()
    time.sleep(0.1)
    agent.waits.walk(loop)
    found = agent.waits.read()
    asyncio.run_coroutine_threadsafe(asyncio.wait(tasks), loop).result()

    async def close() -> None:
        await session.close()
        server.close()

    asyncio.run_coroutine_threadsafe(close(), loop).result()
    kinds = {key.partition("|")[0] for key in found["waits_ms"]}
    assert {"http-pool-acquire", "http-response"} <= kinds, found
    (pool,) = found["http_pools"]
    assert pool["kind"] == "aiohttp" and pool["limit"] == 1 and pool["in_use"] == 1 and pool["waiting"] == 2
