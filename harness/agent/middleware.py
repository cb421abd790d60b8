"""A pure-ASGI middleware (not BaseHTTPMiddleware): in-flight, per-route timing, exceptions."""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import Any, Dict, List, Tuple

from .hist import FAST, TABLE, bucket_of

MAX_ROUTES = 200  # beyond this many distinct raw paths, the rest count as "other"
MAX = -1  # the key of a route's slowest request (µs) among its bucket counts


class Tally:
    """One tick's requests, as the loop thread counts them."""

    __slots__ = ("hists", "raised")

    def __init__(self) -> None:
        self.hists: Dict[str, Dict[int, int]] = {}  # route → {bucket: count, MAX: slowest µs}
        self.raised: List[Tuple[str, str]] = []  # (route, exception type) per request that raised

    def add(self, other: "Tally") -> None:
        for route, counts in other.hists.items():
            mine = self.hists.setdefault(route, {MAX: 0})
            for b, n in counts.items():
                mine[b] = max(mine[b], n) if b == MAX else mine.get(b, 0) + n
        self.raised += other.raised


class RouteStats:
    """Per-route counts and latency histograms: kept by the loop thread, read by the agent's.

    The loop adds each request to its route's bucket counts (a dict update: no record per
    request to keep, hand over and fold later). Once a tick the agent's thread swaps the tally
    for a fresh one and reads the one it swapped out the tick *before*: the loop may be in
    the middle of an update of the tally it has just lost, but not a tick later. So a tick's
    record carries the requests of the tick before it, and the drain costs per bucket in use,
    not per request (which also keeps its hold on the GIL, and the loop's wait, short).
    """

    def __init__(self) -> None:
        self.inflight = 0
        self.tally = Tally()
        self._settled = Tally()

    def drain(self, final: bool = False) -> Dict[str, Any]:
        """The requests of the tick before the last (see above), plus the in-flight gauge (now);
        ``final``: of the last tick too (the worker has stopped serving)."""
        done, self._settled, self.tally = self._settled, self.tally, Tally()
        if final:
            done.add(self._settled)
            self._settled = Tally()
        errors: Dict[str, int] = {}
        exceptions: Dict[str, Dict[str, int]] = {}
        for route, exc in done.raised:
            errors[route] = errors.get(route, 0) + 1
            by_type = exceptions.setdefault(route, {})
            by_type[exc] = by_type.get(exc, 0) + 1
        routes = {}
        for route, counts in done.hists.items():
            slowest = counts.pop(MAX)
            routes[route] = {"n": sum(counts.values()), "errors": errors.get(route, 0),
                             "hist": {"b": sorted(counts.items()), "max": slowest}}
        return {"inflight": self.inflight, "routes": routes, "exceptions": exceptions}


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
            if scope["type"] == "lifespan":
                receive = self._stop_at_shutdown(receive)
            await self.app(scope, receive, send)
            return
        stats = self.stats
        stats.inflight += 1
        # `send` is passed through untouched: wrapping it costs a coroutine per message on every
        # request; the driver sees status codes from outside, the agent sees exceptions from inside
        t = perf_counter()
        raised = None
        try:
            await self.app(scope, receive, send)
        except BaseException as e:
            raised = e
            raise
        finally:
            # counted once for both outcomes, inline: this runs on the loop for every request
            us = int((perf_counter() - t) * 1e6)
            stats.inflight -= 1
            tally = stats.tally
            route = self.route_of(scope)
            counts = tally.hists.get(route)
            if counts is None:
                counts = tally.hists[route] = {MAX: 0}
            b = TABLE[us] if us < FAST else bucket_of(us)
            counts[b] = counts.get(b, 0) + 1
            if us > counts[MAX]:
                counts[MAX] = us
            if raised is not None:
                tally.raised.append((route, type(raised).__name__))
                raised = None  # the exception's traceback holds this frame

    def _stop_at_shutdown(self, receive: Any) -> Any:
        """``receive`` for the lifespan scope, stopping the agent when the server shuts down.

        By then every request has been answered, so the agent's last record counts them all;
        and it may be the last chance: uvicorn (0.29 and later) ends a SIGTERM'd worker by
        raising the signal again after shutdown, with its default action, so ``atexit``
        handlers never run.
        """
        async def receive_and_watch() -> Any:
            message = await receive()
            if message.get("type") == "lifespan.shutdown":
                self.agent.stop()
            return message

        return receive_and_watch

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
