"""A pure-ASGI middleware (not BaseHTTPMiddleware): in-flight, per-route timing, exceptions."""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any, Dict, Tuple

from . import hist

MAX_ROUTES = 200  # beyond this many distinct raw paths, the rest count as "other"


class RouteStats:
    """Per-request facts are queued by the loop thread and aggregated by the agent's writer thread."""

    def __init__(self) -> None:
        self.inflight = 0
        self.done: "collections.deque[Tuple[str, int, bool, str]]" = collections.deque()

    def drain(self) -> Dict[str, Any]:
        """Counters since the last drain, plus the in-flight gauge (called off the loop)."""
        routes: Dict[str, list] = {}
        exceptions: Dict[str, Dict[str, int]] = {}
        done = self.done
        while done:
            route, us, error, exc = done.popleft()
            entry = routes.get(route)
            if entry is None:
                entry = routes[route] = [0, 0, hist.Histogram()]
            entry[0] += 1
            entry[1] += error
            entry[2].record(us)
            if exc:
                by_type = exceptions.setdefault(route, {})
                by_type[exc] = by_type.get(exc, 0) + 1
        return {
            "inflight": self.inflight,
            "routes": {r: {"n": n, "errors": e, "hist": h.to_json()} for r, (n, e, h) in routes.items()},
            "exceptions": exceptions,
        }


class AgentMiddleware:
    def __init__(self, app: Any, agent: Any) -> None:
        self.app = app
        self.agent = agent
        self.stats = RouteStats()
        agent.routes = self.stats
        self.raw_paths: set = set()

    async def __call__(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        agent = self.agent
        if not agent.started:
            agent.start(asyncio.get_running_loop())
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if agent.threadpool.limiter is None:
            agent.threadpool.attach()
        stats = self.stats
        stats.inflight += 1
        status = 500
        exc_name = ""

        async def send_status(message: Dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        t = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        except BaseException as e:
            exc_name = type(e).__name__
            raise
        finally:
            stats.inflight -= 1
            stats.done.append((self.route_of(scope), int((time.perf_counter() - t) * 1e6), status >= 500 or bool(exc_name), exc_name))

    def route_of(self, scope: Dict[str, Any]) -> str:
        """The route template when the router left one in the scope, else the raw path (bounded)."""
        route = scope.get("route")
        path = getattr(route, "path", None)
        if path:
            return f"{scope.get('method', '')} {path}"
        raw = scope.get("path", "")
        if raw not in self.raw_paths:
            if len(self.raw_paths) >= MAX_ROUTES:
                return "other"
            self.raw_paths.add(raw)
        return f"{scope.get('method', '')} {raw}"
