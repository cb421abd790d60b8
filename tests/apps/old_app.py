"""An app for old stacks (Python 3.9, FastAPI 0.79, pydantic 1, uvicorn 0.18): no newer syntax."""

import time

from fastapi import FastAPI

app = FastAPI()


@app.get("/fast")
async def fast():
    return {"status": "ok"}


@app.get("/blocking")
async def blocking():
    time.sleep(0.05)  # the line the agent must name
    return {"status": "ok"}
