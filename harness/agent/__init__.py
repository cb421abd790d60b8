"""The in-process agent: runs inside each server worker, in the app's own interpreter.

Standard library only, Python 3.9+, relative imports only: the launcher copies this package
into the run directory as ``fastapi_harness_agent`` and puts it on the app's path, so
nothing is installed into the app's environment. What the app happens to have (anyio,
SQLAlchemy, pyinstrument, yappi) is feature-detected.

It shares a stream format with the harness, not code (the harness reads it with
``harness.records.agent_record``; a test runs this writer against that reader). Each worker PID appends
``agent-<pid>.jsonl`` in the run directory, one JSON object per line, written by the
agent's own thread at least 10 times a second — or, for an app the harness did not boot
(``python -m fastapi_harness_agent --sink tcp://…``, ``attach``), sends the same lines to the
harness's sink, with a ``{"type": "proc", "t", "cpu_s", "main_cpu_s", "rss_mb", "fds", "fd_limit",
"threads"}`` line once a second that the sink keeps for itself (``sink.py``):

``{"type": "hello", "pid", "t", "python", "versions": {...}, "loop": str, "hotspots": str, "watchdog": str,
  "cpu_timer": str, "signal_relay": bool, "options": {...}, "middleware": ["module.BaseHTTPMiddlewareSubclass",
  ...]}``
    once, when the worker serves its first ASGI event.
``{"type": "tick", "t", "seq", "lag_ms": [float], "inflight": int, "threadpool": {...}|null,
  "pools": [{"id", "size", "checked_out", "overflow", "max_overflow", "timeout_s", "waiting", "acquire": hist,
  "hold_ms", "returns", "timeouts", "holds": {holder: [returns, ms held, ms its statements ran]}}],
  "gc": {"pause_ms", "collections": [g0, g1, g2], "full": [[epoch start, ms, collected], ...]},
  "statements": [{"sql", "site", "n", "ms", "hist", "routes": {route: [n, ms]}}],
  "db_errors": {"too-many-connections" | DBAPI error type: n}, "memory": {"blocks", "malloc"} (once a second),
  "hot_ms": {category: ms}, "hot_frames_ms": {"category|file:line function": ms},
  "pool_ms": {...}, "pool_frames_ms": {...}, "inflight": int,
  "routes": {route: {"n", "errors", "hist"}}, "exceptions": {route: {type: n}},
  "waits_ms": {"kind|file:line function": ms}, "http_pools": [{"id", "kind", "site", "limit", "in_use",
  "waiting"}], "executors": [{"name", "max_workers", "threads", "busy", "queued"}]}``
    every 100 ms; counters are deltas over the interval, gauges are the current value.
    ``hot_*`` is the loop thread's CPU time by what it was running (SIGPROF samples weighted
    by CPU time); ``pool_*`` is the threadpool threads' busy wall time, sampled by a thread.
    A route's ``errors`` are requests that raised through the app (status codes are seen
    by the driver, outside). ``routes`` and ``exceptions`` count the interval before the
    previous one (the loop counts them; the agent's thread reads a tally a tick after
    taking it away from the loop, see ``middleware.RouteStats``). ``waits_ms`` is where the
    in-flight requests slower than 5 ms waited, by kind and the app's line (``waits.py``).
``{"type": "stall", "t_start", "duration_ms", "class", "site": {...}|null, "stack": [...], "samples"}``
    one per event-loop stall longer than the threshold.
``{"type": "gap", "lost", "error"}``
    after writes failed for a while: how many records were lost.
``{"type": "profile", "id", "seconds", "files": [...], "errors": {profiler: message}}``
    after a profile window asked for through ``agent-control.json``.

Histograms (``hist``) use the harness's log-linear buckets over integer microseconds:
``{"b": [[bucket, count], ...], "max": us}``.
"""


def attach(app, sink, **options):  # type: ignore[no-untyped-def]
    """``app`` with the agent inside, streaming to a harness that did not start it (``boot.attach``)."""
    from .boot import attach as attach_

    return attach_(app, sink, **options)
