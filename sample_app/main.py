"""The sample target: ``sample_app.main:app``, one endpoint per classic bottleneck.

``/health`` is the seed article's endpoint exactly; ``/fast`` returns at once. Each other
endpoint has a scenario in ``scenarios/`` that drives it into its bottleneck.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy import text

from sample_app.db import create_schema, make_engine

engine = make_engine()
log = logging.getLogger("sample_app.requests")
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
    yield
    log.removeHandler(handler)
    handler.close()
    await engine.dispose()


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
