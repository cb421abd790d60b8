"""Probes of what the app happens to use: anyio's thread limiter, SQLAlchemy pools, the GC.

Each is feature-detected; a probe whose library is missing reads as None / empty.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
import weakref
from typing import Any, Dict, List, Optional, Tuple

from . import hist

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


class PoolProbe:
    """Every SQLAlchemy QueuePool in the process: size, overflow, checked out, acquire and hold times."""

    def __init__(self) -> None:
        # id(pool) → (weak reference to it, its stats); not a WeakKeyDictionary, whose lookups
        # make a weak reference each (one per checkout) and whose iteration is slow Python
        self.pools: Dict[int, Tuple[Any, Dict[str, Any]]] = {}
        self.installed = False
        self.lock = threading.Lock()
        self.checked_out_at: Dict[int, float] = {}

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
            t = time.perf_counter()
            try:
                record = original_get(pool)
            except exc.TimeoutError:
                probe._stats(pool)["timeouts"] += 1
                raise
            now = time.perf_counter()
            stats = probe._stats(pool)
            wait_us = int((now - t) * 1e6)
            stats["acquire"].record(wait_us)
            probe.checked_out_at[id(record)] = now
            return record

        def _do_return_conn(pool: Any, record: Any) -> Any:
            t = probe.checked_out_at.pop(id(record), None)
            if t is not None:
                stats = probe._stats(pool)
                stats["hold_ms"] += (time.perf_counter() - t) * 1000
                stats["returns"] += 1
            return original_return(pool, record)

        QueuePool._do_get = _do_get
        QueuePool._do_return_conn = _do_return_conn

    def _stats(self, pool: Any) -> Dict[str, Any]:
        entry = self.pools.get(id(pool))
        if entry is None or entry[0]() is not pool:  # new, or a new pool where a dead one was
            with self.lock:
                entry = self.pools.get(id(pool))
                if entry is None or entry[0]() is not pool:
                    entry = self.pools[id(pool)] = (weakref.ref(pool), {
                        "id": f"{type(pool).__name__}@{id(pool):x}", "acquire": hist.Histogram(),
                        "hold_ms": 0.0, "returns": 0, "timeouts": 0,
                    })
        return entry[1]

    def read(self) -> List[Dict[str, Any]]:
        self.install()
        out = []
        for key, (ref, stats) in list(self.pools.items()):
            pool = ref()
            if pool is None:
                with self.lock:
                    if self.pools.get(key, (None,))[0] is ref:
                        del self.pools[key]
                continue
            acquire = stats["acquire"]
            if acquire.counts:  # else left in place: an idle pool's tick makes no new histogram
                stats["acquire"] = hist.Histogram()
                acquired = acquire.to_json()
            else:  # not acquire.to_json(): a checkout landing after the test would be sent now and again next tick
                acquired = {"b": [], "max": 0}
            hold, returns, timeouts = stats["hold_ms"], stats["returns"], stats["timeouts"]
            stats["hold_ms"], stats["returns"], stats["timeouts"] = 0.0, 0, 0
            try:
                gauges = {"size": pool.size(), "checked_out": pool.checkedout(), "overflow": pool.overflow(),
                          "max_overflow": getattr(pool, "_max_overflow", 0), "timeout_s": pool.timeout()}
            except Exception:
                gauges = {}
            out.append({"id": stats["id"], **gauges, "acquire": acquired, "hold_ms": round(hold, 3),
                        "returns": returns, "timeouts": timeouts})
        return out


class GcProbe:
    """Pause time and collections per generation, from gc.callbacks."""

    def __init__(self) -> None:
        self.pause_s = 0.0
        self.collections = [0, 0, 0]
        self._start = 0.0

    def install(self) -> None:
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: Dict[str, Any]) -> None:
        # called twice per collection (often thousands of times a second): keep it minimal;
        # collections never nest, whatever thread triggers them, since they hold the GIL
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pause_s += time.perf_counter() - self._start
            self.collections[info["generation"]] += 1

    def read(self) -> Dict[str, Any]:
        pause, self.pause_s = self.pause_s, 0.0
        cols, self.collections = self.collections, [0, 0, 0]
        return {"pause_ms": round(pause * 1000, 3), "collections": cols}
