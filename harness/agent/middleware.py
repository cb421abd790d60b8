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
        self.labels: Dict[Tuple[int, Any], str] = {}

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
        # `send` is passed through untouched: wrapping it costs a coroutine per message on every
        # request; the driver sees status codes from outside, the agent sees exceptions from inside
        t = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        except BaseException as e:
            stats.inflight -= 1
            stats.done.append((self.route_of(scope), int((time.perf_counter() - t) * 1e6), True, type(e).__name__))
            raise
        stats.inflight -= 1
        stats.done.append((self.route_of(scope), int((time.perf_counter() - t) * 1e6), False, ""))

    def route_of(self, scope: Dict[str, Any]) -> str:
        """The route template when the router left one in the scope, else the raw path (bounded)."""
        route = scope.get("route")
        if route is not None:
            key = (id(route), scope.get("method"))  # routes are not always hashable (APIRoute is not)
            label = self.labels.get(key)
            if label is None:
                label = self.labels[key] = f"{scope.get('method', '')} {getattr(route, 'path', route)}"
            return label
        raw = scope.get("path", "")
        if raw not in self.raw_paths:
            if len(self.raw_paths) >= MAX_ROUTES:
                return "other"
            self.raw_paths.add(raw)
        return f"{scope.get('method', '')} {raw}"
