"""Probes of what the app happens to use: anyio's thread limiter, SQLAlchemy and redis-py pools, the GC.

Each is feature-detected; a probe whose library is missing reads as None / empty.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import threading
import time
import weakref
from typing import Any, Dict, List, Optional, Tuple

from . import hist, statements

VERSIONED = ("fastapi", "starlette", "pydantic", "anyio", "sqlalchemy", "uvicorn", "gunicorn", "uvloop")


def versions() -> Dict[str, str]:
    """Versions of the app's key packages, from its own environment."""
    out = {}
    try:
        from importlib import metadata
    except ImportError:  # pragma: no cover - Python < 3.8
        return out
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # the app does not use it
    return out


class ThreadpoolProbe:
    """anyio's default thread limiter (what Starlette runs `def` endpoints on)."""

    def __init__(self) -> None:
        self.limiter: Any = None

    def attach(self) -> None:
        """Find the limiter; must run inside a task on the worker's loop (the middleware does)."""
        if self.limiter is not None or "anyio" not in sys.modules:
            return
        try:
            from anyio import to_thread

            self.limiter = to_thread.current_default_thread_limiter()
        except Exception:
            self.limiter = None

    def read(self) -> Optional[Dict[str, Any]]:
        lim = self.limiter
        if lim is None:
            return None
        try:
            waiting = lim.statistics().tasks_waiting
        except Exception:
            waiting = None
        return {"total": lim.total_tokens, "borrowed": lim.borrowed_tokens, "waiting": waiting}


class _Pools:
    """The pools a probe has seen: id(pool) → (weak reference to it, its stats). Not a
    WeakKeyDictionary, whose lookups make a weak reference each (one per checkout) and whose
    iteration is slow Python. ``fresh()`` makes a pool's first stats."""

    def __init__(self, fresh: Any) -> None:
        self.entries: Dict[int, Tuple[Any, Dict[str, Any]]] = {}
        self.fresh = fresh
        self.lock = threading.Lock()  # pools are used from the request threads too (sync engines)

    def stats(self, pool: Any) -> Dict[str, Any]:
        entry = self.entries.get(id(pool))
        if entry is None or entry[0]() is not pool:  # new, or a new pool where a dead one was
            with self.lock:
                entry = self.entries.get(id(pool))
                if entry is None or entry[0]() is not pool:
                    entry = self.entries[id(pool)] = (weakref.ref(pool), {
                        "id": f"{type(pool).__name__}@{id(pool):x}", **self.fresh()})
        return entry[1]

    def live(self) -> List[Tuple[Any, Dict[str, Any]]]:
        """(pool, stats) of each pool still alive; the dead ones are forgotten."""
        out = []
        for key, (ref, stats) in list(self.entries.items()):
            pool = ref()
            if pool is None:
                with self.lock:
                    if self.entries.get(key, (None,))[0] is ref:
                        del self.entries[key]
                continue
            out.append((pool, stats))
        return out


class PoolProbe:
    """Every SQLAlchemy QueuePool in the process: size, overflow, checked out, waiting, acquire and
    hold times (a wait that ends in the pool's timeout counts as a wait too), and per holder (the
    request's route, else the app's line that checked the connection out; ``statements.origin``)
    how long connections were held and how much of that their statements ran."""

    def __init__(self) -> None:
        self.pools = _Pools(lambda: {"acquire": hist.Histogram(), "hold_ms": 0.0, "returns": 0, "timeouts": 0,
                                     "waiting": 0, "holds": {}})
        self.installed = False
        self.checked_out_at: Dict[int, Tuple[float, str]] = {}
        self.routes: Any = None  # the agent middleware, set by it

    def install(self) -> None:
        """Wrap QueuePool's get/return once SQLAlchemy is imported (checked again on every read)."""
        if self.installed or "sqlalchemy" not in sys.modules:
            return
        try:
            from sqlalchemy import exc
            from sqlalchemy.pool import QueuePool
        except Exception:
            return
        self.installed = True
        probe = self
        original_get, original_return = QueuePool._do_get, QueuePool._do_return_conn

        def _do_get(pool: Any) -> Any:
            stats = probe._stats(pool)
            t = time.perf_counter()
            stats["waiting"] += 1
            try:
                record = original_get(pool)
            except exc.TimeoutError:
                stats["timeouts"] += 1
                raise
            finally:
                stats["waiting"] -= 1
                stats["acquire"].record(int((time.perf_counter() - t) * 1e6))
            try:
                site, route = statements.origin(sys._getframe(1), probe.routes)
            except Exception:  # never into the app's checkout
                site = route = None
            record.info.pop(statements.RAN, None)
            probe.checked_out_at[id(record)] = (time.perf_counter(), route or site or "")
            return record

        def _do_return_conn(pool: Any, record: Any) -> Any:
            taken = probe.checked_out_at.pop(id(record), None)
            if taken is not None:
                stats = probe._stats(pool)
                ms = (time.perf_counter() - taken[0]) * 1000
                stats["hold_ms"] += ms
                stats["returns"] += 1
                if taken[1]:
                    held = stats["holds"].setdefault(taken[1], [0, 0.0, 0.0])
                    held[0] += 1
                    held[1] += ms
                    held[2] += record.info.pop(statements.RAN, 0.0) * 1000
            return original_return(pool, record)

        QueuePool._do_get = _do_get
        QueuePool._do_return_conn = _do_return_conn

    def _stats(self, pool: Any) -> Dict[str, Any]:
        return self.pools.stats(pool)

    def read(self) -> List[Dict[str, Any]]:
        self.install()
        out = []
        for pool, stats in self.pools.live():
            acquire = stats["acquire"]
            if acquire.counts:  # else left in place: an idle pool's tick makes no new histogram
                stats["acquire"] = hist.Histogram()
                acquired = acquire.to_json()
            else:  # not acquire.to_json(): a checkout landing after the test would be sent now and again next tick
                acquired = {"b": [], "max": 0}
            hold, returns, timeouts, holds = stats["hold_ms"], stats["returns"], stats["timeouts"], stats["holds"]
            stats["hold_ms"], stats["returns"], stats["timeouts"], stats["holds"] = 0.0, 0, 0, {}
            try:
                gauges = {"size": pool.size(), "checked_out": pool.checkedout(), "overflow": pool.overflow(),
                          "max_overflow": getattr(pool, "_max_overflow", 0), "timeout_s": pool.timeout(),
                          "waiting": stats["waiting"]}
            except Exception:
                gauges = {}
            out.append({"id": stats["id"], **gauges, "acquire": acquired, "hold_ms": round(hold, 3),
                        "returns": returns, "timeouts": timeouts,
                        "holds": {who: [n, round(ms, 3), round(ran, 3)] for who, (n, ms, ran) in holds.items()}})
        return out


class GcProbe:
    """Pause time and collections per generation, from gc.callbacks, and each full (generation 2)
    collection: when it started, how long it took, what it freed."""

    MAX_FULL = 100  # full collections kept per tick

    def __init__(self) -> None:
        self.pause_s = 0.0
        self.collections = [0, 0, 0]
        self.full: List[List[float]] = []  # [epoch start, ms, objects collected]
        self._start = 0.0

    def install(self) -> None:
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: Dict[str, Any]) -> None:
        # called twice per collection (often thousands of times a second): keep it minimal;
        # collections never nest, whatever thread triggers them, since they hold the GIL
        if phase == "start":
            self._start = time.perf_counter()
        else:
            took = time.perf_counter() - self._start
            self.pause_s += took
            generation = info["generation"]
            self.collections[generation] += 1
            if generation == 2 and len(self.full) < self.MAX_FULL:
                self.full.append([time.time() - took, round(took * 1000, 3), info.get("collected", 0)])

    def read(self) -> Dict[str, Any]:
        pause, self.pause_s = self.pause_s, 0.0
        cols, self.collections = self.collections, [0, 0, 0]
        full, self.full = self.full, []
        return {"pause_ms": round(pause * 1000, 3), "collections": cols, "full": full}


class RedisPoolProbe:
    """Every redis-py asyncio connection pool the app gets connections from: in use against
    ``max_connections``, how many requests are waiting for one (a ``BlockingConnectionPool``
    makes them wait; the plain pool refuses with "Too many connections"), acquire times, and
    the errors that ended an acquire."""

    def __init__(self) -> None:
        self.pools = _Pools(lambda: {"acquire": hist.Histogram(), "waiting": 0, "errors": {}})
        self.installed = False

    def install(self) -> None:
        """Wrap ``get_connection`` of the pool classes once redis-py's asyncio client is imported
        (``BlockingConnectionPool`` has its own, which does not call the base class's)."""
        if self.installed or "redis.asyncio.connection" not in sys.modules:
            return
        try:
            from redis.asyncio import connection
        except Exception:
            return
        self.installed = True
        for cls in (connection.ConnectionPool, getattr(connection, "BlockingConnectionPool", None)):
            if cls is not None and "get_connection" in vars(cls):
                cls.get_connection = self._wrap(vars(cls)["get_connection"])

    def _wrap(self, original: Any) -> Any:
        probe = self

        async def get_connection(pool: Any, *args: Any, **kwargs: Any) -> Any:
            stats = probe._stats(pool)
            t = time.perf_counter()
            stats["waiting"] += 1
            try:
                return await original(pool, *args, **kwargs)
            except Exception as e:
                text = str(e)
                kind = ("too-many-connections" if "Too many connections" in text else
                        "pool-timeout" if "No connection available" in text else type(e).__name__)
                stats["errors"][kind] = stats["errors"].get(kind, 0) + 1
                raise
            finally:
                stats["waiting"] -= 1
                stats["acquire"].record(int((time.perf_counter() - t) * 1e6))

        return get_connection

    def _stats(self, pool: Any) -> Dict[str, Any]:
        return self.pools.stats(pool)

    def read(self) -> List[Dict[str, Any]]:
        self.install()
        out = []
        for pool, stats in self.pools.live():
            acquire, stats["acquire"] = stats["acquire"], hist.Histogram()
            errors, stats["errors"] = stats["errors"], {}
            try:
                in_use, limit = len(pool._in_use_connections), pool.max_connections
            except Exception:
                in_use = limit = None
            out.append({"id": stats["id"], "in_use": in_use, "max": limit, "waiting": stats["waiting"],
                        "acquire": acquire.to_json(), "errors": errors})
        return out


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo2() -> Any:
    try:
        fn = ctypes.CDLL(None).mallinfo2  # glibc 2.33 and later
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    return fn


_MALLINFO2 = _mallinfo2()


def memory() -> Dict[str, int]:
    """What the process has allocated and still holds: the interpreter's small-object blocks
    (pymalloc, objects up to 512 bytes) and, with glibc, the bytes malloc has handed out and not
    got back (larger objects, buffers, C extensions). RSS beyond these is memory the allocator
    keeps (fragmentation) or that was mapped outside malloc."""
    out = {"blocks": sys.getallocatedblocks()}
    if _MALLINFO2 is not None:
        info = _MALLINFO2()
        out["malloc"] = info.uordblks + info.hblkhd
    return out
