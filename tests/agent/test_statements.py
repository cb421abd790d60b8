"""The agent's database and runtime probes against real libraries: SQLAlchemy engines on SQLite
(sync, and async behind the agent middleware), QueuePool's waits and holders, the GC, the allocators."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
import time
import types

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import QueuePool

from harness.agent import probes
from harness.agent.middleware import AgentMiddleware, base_http_middleware
from harness.agent.statements import StatementProbe, normalize


@pytest.mark.parametrize("sql,normalized", [
    ("SELECT name FROM items WHERE id = 42", "SELECT name FROM items WHERE id = ?"),
    ("select *\n  from t where a = 'it''s' and b = 1.5", "select * from t where a = ? and b = ?"),
    ("SELECT x FROM t WHERE id IN (?, ?, ?)", "SELECT x FROM t WHERE id IN (?)"),
    ("SELECT x FROM t WHERE id IN (1, 2, 3) AND y = $1", "SELECT x FROM t WHERE id IN (?) AND y = ?"),
    ("UPDATE t SET a = :a WHERE v = %(v)s AND w = %s AND c::text = 'x'",
     "UPDATE t SET a = ? WHERE v = ? AND w = ? AND c::text = ?"),
    ("SELECT t1.col2 FROM t1", "SELECT t1.col2 FROM t1"),  # digits inside names stay
])
def test_statements_are_normalized(sql, normalized):
    assert normalize(sql) == normalized


@pytest.fixture
def probe():
    """A probe hooked into SQLAlchemy (its listeners stay on Engine for the process; each probe counts
    only what it sees while it is read)."""
    p = StatementProbe()
    p.install()
    return p


def send_one_per_row(engine, ids):
    with engine.connect() as conn:
        for i in ids:
            conn.execute(text("SELECT :i + 1"), {"i": i})  # the line the probe must name


def test_each_statement_is_counted_with_the_app_line_that_sent_it(probe):
    engine = create_engine("sqlite://")
    probe.read()
    send_one_per_row(engine, range(7))
    (st,) = [s for s in probe.read() if s["sql"] == "SELECT ? + ?"]
    assert st["n"] == 7 and st["ms"] > 0 and sum(n for _, n in st["hist"]["b"]) == 7
    path, _, rest = st["site"].rpartition(":")
    line, _, function = rest.partition(" ")
    assert path == __file__ and function == "send_one_per_row"
    assert "conn.execute" in open(__file__).read().splitlines()[int(line) - 1]
    assert st["routes"] == {}  # not inside a request
    assert probe.read() == []  # counted once


def test_statements_of_an_async_engine_are_counted_per_route(probe, tmp_path):
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")

    async def app(scope, receive, send):
        async with engine.connect() as conn:
            for _ in range(3):
                await conn.execute(text("SELECT 1"))

    agent = types.SimpleNamespace(routes=None, waits=None, statements=probe, pools=probes.PoolProbe(),
                                  middleware=None, start=lambda loop: None)
    mw = AgentMiddleware(app, agent)
    mw.ready = True

    async def serve():
        for _ in range(2):
            await mw({"type": "http", "method": "GET", "path": "/items"}, None, None)
        await engine.dispose()

    probe.read()
    asyncio.run(serve())
    (st,) = [s for s in probe.read() if s["sql"] == "SELECT ?"]
    assert st["n"] == 6 and st["routes"]["GET /items"][0] == 6
    assert st["site"].startswith(f"{__file__}:") and st["site"].endswith(" app")  # through SQLAlchemy's greenlet


def test_pool_waits_that_time_out_are_counted_and_holders_named(monkeypatch):
    for name in ("_do_get", "_do_return_conn"):  # the probe wraps them; put them back afterwards
        monkeypatch.setattr(QueuePool, name, getattr(QueuePool, name))
    probe = probes.PoolProbe()
    # no middleware: the holder is the app's line that checked the connection out
    probe.install()
    pool = QueuePool(lambda: sqlite3.connect(":memory:"), pool_size=1, max_overflow=0, timeout=0.2)
    held = pool.connect()
    seen = {}

    def other():
        try:
            pool.connect()
        except PoolTimeout:
            seen["timed out"] = True

    waiter = threading.Thread(target=other)
    waiter.start()
    deadline = time.monotonic() + 5
    while not probe._stats(pool)["waiting"] and time.monotonic() < deadline:
        time.sleep(0.01)
    (during,) = probe.read()
    waiter.join()
    held.close()
    (after,) = probe.read()
    assert during["waiting"] == 1 and during["checked_out"] == 1
    assert seen["timed out"] and after["timeouts"] == 1 and after["waiting"] == 0
    # the wait that ended in the timeout is a wait too: ≈ 200 ms in the acquire histogram
    assert after["acquire"]["max"] >= 150_000
    ((who, (n, ms, ran)),) = after["holds"].items()
    assert who.startswith(f"{__file__}:") and n == 1 and ms >= 150 and ran == 0


def test_full_collections_are_timed_one_by_one():
    gcp = probes.GcProbe()
    gcp.install()
    try:
        gcp.read()
        t = time.time()
        gc.collect(2)
        gc.collect(0)
        got = gcp.read()
    finally:
        gc.callbacks.remove(gcp._callback)
    assert got["collections"][2] >= 1 and got["collections"][0] >= 1
    (start, ms, collected), *_ = got["full"]
    assert t - 1 <= start <= time.time() and ms >= 0 and collected >= 0


def test_memory_reads_the_allocators():
    before = probes.memory()
    keep = [bytearray(1 << 20) for _ in range(8)]  # 8 MiB from malloc
    after = probes.memory()
    assert before["blocks"] > 0
    if "malloc" in before:  # glibc
        assert after["malloc"] - before["malloc"] >= 7 << 20
    del keep


def test_base_http_middleware_is_found_in_mounted_apps():
    from sample_app.main import app

    assert base_http_middleware(app) == [
        "sample_app.main.Tenant", "sample_app.main.Timing", "sample_app.main.RequestId"]


def test_the_profile_window_names_where_memory_grew():
    import tracemalloc

    from harness.agent.profiling import ProfileControl

    control = ProfileControl(types.SimpleNamespace(options={"tracemalloc": True}))
    assert not tracemalloc.is_tracing()
    tracemalloc.start(1)
    control.snapshot = tracemalloc.take_snapshot()
    kept = [bytearray(4096) for _ in range(500)]  # 2 MB kept: the line the window must name
    grew = control._grew()
    assert not tracemalloc.is_tracing() and control.snapshot is None
    path, line, size, blocks = grew[0]
    assert path == __file__ and "bytearray(4096)" in open(__file__).read().splitlines()[line - 1]
    assert size >= 500 * 4096 and blocks >= 500
    del kept


def test_the_profile_window_names_the_types_whose_objects_grew():
    from harness.agent.profiling import ProfileControl, type_counts

    class Session:  # what an app might keep per request
        pass

    control = ProfileControl(types.SimpleNamespace(options={"tracemalloc": True}))
    control.types = type_counts()
    kept = [Session() for _ in range(700)]
    grew = control._grew_types()
    assert control.types is None and grew[0] == [f"{__name__}.{Session.__qualname__}", 700], grew[:3]
    del kept
