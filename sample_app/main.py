"""The sample target: ``sample_app.main:app``, one endpoint per classic bottleneck.

``/health`` is the seed article's endpoint exactly; ``/fast`` returns at once. Each other
endpoint has a scenario in ``scenarios/`` that drives it into its bottleneck.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from fastapi import Depends, FastAPI
from fastapi.responses import StreamingResponse
from sqlalchemy import text
from sqlalchemy.orm import Session
from starlette.middleware.base import BaseHTTPMiddleware

from sample_app.db import create_schema, make_engine, make_sync_engine
from sample_app.upstream import start_upstream

engine = make_engine()
sync_engine = make_sync_engine()
# /gc: a large graph of long-lived objects (SAMPLE_APP_GC_OBJECTS lists, built at start-up) and
# per-request garbage that lives long enough to be promoted: full collections walk the whole graph
GC_GRAPH: list = []
GC_RECENT: collections.deque = collections.deque(maxlen=40)
# /upstream: one shared client with a small pool, to a slow upstream this worker starts on loopback
UPSTREAM_POOL = int(os.environ.get("SAMPLE_APP_UPSTREAM_POOL", "2"))
upstream: dict = {}
# /lock: one lock held across an await; /executor: a small named executor for blocking work
LOCK = asyncio.Lock()
EXECUTOR = ThreadPoolExecutor(max_workers=int(os.environ.get("SAMPLE_APP_EXECUTOR_WORKERS", "2")),
                              thread_name_prefix="sample-io")
log = logging.getLogger("sample_app.requests")
# /items/{id}: cache-aside in Redis when SAMPLE_APP_REDIS_URL is set (pool SAMPLE_APP_REDIS_POOL connections,
# entries live SAMPLE_APP_CACHE_TTL seconds); else every read goes to the database (and, with
# SAMPLE_APP_ITEM_PRICE, to the upstream for a price). SAMPLE_APP_CACHE_HOLD: each request holds one
# Redis connection from its first command to its end, the reads of a miss included
REDIS_URL = os.environ.get("SAMPLE_APP_REDIS_URL", "")
cache: dict = {}
leaked_files: list = []
leaked_memory: list = []


def _log_file() -> Path:
    folder = os.environ.get("FASTAPI_HARNESS_RUN_DIR") or tempfile.gettempdir()
    return Path(folder) / f"sample_app-{os.getpid()}.log"


@asynccontextmanager
async def lifespan(app: FastAPI):
    handler = logging.FileHandler(_log_file())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    await create_schema(engine)
    GC_GRAPH.extend([i] for i in range(int(os.environ.get("SAMPLE_APP_GC_OBJECTS", "0"))))
    server, url = await start_upstream(delay_s=0.05)
    upstream["client"] = httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=UPSTREAM_POOL))
    if REDIS_URL:
        from redis.asyncio import BlockingConnectionPool, Redis

        cache["redis"] = Redis(connection_pool=BlockingConnectionPool.from_url(
            REDIS_URL, max_connections=int(os.environ.get("SAMPLE_APP_REDIS_POOL", "20")), timeout=10))
    yield
    if "redis" in cache:
        await cache.pop("redis").aclose()
    await upstream.pop("client").aclose()
    server.close()
    log.removeHandler(handler)
    handler.close()
    await engine.dispose()
    sync_engine.dispose()


app = FastAPI(title="fastapi-harness sample app", lifespan=lifespan)


@app.get("/health")
async def health() -> dict[str, str]:
    await asyncio.sleep(0.01)
    return {"status": "ok"}


@app.get("/fast")
async def fast() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/blocking")
async def blocking() -> dict[str, str]:
    time.sleep(0.05)  # a blocking call on the event loop: every other request waits
    return {"status": "ok"}


CATALOG = [
    {
        "id": i,
        "name": f"item-{i}",
        "price": i * 1.25,
        "tags": ["a", "b", "c"],
        "stock": {"warehouse": i % 7, "shop": i % 3},
    }
    for i in range(2000)
]


@app.get("/cpu/json")
async def cpu_json():
    items = CATALOG[:]  # cheap to build; all the cost is turning 2,000 records into JSON
    return {"count": len(items), "items": items}


@app.get("/db/query")
async def db_query() -> dict:
    async with engine.connect() as conn:  # holds a pooled connection across the query and the await
        rows = (await conn.execute(text("SELECT id, name FROM items ORDER BY id LIMIT 10"))).all()
        await asyncio.sleep(0.05)
    return {"rows": len(rows)}


@app.get("/sync/sleep")
def sync_sleep() -> dict[str, str]:
    time.sleep(0.1)  # a plain def endpoint: runs on anyio's worker threads (40 by default)
    return {"status": "ok"}


@app.get("/log")
async def log_heavily() -> dict[str, int]:
    for i in range(200):
        log.info("request handled: step %d of 200, user=%s path=%s", i, "sample-user", "/log")
    return {"lines": 200}


@app.get("/leak/fd")
async def leak_fd() -> dict[str, int]:
    leaked_files.append(open(os.devnull))  # never closed
    return {"open": len(leaked_files)}


@app.get("/leak/memory")
async def leak_memory() -> dict[str, int]:
    leaked_memory.append(bytearray(256 * 1024))  # grows without bound
    return {"chunks": len(leaked_memory)}


@app.get("/upstream")
async def call_upstream() -> dict[str, int]:
    response = await upstream["client"].get("/slow")  # queues for one of the pool's few connections
    return {"status": response.status_code}


@app.get("/lock")
async def locked() -> dict[str, str]:
    async with LOCK:  # held across an await: every request queues behind the one inside
        await asyncio.sleep(0.02)
    return {"status": "ok"}


@app.get("/executor")
async def in_executor() -> dict[str, str]:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(EXECUTOR, time.sleep, 0.05)  # blocking work on a 2-thread executor
    return {"status": "ok"}


@app.get("/db/slow")
async def db_slow() -> dict[str, int]:
    payload = f"user-{random.randrange(9973)}-session-0"
    async with engine.connect() as conn:  # `payload` has no index: every call reads the whole events table
        rows = (await conn.execute(text("SELECT id, kind FROM events WHERE payload = :p"), {"p": payload})).all()
    return {"rows": len(rows)}


@app.get("/db/n-plus-one")
async def db_n_plus_one() -> dict[str, int]:
    async with engine.connect() as conn:
        ids = (await conn.execute(text("SELECT id FROM items ORDER BY id LIMIT 25"))).scalars().all()
        names = []
        for item_id in ids:  # one query per item: 26 round trips where one join would do
            names.append((await conn.execute(text("SELECT name FROM items WHERE id = :id"), {"id": item_id})).scalar())
    return {"items": len(names)}


@app.get("/db/stream")
async def db_stream() -> StreamingResponse:
    async def rows():
        async with engine.connect() as conn:  # checked out for the whole response, not just the query
            result = await conn.stream(text("SELECT id, name FROM items ORDER BY id LIMIT 20"))
            async for row in result:
                yield f"{row.id},{row.name}\n"
                await asyncio.sleep(0.005)  # a slow consumer: the connection idles meanwhile

    return StreamingResponse(rows(), media_type="text/csv")


def get_session():
    with Session(sync_engine) as session:
        session.execute(text("SELECT id FROM items WHERE id = 1"))  # e.g. the current user: a connection is held
        yield session


@app.get("/sync/db")
def sync_db(session: Session = Depends(get_session)) -> dict[str, int]:
    # a `def` endpoint after a `def` dependency: each needs one of anyio's 40 threads, and the
    # dependency keeps its connection until the endpoint has run
    rows = session.execute(text("SELECT id, name FROM items ORDER BY id LIMIT 10")).all()
    return {"rows": len(rows)}


@app.get("/items/{item_id}")
async def read_item(item_id: int) -> dict:
    redis = cache.get("redis")
    if redis is None:
        return await load_item(item_id)
    if os.environ.get("SAMPLE_APP_CACHE_HOLD"):  # one Redis connection held for the whole request, DB read included
        async with redis.client() as held:
            return await cached_item(held, item_id)
    return await cached_item(redis, item_id)


async def cached_item(redis, item_id: int) -> dict:
    key = f"item:{item_id}"
    hit = await redis.get(key)
    if hit is not None:
        return json.loads(hit)
    item = await load_item(item_id)
    await redis.set(key, json.dumps(item), ex=int(os.environ.get("SAMPLE_APP_CACHE_TTL", "60")))
    return item


async def load_item(item_id: int) -> dict:
    async with engine.connect() as conn:  # the item and how often it was bought: a scan of the events table
        row = (await conn.execute(text(
            "SELECT id, name, (SELECT count(*) FROM events WHERE kind = 'buy' AND id % 97 = items.id % 97) AS orders "
            "FROM items WHERE id = :id"), {"id": item_id})).first()
    item = {"id": item_id, "name": row.name, "orders": row.orders} if row else {"id": item_id, "name": None}
    if os.environ.get("SAMPLE_APP_ITEM_PRICE"):  # the price from another service (the slow local upstream)
        item["price"] = (await upstream["client"].get("/")).status_code
    return item


@app.get("/gc")
async def gc_churn() -> dict[str, int]:
    GC_RECENT.append([[i] for i in range(2000)])  # survives a few young collections, then dies old
    return {"graph": len(GC_GRAPH)}


class RequestId(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        response = await call_next(request)
        response.headers["x-request-id"] = request.headers.get("x-request-id", "-")
        return response


class Timing(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        response.headers["x-elapsed"] = f"{time.perf_counter() - started:.6f}"
        return response


class Tenant(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        request.state.tenant = request.headers.get("x-tenant", "default")
        return await call_next(request)


# /middleware/: the same do-nothing endpoint as /fast, behind three BaseHTTPMiddleware layers (in a
# mounted app, so the other endpoints keep a bare stack)
layered = FastAPI()
for layer in (RequestId, Timing, Tenant):
    layered.add_middleware(layer)


@layered.get("/")
async def behind_middleware() -> dict[str, str]:
    return {"status": "ok"}


app.mount("/middleware", layered)
