"""Where in-flight requests wait: each slow request's task walked down its chain of awaits.

Nothing runs per request for this. From the agent's thread, a few times a tick, the loop's
tasks are listed; a request's task is known by the middleware's own frame near the top of its
chain, and that frame's local ``t`` says when the request started. A request in flight longer
than ``SLOW_NS`` is followed down ``cr_await`` to the innermost suspended frame; what it awaits
says the kind of wait (an outbound HTTP pool, a response, a DB pool or statement, an asyncio
lock, an executor, a sleep), and the innermost frame of the app's own code is its site. Each
walk adds the time since the previous one to every waiting request's (kind, site).

The HTTP client pools (httpcore's, aiohttp's connectors) are found the same way, from the
frames of requests waiting on them, and read every tick after; executors are found from their
worker threads. Nothing here may raise into the app.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import weakref
from typing import Any, Dict, List, Optional, Tuple

from . import stacks

SLOW_NS = 5_000_000  # a request in flight longer than this is walked
WALK_S = 0.050  # between walks while a request waits (else once a tick)
MAX_TASKS = 256  # walked per walk, at most
MAX_DEPTH = 64  # frames followed down one chain
HEAD_DEPTH = 10  # the middleware's frame is among the outermost of a request's chain
LOCKS = {"Lock": "lock", "Semaphore": "semaphore", "BoundedSemaphore": "semaphore", "Condition": "condition",
         "Event": "event", "CapacityLimiter": "semaphore"}
_SEP = os.sep


class WaitProbe:
    """Walks slow requests' tasks; ``read`` returns the waits since the last read and the pools seen."""

    def __init__(self, middleware_code: Any) -> None:
        self.code = middleware_code
        self.waits: Dict[str, float] = {}  # "kind|file:line function" → ms of in-flight time
        self.active = False  # the last walk saw a waiting request: walk every WALK_S
        self.last = time.perf_counter()
        self.http_pools: Dict[int, Tuple[Any, str, str]] = {}  # id → (weak ref, kind, site)

    def walk(self, loop: Any) -> None:
        """One look at every in-flight request; never raises."""
        now = time.perf_counter()
        interval, self.last = now - self.last, now
        try:
            tasks = list(asyncio.all_tasks(loop))
        except RuntimeError:  # the loop changed the set while it was copied: next time
            return
        now_ns = time.perf_counter_ns()
        found = False
        for task in tasks[:MAX_TASKS]:
            try:
                walked = self._chain(task.get_coro())
                if walked is None or now_ns - walked[2] < SLOW_NS:
                    continue
                frames, awaited, _ = walked
                if not isinstance(awaited, asyncio.Future):
                    # `await future` leaves an iterator in cr_await; the task knows the future it waits on
                    awaited = getattr(task, "_fut_waiter", None)
                kind, pool = classify(frames, awaited)
                site = _app_site(frames)
            except Exception:  # a frame or object of an unexpected shape: skip this request, never the app
                continue
            found = True
            key = f"{kind}|{site}" if site else kind
            self.waits[key] = self.waits.get(key, 0.0) + interval * 1000.0
            if pool is not None and id(pool[0]) not in self.http_pools:
                self.http_pools[id(pool[0])] = (weakref.ref(pool[0]), pool[1], site or "")
        self.active = found

    def _chain(self, coro: Any) -> Optional[Tuple[List[Any], Any, int]]:
        """(frames outer→inner, the innermost awaited object, the request's start ns), or None for a
        task that is not a request's."""
        frames: List[Any] = []
        start = None
        obj = coro
        for depth in range(MAX_DEPTH):
            frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None) or getattr(obj, "ag_frame", None)
            if frame is None:
                if isinstance(obj, asyncio.Task):  # awaiting a task of its own: follow it
                    obj = obj.get_coro()
                    continue
                break
            if start is None:
                if frame.f_code is self.code:
                    start = frame.f_locals.get("t")
                elif depth >= HEAD_DEPTH:
                    return None
            frames.append(frame)
            nxt = getattr(obj, "cr_await", None)
            if nxt is None:
                nxt = getattr(obj, "gi_yieldfrom", None)
            if nxt is None:
                nxt = getattr(obj, "ag_await", None)
            if nxt is None:
                break
            obj = nxt
        if start is None or not frames:
            return None
        return frames, obj, int(start)

    def read(self) -> Dict[str, Any]:
        waits, self.waits = self.waits, {}
        return {"waits_ms": {k: round(v, 2) for k, v in waits.items()}, "http_pools": self._pools(),
                "executors": executors()}

    def _pools(self) -> List[Dict[str, Any]]:
        out = []
        for key, (ref, kind, site) in list(self.http_pools.items()):
            pool = ref()
            if pool is None:
                del self.http_pools[key]
                continue
            try:
                out.append({"id": f"{kind}-{key:x}", "kind": kind, "site": site, **_pool_gauges(pool, kind)})
            except Exception:  # a pool of another version's shape: stop reading it
                del self.http_pools[key]
        return out


def classify(frames: List[Any], awaited: Any) -> Tuple[str, Optional[Tuple[Any, str]]]:
    """The kind of wait a chain ends in, and the HTTP pool it waits on (with its kind) when it does."""
    names = [(f.f_code.co_filename, f.f_code.co_name) for f in frames]
    path, func = names[-1]
    http = [(p, n, f) for (p, n), f in zip(names, frames) if _part("httpcore", p) or _part("aiohttp", p)]
    if http:
        pool = next(((f.f_locals.get("self"), "httpcore") for p, n, f in http
                     if n == "handle_async_request" and p.endswith("connection_pool.py")), None) or next(
            ((f.f_locals.get("self"), "aiohttp") for p, n, f in http if n == "connect" and p.endswith("connector.py")),
            None)
        acquiring = any(n in ("wait_for_connection", "_wait_for_available_connection") for _, n, _ in http) or (
            pool is not None and pool[1] == "aiohttp" and not any(n == "_create_connection" for _, n, _ in http))
        return ("http-pool-acquire" if acquiring else "http-response"), pool
    if any(_part(lib, p) for p, _ in names for lib in ("sqlalchemy", "asyncpg", "aiosqlite", "psycopg", "databases")):
        queued = path.endswith(_SEP + "queues.py") or any(
            _part("asyncpg", p) and p.endswith("pool.py") and n in ("_acquire", "acquire") for p, n in names)
        return ("db-pool-acquire" if queued else "db-statement"), None
    if path.endswith(("locks.py", "_synchronization.py")):
        owner = type(frames[-1].f_locals.get("self")).__name__
        return LOCKS.get(owner, "lock"), None
    if path.endswith(_SEP + "queues.py"):
        return "queue", None
    if any(_part("anyio", p) and n in ("run_sync", "run_sync_in_worker_thread") for p, n in names):
        return "threadpool", None
    if _is_executor_future(awaited):
        return "executor", None
    if func == "sleep" and path.endswith("tasks.py"):
        return "sleep", None
    return "other", None


def _part(lib: str, path: str) -> bool:
    return (_SEP + lib + _SEP) in path


def _is_executor_future(obj: Any) -> bool:
    """An asyncio future chained to a concurrent one (``run_in_executor``, ``to_thread``)."""
    callbacks = getattr(obj, "_callbacks", None) or ()
    for entry in callbacks:
        fn = entry[0] if isinstance(entry, tuple) else entry
        if getattr(fn, "__name__", "") == "_call_check_cancel":
            return True
    return False


def _app_site(frames: List[Any]) -> Optional[str]:
    """"file:line function" of the innermost frame of the app's own code."""
    for frame in reversed(frames):
        path = frame.f_code.co_filename
        if not stacks.is_library(path):
            return f"{path}:{frame.f_lineno} {frame.f_code.co_name}"
    return None


def _pool_gauges(pool: Any, kind: str) -> Dict[str, int]:
    """Limit, connections in use and requests waiting of an HTTP client pool, from its own fields."""
    if kind == "httpcore":
        requests = list(pool._requests)
        in_use = sum(1 for c in list(pool._connections) if not c.is_idle())
        return {"limit": int(pool._max_connections), "in_use": in_use,
                "waiting": sum(1 for r in requests if r.connection is None)}
    waiters = getattr(pool, "_waiters", {}) or {}
    return {"limit": int(pool.limit or 0), "in_use": len(pool._acquired),
            "waiting": sum(len(q) for q in list(waiters.values()))}


def executors() -> List[Dict[str, Any]]:
    """Every ThreadPoolExecutor that has threads, found from its workers: size, busy, queued."""
    module = sys.modules.get("concurrent.futures.thread")
    if module is None:
        return []
    worker = getattr(module, "_worker", None)
    seen: Dict[int, Any] = {}
    for t in threading.enumerate():
        if getattr(t, "_target", None) is worker and getattr(t, "_args", None):
            ex = t._args[0]()  # a weak reference to its executor
            if ex is not None:
                seen[id(ex)] = ex
    out = []
    for ex in seen.values():
        threads = len(ex._threads)
        idle = getattr(getattr(ex, "_idle_semaphore", None), "_value", 0)
        out.append({"name": ex._thread_name_prefix or "ThreadPoolExecutor", "max_workers": ex._max_workers,
                    "threads": threads, "busy": max(0, threads - idle), "queued": ex._work_queue.qsize()})
    return out
