"""What the agent's middleware costs a request in process, with the CPU's caches warm and cold.

    python benchmarks/middleware_cold.py [--requests 6000] [--thrash-mb 8]

Calls sample_app's ``/fast`` directly on uvloop (no sockets), through: nothing (bare), a
pass-through ASGI layer, and the agent's middleware timing every request (``every`` 1) and one
in 8 (``every`` 8); the agent itself is never started. Each request is timed from outside;
the layouts take turns request by request, in a shuffled order, so the machine's drift
weighs on all alike. "cold": before each request, --thrash-mb of memory is copied, which
evicts the caches as the rest of a busy server (sockets, the HTTP parser, the other
requests) does between two requests of the same route. Prints the trimmed mean per request
(the middle 70 %) and each layout's extra over the pass-through layer.

Why it exists: in a server, the middleware cost /fast ≈ 2–3 µs a request, where a warm loop
of calls says ≈ 0.7 µs; cold, this says the same as the server (benchmarks/agent_overhead.md,
"Seventh sitting").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.agent.middleware import AgentMiddleware  # noqa: E402
from sample_app.main import app  # noqa: E402


class Inert:
    """The part of the agent the middleware talks to, never started."""

    def __init__(self) -> None:
        self.statements = self.pools = types.SimpleNamespace(routes=None)

    def start(self, loop: Any) -> None:
        pass


class PassThrough:
    def __init__(self, inner: Any) -> None:
        self.app = inner

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await self.app(scope, receive, send)


async def receive() -> dict:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: dict) -> None:
    pass


def fast_scope() -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": "/fast", "raw_path": b"/fast", "query_string": b"", "root_path": "",
            "headers": [(b"host", b"127.0.0.1")], "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}


def middleware(every: int) -> AgentMiddleware:
    mw = AgentMiddleware(app, Inert())
    mw.ready, mw.every = True, every
    return mw


async def measure(layouts: dict[str, Any], requests: int, thrash: bytearray | None) -> dict[str, float]:
    sink = bytearray(len(thrash)) if thrash else None
    took: dict[str, list[int]] = {name: [] for name in layouts}
    names = list(layouts)
    for _ in range(requests):
        random.shuffle(names)
        for name in names:
            if thrash is not None:
                sink[:] = thrash  # type: ignore[index]
            t = time.perf_counter_ns()
            await layouts[name](fast_scope(), receive, send)
            took[name].append(time.perf_counter_ns() - t)
    return {name: statistics.mean(sorted(v)[len(v) // 10: len(v) * 8 // 10]) / 1000 for name, v in took.items()}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=6000, help="per layout and cache state")
    ap.add_argument("--thrash-mb", type=int, default=8)
    args = ap.parse_args()
    layouts = {"bare": app, "pass-through": PassThrough(app), "middleware, every 1": middleware(1),
               "middleware, every 8": middleware(8)}
    for state, thrash in (("warm", None), ("cold", bytearray(os.urandom(args.thrash_mb << 20)))):
        got = await measure(layouts, args.requests, thrash)
        print(f"{state}: " + "   ".join(f"{name} {us:.2f} µs ({us - got['pass-through']:+.2f})"
                                       for name, us in got.items()), flush=True)


if __name__ == "__main__":
    import uvloop

    uvloop.install()
    asyncio.run(main())
