"""The statements the app sends to its database, timed where they are sent.

SQLAlchemy's ``before/after_cursor_execute`` events on the ``Engine`` class (so every engine,
sync or behind an ``AsyncEngine``) and asyncpg's query methods when the app calls asyncpg
itself. Each statement is normalized (literals and parameters become ``?``, an ``IN`` list one
``?``) and counted per (statement, the app's own line that sent it): calls, total time, a
histogram, and per route the calls and time (the route is read from the agent middleware's
frame up the same stack; a ``def`` endpoint's statements, sent from a worker thread, have
none). At most ``MAX_STATEMENTS`` distinct ones a tick; the rest are summed as ``other``.

Nothing runs here per request: only per statement, which costs a database round trip anyway.
"""

from __future__ import annotations

import re
import sys
import threading
from time import perf_counter
from typing import Any, Dict, List, Optional, Tuple

from . import hist, stacks

MAX_STATEMENTS = 100  # distinct (statement, site) per tick
MAX_SQL = 300  # characters of a normalized statement kept
MAX_DEPTH = 200  # frames walked up from a statement to the request's middleware frame
_KEY = "fastapi_harness_t0"  # the start times' stack in a connection's ``info``
RAN = "fastapi_harness_ran"  # seconds its statements ran since it was checked out, in its ``info``
_LITERALS = re.compile(r"'(?:[^']|'')*'|\$\d+|%\(\w+\)s|%s|(?<![:\w]):\w+|\?|\b\d+(?:\.\d+)?\b")
_IN_LIST = re.compile(r"\(\s*\?(?:\s*,\s*\?)+\s*\)")
_SPACE = re.compile(r"\s+")
_ASYNCPG_METHODS = ("execute", "executemany", "fetch", "fetchrow", "fetchval")
# what a database says when it refuses a connection for having too many (PostgreSQL, MySQL)
_TOO_MANY = ("too many clients", "remaining connection slots", "too many connections")

Origin = Tuple[Optional[str], Optional[str]]  # ("file:line function" of the app's frame, route label)


def normalize(sql: str) -> str:
    """The statement with its literals and parameters as ``?`` (an ``IN`` list as one), one line."""
    text = _IN_LIST.sub("(?)", _LITERALS.sub("?", sql))
    return _SPACE.sub(" ", text).strip()[:MAX_SQL]


def origin(frame: Any, routes: Any) -> Origin:
    """The innermost app frame above ``frame`` and the route of the request it serves.

    SQLAlchemy's asyncio layer runs the driver in a greenlet whose stack ends at the greenlet;
    the awaiting coroutines are on its parent's stack, which is walked next.
    """
    site = route = None
    code = type(routes).__call__.__code__ if routes is not None else None
    hopped = False
    f = frame
    for _ in range(MAX_DEPTH):
        if f is None:
            greenlet = sys.modules.get("greenlet")
            parent = greenlet.getcurrent().parent if greenlet is not None and not hopped else None
            if parent is None:
                break
            f, hopped = parent.gr_frame, True
            continue
        fc = f.f_code
        if fc is code:
            scope = f.f_locals.get("scope")
            if scope is not None and scope.get("type") == "http":
                route = routes.labels.get(routes._key(scope))
            break
        if site is None and not stacks.is_library(fc.co_filename):
            site = f"{fc.co_filename}:{f.f_lineno} {fc.co_name}"
        f = f.f_back
    return site, route


class StatementProbe:
    """Per tick: every (normalized statement, app site) with its calls, time and routes."""

    def __init__(self) -> None:
        self.routes: Any = None  # the agent middleware, set by it
        self.lock = threading.Lock()
        self.current: Dict[Tuple[str, Optional[str]], List[Any]] = {}
        self.normalized: Dict[str, str] = {}
        self.errors: Dict[str, int] = {}  # "too-many-connections" or the DBAPI error's type → count
        self.sqlalchemy = self.asyncpg = False

    def install(self) -> None:
        """Hook the libraries the app has imported by now (called every tick; each once)."""
        if not self.sqlalchemy and "sqlalchemy" in sys.modules:
            self.sqlalchemy = True
            try:
                self._hook_sqlalchemy()
            except Exception:  # a version without these events: no statements from it
                pass
        if not self.asyncpg and "asyncpg" in sys.modules:
            self.asyncpg = True
            try:
                self._hook_asyncpg()
            except Exception:
                pass

    def _hook_sqlalchemy(self) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
            conn.info.setdefault(_KEY, []).append(perf_counter())

        def after(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
            info = conn.info
            started = info.get(_KEY)
            if started:
                took = perf_counter() - started.pop()
                info[RAN] = info.get(RAN, 0.0) + took
                self.record(statement, took, sys._getframe(1))

        def failed(context: Any) -> None:
            self.error(context.original_exception)

        event.listen(Engine, "before_cursor_execute", before)
        event.listen(Engine, "after_cursor_execute", after)
        event.listen(Engine, "handle_error", failed)

    def error(self, exc: BaseException) -> None:
        """A database error seen through SQLAlchemy (connecting included); never raises."""
        try:
            text = str(exc).lower()
            kind = "too-many-connections" if any(m in text for m in _TOO_MANY) else type(exc).__name__
            self.errors[kind] = self.errors.get(kind, 0) + 1
        except Exception:
            pass

    def _hook_asyncpg(self) -> None:
        from asyncpg.connection import Connection

        for name in _ASYNCPG_METHODS:
            original = getattr(Connection, name)
            setattr(Connection, name, self._timed(original))

    def _timed(self, original: Any) -> Any:
        probe = self

        async def timed(conn: Any, query: str, *args: Any, **kwargs: Any) -> Any:
            caller = sys._getframe(1)
            if "sqlalchemy" in caller.f_code.co_filename:  # timed by SQLAlchemy's events already
                return await original(conn, query, *args, **kwargs)
            t = perf_counter()
            try:
                return await original(conn, query, *args, **kwargs)
            finally:
                probe.record(query, perf_counter() - t, sys._getframe())

        timed.__name__ = timed.__qualname__ = original.__name__
        timed.__wrapped__ = original  # type: ignore[attr-defined]
        return timed

    def record(self, sql: str, seconds: float, frame: Any) -> None:
        """One statement that took ``seconds``, sent from the stack above ``frame``; never raises."""
        try:
            site, route = origin(frame, self.routes)
            text = self.normalized.get(sql)
            if text is None:
                text = normalize(sql)
                if len(self.normalized) < 5_000:
                    self.normalized[sql] = text
            us = int(seconds * 1e6)
            with self.lock:
                cur = self.current
                key = (text, site)
                entry = cur.get(key)
                if entry is None:
                    if len(cur) >= MAX_STATEMENTS:
                        key = ("other", None)
                        entry = cur.get(key)
                    if entry is None:
                        entry = cur[key] = [0, 0, hist.Histogram(), {}]
                entry[0] += 1
                entry[1] += us
                entry[2].record(us)
                if route is not None:
                    by_route = entry[3].get(route)
                    if by_route is None:
                        entry[3][route] = [1, us]
                    else:
                        by_route[0] += 1
                        by_route[1] += us
        except Exception:
            pass

    def read_errors(self) -> Dict[str, int]:
        errors, self.errors = self.errors, {}
        return errors

    def read(self) -> List[Dict[str, Any]]:
        self.install()
        with self.lock:
            cur, self.current = self.current, {}
        out = [{"sql": sql, "site": site or "", "n": n, "ms": round(us / 1000, 3), "hist": h.to_json(),
                "routes": {r: [k, round(u / 1000, 3)] for r, (k, u) in by_route.items()}}
               for (sql, site), (n, us, h, by_route) in cur.items()]
        out.sort(key=lambda s: -s["ms"])
        return out
