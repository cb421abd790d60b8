"""A pure-ASGI middleware (not BaseHTTPMiddleware): in-flight, per-route timing, exceptions."""

from __future__ import annotations

import asyncio
import itertools
from time import perf_counter_ns
from typing import Any, Dict, List, Tuple

from .hist import FAST, TABLE, bucket_of
from .waits import WaitProbe

MAX_ROUTES = 200  # beyond this many distinct raw paths, the rest count as "other"
NB = TABLE[-1] + 1  # buckets below FAST µs, each a list slot
# a route's counts in a tally: [slowest timed µs, requests, bucket 0 .. NB-1 (slot = bucket + 2),
# {bucket: n} at FAST µs and above]
N = 1
_SLOTS = list(range(NB + 2))
SLOT = [_SLOTS[b + 2] for b in TABLE]  # SLOT[us]: one shared int object per slot, as in TABLE
RAISED = None  # a tally's key for its [(route key, exception type)]
TIMED_PER_S = 1000  # above this many requests a second, about this many are timed (all are counted)


def base_http_middleware(app: Any) -> List[str]:
    """The ``BaseHTTPMiddleware`` subclasses in the app's stack and in the apps it mounts (each runs
    the rest of the request in a task of its own, behind memory streams)."""
    try:
        from starlette.middleware.base import BaseHTTPMiddleware
    except Exception:
        return []
    out: List[str] = []
    apps, seen = [app], set()
    while apps:
        current = apps.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for entry in getattr(current, "user_middleware", None) or ():
            cls = getattr(entry, "cls", None)
            if isinstance(cls, type) and issubclass(cls, BaseHTTPMiddleware):
                out.append(f"{cls.__module__}.{cls.__qualname__}")
        apps += [route.app for route in getattr(current, "routes", None) or () if hasattr(route, "app")
                 and not hasattr(route, "endpoint")]
    return out


def _methods(route: Any) -> str:
    """A route's methods as its label shows them: "GET", "GET,POST" (the HEAD that Starlette adds to a
    GET route left out)."""
    methods = set(getattr(route, "methods", None) or ())
    if "GET" in methods:
        methods.discard("HEAD")
    return ",".join(sorted(methods))


def _new_counts() -> List[Any]:
    return [0] * (NB + 2) + [None]


class AgentMiddleware:
    """Counts every request on the loop in as few bytecodes as it can: one dict lookup and a
    list slot per request; labels, buckets and sums are made on the agent's thread (``drain``).

    Every request is timed while the worker serves fewer than ``TIMED_PER_S`` a second; above
    that, about one in ``every`` (set each tick, so that about ``TIMED_PER_S`` are timed), at
    random gaps (a fixed stride could keep timing the same one of several routes that a load
    tool requests in turn), and each timed request stands for ``every`` in the histogram.
    Counts, in-flight and exceptions stay exact. Why: reading the clock twice and filling a
    bucket is a fraction of a microsecond when the interpreter's caches are warm, but between
    two requests of a busy server they are not, and there it cost /fast ≈ 2 % of its
    throughput (benchmarks/agent_overhead.md); at a thousand a second it costs a few
    milliseconds of CPU a second, whatever the rate.

    The loop adds each request to its route's counts in ``tally`` (keyed by the id of the router's route
    object, so a request makes neither a string nor a tuple). Once a tick the agent's thread swaps
    the tally for a fresh one and reads the one it swapped out the tick *before*: the loop may
    be in the middle of an update of the tally it has just lost, but not a tick later. So a
    tick's record carries the requests of the tick before it, and the drain costs per route
    in use, not per request (which also keeps its hold on the GIL, and the loop's wait, short).
    """

    def __init__(self, app: Any, agent: Any) -> None:
        self.app = app
        self.agent = agent
        agent.routes = self
        agent.waits = WaitProbe(self)
        agent.statements.routes = agent.pools.routes = self
        agent.middleware = base_http_middleware(app)
        self.ready = False
        self.inflight = 0
        self.tally: Dict[Any, Any] = {}
        # the tally of the tick before: (tally, its ``every``, ns it was filled for)
        self._settled: Tuple[Dict[Any, Any], int, int] = ({}, 1, 0)
        self._swapped_ns = perf_counter_ns()
        self.labels: Dict[Any, str] = {}  # tally key → "METHOD /path"
        self.route_objects: Dict[int, Any] = {}  # the route objects whose ids are keys (kept alive)
        self.raw_paths: set = set()
        self.slowest_us = 0  # the slowest timed request of the last drained tally
        self.every = 1  # about one request in this many is timed (the agent's thread sets it)
        self.skip = 1  # requests until the next timed one, this one included

    async def __call__(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.ready:
            await self._other(scope, receive, send)
            return
        self.inflight += 1
        self.skip -= 1
        # `send` is passed through untouched: wrapping it costs a coroutine per message on every
        # request; the driver sees status codes from outside, the agent sees exceptions from inside
        if self.skip:  # counted, not timed
            try:
                await self.app(scope, receive, send)
            except BaseException as e:
                self.inflight -= 1
                self._record(scope, -1)
                self._raised(scope, type(e).__name__)
                raise
            # counted inline, and not in a `finally` (which costs every request 0.1–0.3 µs more on
            # CPython 3.11): this runs on the loop for every request
            self.inflight -= 1
            counts = self.tally.get(id(scope.get("route")))
            if counts is None:
                self._record(scope, -1)
            else:
                counts[N] += 1
            return
        t = perf_counter_ns()
        every = self.every
        # a gap of 1 .. 2 × every - 1 requests to the next timed one (mean: every), from the clock's low bits
        self.skip = 1 + t % (2 * every - 1) if every > 1 else 1
        try:
            await self.app(scope, receive, send)
        except BaseException as e:
            self.inflight -= 1
            self._record(scope, (perf_counter_ns() - t) // 1000)
            self._raised(scope, type(e).__name__)
            raise
        us = (perf_counter_ns() - t) // 1000
        self.inflight -= 1
        counts = self.tally.get(id(scope.get("route")))
        if counts is None or us >= FAST:
            self._record(scope, us)
        else:
            counts[N] += 1
            counts[SLOT[us]] += 1
            if us > counts[0]:
                counts[0] = us

    async def _other(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        """Anything but a request once the agent runs: start it, stop it at shutdown."""
        if not self.ready:
            self.agent.start(asyncio.get_running_loop())
            if scope["type"] == "http":  # inside a request task: anyio's limiter is reachable now
                self.agent.threadpool.attach()
                self.ready = True
                await self(scope, receive, send)
                return
        if scope["type"] == "lifespan":
            receive = self._stop_at_shutdown(receive)
        await self.app(scope, receive, send)

    def _key(self, scope: Dict[str, Any]) -> Any:
        """The tally key of a request: its route object's id when the router left one in the
        scope (routes are not always hashable: APIRoute is not; an id needs no tuple per
        request), else its raw path and method (bounded)."""
        method = scope.get("method")
        route = scope.get("route")
        if route is not None:
            key = id(route)
            if key not in self.labels:
                self.route_objects[key] = route
                self.labels[key] = f"{_methods(route) or method or ''} {getattr(route, 'path', route)}"
            return key
        key = (scope.get("path", ""), method)
        if key not in self.labels:
            if len(self.raw_paths) >= MAX_ROUTES:
                key = ("other", None)
                self.labels[key] = "other"
                return key
            self.raw_paths.add(key[0])
            self.labels[key] = f"{method or ''} {key[0]}"
        return key

    def _record(self, scope: Dict[str, Any], us: int) -> None:
        """A request the fast path could not count: its route's first in this tally, one of a
        raw path, or one that took FAST µs or longer; ``us`` -1 when it was not timed."""
        tally, key = self.tally, self._key(scope)
        counts = tally.get(key)
        if counts is None:
            counts = tally[key] = _new_counts()
        counts[N] += 1
        if us < 0:
            return
        if us < FAST:
            counts[SLOT[us]] += 1
        else:
            if counts[-1] is None:
                counts[-1] = {}
            b = bucket_of(us)
            counts[-1][b] = counts[-1].get(b, 0) + 1
        if us > counts[0]:
            counts[0] = us

    def _raised(self, scope: Dict[str, Any], exc: str) -> None:
        self.tally.setdefault(RAISED, []).append((self._key(scope), exc))

    def drain(self, final: bool = False) -> Dict[str, Any]:
        """The requests of the tick before the last (see the class), plus the in-flight gauge
        (now); ``final``: of the last tick too (the worker has stopped serving). A route's
        histogram counts each timed request ``every`` times (its ``timed``: how many were)."""
        now = perf_counter_ns()
        done = self._settled
        self._settled = (self.tally, self.every, now - self._swapped_ns)
        self.tally, self._swapped_ns = {}, now
        parts = [done, self._settled] if final else [done]
        if final:
            self._settled = ({}, 1, 0)
        routes: Dict[str, Dict[str, Any]] = {}
        exceptions: Dict[str, Dict[str, int]] = {}
        self.slowest_us = 0
        for tally, every, _ in parts:
            for key, exc in tally.pop(RAISED, ()):
                by_type = exceptions.setdefault(self.labels[key], {})
                by_type[exc] = by_type.get(exc, 0) + 1
            for key, counts in tally.items():
                if counts[0] > self.slowest_us:
                    self.slowest_us = counts[0]
                # no slot above the slowest timed request's holds a count: scan up to it, not all NB
                top = SLOT[counts[0]] - 2 if counts[0] < FAST else NB - 1
                slots, over = counts[2:top + 3], counts[-1] or {}
                pairs = list(zip(itertools.compress(range(top + 1), slots), itertools.compress(slots, slots)))
                pairs += sorted(over.items())
                timed = sum(k for _, k in pairs)
                if every > 1:
                    pairs = [(b, k * every) for b, k in pairs]
                label = self.labels[key]
                st = routes.get(label)
                if st is None:
                    st = routes[label] = {"n": 0, "errors": 0, "hist": {"b": [], "max": 0}}
                if every > 1 or "timed" in st:
                    st["timed"] = st.get("timed", st["n"]) + timed
                st["n"] += counts[N]
                # one label from two keys ("other"), or from both tallies of the final drain
                merged = dict(st["hist"]["b"])
                for b, k in pairs:
                    merged[b] = merged.get(b, 0) + k
                st["hist"] = {"b": sorted(merged.items()), "max": max(st["hist"]["max"], counts[0])}
        # the next tally times about TIMED_PER_S requests a second, judged by the one just read
        n, span = sum(counts[N] for counts in done[0].values()), done[2]  # (its RAISED entry is gone)
        if span > 0:
            self.every = max(1, round(n / (span / 1e9) / TIMED_PER_S))
        for label, by_type in exceptions.items():
            if label in routes:  # (a request that raised as the tally was swapped counts a tick later)
                routes[label]["errors"] = sum(by_type.values())
        return {"inflight": self.inflight, "routes": routes, "exceptions": exceptions}

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
