"""The sample target: ``sample_app.main:app``.

``/health`` is the seed article's endpoint exactly; ``/fast`` returns at once.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

app = FastAPI(title="fastapi-harness sample app")


@app.get("/health")
async def health() -> dict[str, str]:
    await asyncio.sleep(0.01)
    return {"status": "ok"}


@app.get("/fast")
async def fast() -> dict[str, str]:
    return {"status": "ok"}
