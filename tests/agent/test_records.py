"""The agent's own writer against the harness's one reader (``records.agent_record``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from typing import Any

from harness.agent.core import Agent
from harness.agent.middleware import AgentMiddleware
from harness.records import AgentHello, AgentStall, AgentTick, agent_record, agent_record_to_json


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["path"] == "/stall":
        time.sleep(0.12)  # blocks the loop: a stall with this line as its site
    if scope["path"] == "/boom":
        raise ValueError("boom")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def request(path: str) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "headers": []}


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b""}


async def send(message: dict[str, Any]) -> None:
    return None


def test_every_record_the_agent_writes_is_read_into_its_type(tmp_path):
    handlers = {s: signal.getsignal(s) for s in (signal.SIGPROF, signal.SIGALRM)}
    agent = Agent({"stream_dir": str(tmp_path), "stall_ms": 20, "hot_hz": 50})
    mw = AgentMiddleware(app, agent)

    async def serve() -> None:
        for path in ("/a", "/stall", "/a"):
            await mw(request(path), receive, send)
        with contextlib.suppress(ValueError):
            await mw(request("/boom"), receive, send)
        await asyncio.sleep(0.35)  # a few ticks of the agent's thread

    try:
        asyncio.run(serve())
    finally:
        agent.stop()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    lines = [json.loads(line) for line in (tmp_path / f"agent-{os.getpid()}.jsonl").read_text().splitlines()]
    records = [agent_record(line) for line in lines]
    assert [agent_record(agent_record_to_json(r)) for r in records] == records  # what a saved recording holds
    hello = [r for r in records if isinstance(r, AgentHello)]
    assert len(hello) == 1 and hello[0].pid == os.getpid()
    stalls = [r for r in records if isinstance(r, AgentStall)]
    assert stalls and stalls[0].duration_ms >= 50 and stalls[0].site is not None
    assert stalls[0].site[0].endswith("test_records.py") and stalls[0].site[2] == "app"
    ticks = [r for r in records if isinstance(r, AgentTick)]
    served = sum(t.routes["GET /a"].n for t in ticks if "GET /a" in t.routes)
    raised = sum(t.exceptions.get("GET /boom", {}).get("ValueError", 0) for t in ticks)
    assert served == 2 and raised == 1 and all(t.lag_ms is not None for t in ticks)
