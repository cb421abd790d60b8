"""An app that installs its own event-loop policy and its own (BaseHTTP) middleware."""

import asyncio

from fastapi import FastAPI, Request
from starlette.middleware.base import BaseHTTPMiddleware

asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())

app = FastAPI()


class Stamp(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next):
        response = await call_next(request)
        response.headers["X-Stamp"] = "1"
        return response


app.add_middleware(Stamp)


@app.get("/items/{item_id}")
async def item(item_id: int) -> dict:
    return {"id": item_id}


@app.post("/orders")
async def order(payload: dict) -> dict:  # a body that is not a JSON object is a 422
    return {"items": len(payload.get("items", []))}
