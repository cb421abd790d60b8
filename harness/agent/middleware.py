"""A pure-ASGI middleware (not BaseHTTPMiddleware): in-flight, per-route timing, exceptions."""

from __future__ import annotations

import asyncio
import collections
from time import perf_counter
from typing import Any, Dict, List, Tuple

from . import hist

MAX_ROUTES = 200  # beyond this many distinct raw paths, the rest count as "other"


class RouteStats:
    """Per-request facts are appended by the loop thread and aggregated by the agent's thread."""

    def __init__(self) -> None:
        self.inflight = 0
        self.done: List[Tuple[str, int]] = []  # (route, µs) per request that returned
        self.raised: List[Tuple[str, int, str]] = []  # (route, µs, exception type) per request that raised

    def drain(self) -> Dict[str, Any]:
        """Counters since the last drain, plus the in-flight gauge (called off the loop).

        Runs while the loop keeps appending, and holds the GIL the loop needs: it takes each
        list's items with a slice and a delete (single C operations, atomic under the GIL),
        and lets a Counter fold the many identical (route, µs) pairs before any Python-level
        work, so its cost per request is a few C-level steps.
        """
        routes: Dict[str, list] = collections.defaultdict(lambda: [0, 0, hist.Histogram()])
        for (route, us), n in collections.Counter(_take(self.done)).items():
            entry = routes[route]
            entry[0] += n
            entry[2].record(us, n)
        exceptions: Dict[str, Dict[str, int]] = {}
        for route, us, exc in _take(self.raised):
            entry = routes[route]
            entry[0] += 1
            entry[1] += 1
            entry[2].record(us)
            by_type = exceptions.setdefault(route, {})
            by_type[exc] = by_type.get(exc, 0) + 1
        return {
            "inflight": self.inflight,
            "routes": {r: {"n": n, "errors": e, "hist": h.to_json()} for r, (n, e, h) in routes.items()},
            "exceptions": exceptions,
        }


def _take(items: list) -> list:
    """The items now in a list that another thread appends to, removed from it without losing any."""
    n = len(items)
    taken = items[:n]
    del items[:n]
    return taken


class AgentMiddleware:
    def __init__(self, app: Any, agent: Any) -> None:
        self.app = app
        self.agent = agent
        self.stats = RouteStats()
        agent.routes = self.stats
        self.ready = False
        self.raw_paths: set = set()
        self.labels: Dict[Tuple[int, Any], str] = {}

    async def __call__(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        if not self.ready:
            self.agent.start(asyncio.get_running_loop())
            if scope["type"] == "http":  # inside a request task: anyio's limiter is reachable now
                self.agent.threadpool.attach()
                self.ready = True
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        stats = self.stats
        stats.inflight += 1
        # `send` is passed through untouched: wrapping it costs a coroutine per message on every
        # request; the driver sees status codes from outside, the agent sees exceptions from inside
        t = perf_counter()
        try:
            await self.app(scope, receive, send)
        except BaseException as e:
            stats.inflight -= 1
            stats.raised.append((self.route_of(scope), int((perf_counter() - t) * 1e6), type(e).__name__))
            raise
        stats.inflight -= 1
        stats.done.append((self.route_of(scope), int((perf_counter() - t) * 1e6)))

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
