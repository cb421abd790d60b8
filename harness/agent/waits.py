"""Where in-flight requests wait: each slow request's task walked down its chain of awaits.

Nothing runs per request for this. From the agent's thread, a few times a tick, the loop's
tasks are listed; a request's task is known by the middleware's own frame near the top of its
chain, and that frame's local ``t`` says when the request started (when the middleware timed it:
on a busy worker, about one request in ``every``, each found standing for that many). A request
in flight longer than ``SLOW_NS`` is followed down ``cr_await`` to the innermost suspended
frame; what it awaits says the kind of wait (an outbound HTTP pool, a response, a DB pool or
statement, an asyncio lock, an executor, a sleep), and the innermost frame of the app's own code
is its site. Each walk adds the time since the previous one to every waiting request's (kind, site). The cost of a
walk is bounded whatever the load: at most ``MAX_TASKS`` tasks are looked at and ``MAX_WALKED``
slow requests followed, random samples each standing for its share of the rest (following every
one of 200 requests 30 frames deep cost ≈ 20 ms a walk, holding the GIL).

The HTTP client pools (httpcore's, aiohttp's connectors) are found the same way, from the
frames of requests waiting on them, and read every tick after; executors are found from their
worker threads. Nothing here may raise into the app.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import threading
import time
import types
import weakref
from typing import Any, Dict, List, Optional, Tuple

from . import stacks

SLOW_NS = 5_000_000  # a request in flight longer than this is walked
WALK_S = 0.050  # between walks while a request waits (else once a tick)
MAX_TASKS = 64  # tasks looked at per walk, at most ...
MAX_WALKED = 16  # ... and slow requests followed to where they wait (samples, weighted, when more)
MAX_DEPTH = 64  # frames followed down one chain
HEAD_DEPTH = 10  # the middleware's frame is among the outermost of a request's chain
LOCKS = {"Lock": "lock", "Semaphore": "semaphore", "BoundedSemaphore": "semaphore", "Condition": "condition",
         "Event": "event", "CapacityLimiter": "semaphore"}
_SEP = os.sep
_COROUTINE = types.CoroutineType
# the weak set of every task, read as it is: asyncio.all_tasks() filters all of them in Python (≈ 1 µs
# each, a millisecond a walk with a thousand tasks); a walk filters only those it samples
_TASKS = getattr(asyncio.tasks, "_all_tasks", None) if sys.version_info < (3, 12) else getattr(
    asyncio.tasks, "_scheduled_tasks", None)


class WaitProbe:
    """Walks slow requests' tasks; ``read`` returns the waits since the last read and the pools seen."""

    def __init__(self, middleware: Any) -> None:
        self.code = type(middleware).__call__.__code__  # a request's frame of the middleware, by its code
        self.middleware = middleware  # its ``every``: only timed requests have a start to judge by
        self.waits: Dict[str, float] = {}  # "kind|file:line function" → ms of in-flight time
        self.active = False  # the last walk saw a waiting request: walk every WALK_S
        self.last = time.perf_counter()
        self.http_pools: Dict[int, Tuple[Any, str, str]] = {}  # id → (weak ref, kind, site)

    def walk(self, loop: Any) -> None:
        """One look at every in-flight request; never raises."""
        now = time.perf_counter()
        interval, self.last = now - self.last, now
        try:
            tasks = list(_TASKS) if _TASKS is not None else list(asyncio.all_tasks(loop))
        except RuntimeError:  # the loop changed the set while it was copied: next time
            return
        now_ns = time.perf_counter_ns()
        looked = random.sample(tasks, MAX_TASKS) if len(tasks) > MAX_TASKS else tasks
        slow = []
        for task in looked:
            try:
                if task.done() or task.get_loop() is not loop:
                    continue
                head = self._follow(task.get_coro(), [], now_ns)
            except Exception:  # a frame or object of an unexpected shape: skip this request, never the app
                continue
            if head is not None:
                slow.append((task, head))
        # the rest of each chain, and what it waits on, for a sample of them standing for all
        walked = random.sample(slow, MAX_WALKED) if len(slow) > MAX_WALKED else slow
        weight = interval * 1000.0 * len(tasks) / len(looked) * len(slow) / len(walked) if walked else 0.0
        weight *= self.middleware.every  # a timed request stands for `every` (see the middleware)
        for task, (frames, obj) in walked:
            try:
                frames, awaited = self._follow(obj, frames, None)  # type: ignore[misc]
                if not isinstance(awaited, asyncio.Future):
                    # `await future` leaves an iterator in cr_await; the task knows the future it waits on
                    awaited = getattr(task, "_fut_waiter", None)
                kind, pool, site = classify(frames, awaited)
            except Exception:
                continue
            key = f"{kind}|{site}" if site else kind
            self.waits[key] = self.waits.get(key, 0.0) + weight
            if pool is not None and id(pool[0]) not in self.http_pools:
                self.http_pools[id(pool[0])] = (weakref.ref(pool[0]), pool[1], site or "")
        self.active = bool(slow)

    def _follow(self, obj: Any, frames: List[Any], now_ns: Optional[int]) -> Optional[Tuple[List[Any], Any]]:
        """Down a chain of awaits from ``obj``, appending to ``frames`` (outer→inner).

        With ``now_ns``: from a task's coroutine to the middleware's frame, returning (frames, what that
        frame awaits) when the request has been in flight for SLOW_NS or longer, else None (also for a
        task that is not a request's). Without: on to the innermost frame, returning (frames, the
        innermost awaited object).
        """
        found = now_ns is None
        for depth in range(MAX_DEPTH):
            if type(obj) is _COROUTINE:  # the common case, without getattr's defaults
                frame, nxt = obj.cr_frame, obj.cr_await
            else:
                frame = getattr(obj, "gi_frame", None) or getattr(obj, "ag_frame", None) or getattr(
                    obj, "cr_frame", None)
                if frame is None:
                    if isinstance(obj, asyncio.Task):  # awaiting a task of its own: follow it
                        obj = obj.get_coro()
                        continue
                    break
                nxt = getattr(obj, "gi_yieldfrom", None)
                if nxt is None:
                    nxt = getattr(obj, "ag_await", None)
            if frame is None:
                break
            frames.append(frame)
            if not found:
                if frame.f_code is self.code:
                    start = frame.f_locals.get("t")
                    if start is None or now_ns - start < SLOW_NS:  # type: ignore[operator]
                        return None
                    return (frames, nxt) if nxt is not None else None
                if depth >= HEAD_DEPTH:
                    return None
            if nxt is None:
                break
            obj = nxt
        return (frames, obj) if found else None

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


_by_codes: Dict[Tuple[int, ...], Tuple[str, int, List[Any]]] = {}  # see classify


def classify(frames: List[Any], awaited: Any) -> Tuple[str, Optional[Tuple[Any, str]], Optional[str]]:
    """The kind of wait a chain ends in, the HTTP pool it waits on (with its kind) when it does, and
    the innermost app frame ("file:line function").

    What the frames' code says is cached per chain of code objects (held by the cache, so their ids
    stay theirs): requests of one route wait in the same chains, and reading every frame's names
    for each of them, every walk, cost ≈ 0.1 ms a request.
    """
    codes = [f.f_code for f in frames]
    key = tuple(map(id, codes))
    known = _by_codes.get(key)
    if known is None:
        if len(_by_codes) >= 5_000:
            _by_codes.clear()
        known = _by_codes[key] = (*_by_names([(c.co_filename, c.co_name) for c in codes]), codes)
    kind, app = known[0], known[1]
    site = None
    if app >= 0:
        f = frames[app]
        site = f"{f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}"
    pool = None
    if kind == "http":
        kind, pool = _http(frames)
    elif kind == "lock":
        kind = LOCKS.get(type(frames[-1].f_locals.get("self")).__name__, "lock")
    elif kind in ("sleep", "other") and _is_executor_future(awaited):
        kind = "executor"
    return kind, pool, site


def _by_names(names: List[Tuple[str, str]]) -> Tuple[str, int]:
    """The kind of wait as far as the chain's files and functions say ("http" and "lock" need a look at
    the frames), and the index of its innermost app frame (-1 when none)."""
    app = next((i for i in range(len(names) - 1, -1, -1) if not stacks.is_library(names[i][0])), -1)
    path, func = names[-1]
    if any(_part("httpcore", p) or _part("aiohttp", p) for p, _ in names):
        return "http", app
    if any(_part(lib, p) for p, _ in names for lib in ("sqlalchemy", "asyncpg", "aiosqlite", "psycopg", "databases")):
        queued = path.endswith(_SEP + "queues.py") or any(
            _part("asyncpg", p) and p.endswith("pool.py") and n in ("_acquire", "acquire") for p, n in names)
        return ("db-pool-acquire" if queued else "db-statement"), app
    if any(_part("redis", p) for p, _ in names):  # redis-py: a pool's connection, else a command's reply
        return ("redis-pool-acquire" if any(n == "get_connection" for _, n in names) else "redis-command"), app
    if path.endswith(("locks.py", "_synchronization.py")):
        return "lock", app
    if path.endswith(_SEP + "queues.py"):
        return "queue", app
    if any(_part("anyio", p) and n in ("run_sync", "run_sync_in_worker_thread") for p, n in names):
        return "threadpool", app
    if func == "sleep" and path.endswith("tasks.py"):
        return "sleep", app
    return "other", app


def _http(frames: List[Any]) -> Tuple[str, Optional[Tuple[Any, str]]]:
    """Waiting for an outbound HTTP pool's connection or for the response, and the pool."""
    http = [(f.f_code.co_filename, f.f_code.co_name, f) for f in frames
            if _part("httpcore", f.f_code.co_filename) or _part("aiohttp", f.f_code.co_filename)]
    pool = next(((f.f_locals.get("self"), "httpcore") for p, n, f in http
                 if n == "handle_async_request" and p.endswith("connection_pool.py")), None) or next(
        ((f.f_locals.get("self"), "aiohttp") for p, n, f in http if n == "connect" and p.endswith("connector.py")),
        None)
    acquiring = any(n in ("wait_for_connection", "_wait_for_available_connection") for _, n, _ in http) or (
        pool is not None and pool[1] == "aiohttp" and not any(n == "_create_connection" for _, n, _ in http))
    return ("http-pool-acquire" if acquiring else "http-response"), pool


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
    """Every ThreadPoolExecutor that has threads, found from its workers: size, busy, queued.

    A worker is busy unless its innermost frame is ``_worker`` itself, blocked on the queue: the
    executor's idle semaphore counts completions, not idle threads, and reads 0 busy under a queue.
    """
    module = sys.modules.get("concurrent.futures.thread")
    if module is None:
        return []
    worker = getattr(module, "_worker", None)
    frames = sys._current_frames()
    seen: Dict[int, Any] = {}
    busy: Dict[int, int] = {}
    for t in threading.enumerate():
        if getattr(t, "_target", None) is worker and getattr(t, "_args", None):
            ex = t._args[0]()  # a weak reference to its executor
            if ex is not None:
                seen[id(ex)] = ex
                frame = frames.get(t.ident or 0)
                idle = frame is not None and frame.f_code is worker.__code__
                busy[id(ex)] = busy.get(id(ex), 0) + (not idle)
    out = []
    for key, ex in seen.items():
        queued = ex._work_queue.qsize()
        threads = len(ex._threads)
        out.append({"name": ex._thread_name_prefix or "ThreadPoolExecutor", "max_workers": ex._max_workers,
                    "threads": threads, "busy": threads if queued else busy[key], "queued": queued})
    return out
