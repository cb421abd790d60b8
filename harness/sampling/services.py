"""The services beside the app, once a second: nginx's ``stub_status`` and error log, Redis's ``INFO``
(and, in ``database``, PostgreSQL's ``pg_stat_activity``), each on a ``Watcher`` thread."""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable

from harness.cache import command
from harness.errors import HarnessError
from harness.records import CacheSample, ProxySample

# nginx error-log lines, by what they say about the upstreams or the proxy itself
NGINX_ERRORS = (
    ("upstream-connect", re.compile(r"connect\(\) failed|upstream prematurely closed|Connection refused")),
    ("upstream-timeout", re.compile(r"upstream timed out")),
    ("no-live-upstreams", re.compile(r"no live upstreams")),
    ("worker-connections", re.compile(r"worker_connections are not enough")),
    ("too-many-open-files", re.compile(r"Too many open files")),
)
_STUB = re.compile(r"Active connections:\s*(\d+).*?(\d+)\s+(\d+)\s+(\d+)\s*Reading:\s*(\d+)\s*Writing:\s*(\d+)\s*"
                   r"Waiting:\s*(\d+)", re.S)


def nginx_error_kind(line: str) -> str:
    return next((kind for kind, pattern in NGINX_ERRORS if pattern.search(line)), "other")


class Watcher(threading.Thread):
    """Calls ``poll`` at once and then once a second until stopped; the first error ends the watching and is kept, with
    when it came (``failed_t``, seconds since t0), for the run's events."""

    def __init__(self, service: str, t0: float):
        super().__init__(name=f"{service.lower()}-watcher", daemon=True)
        self.service = service  # its name in words: the run's events and the verdict say it
        self.t0 = t0
        self.error = ""
        self.failed_t: float | None = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=5.0)

    def run(self) -> None:
        try:
            # at once, then once a second: a counter's first reading is its baseline, and it must come
            # before the load starts (the session starts watchers a second before it), or the first
            # requests' counts fall into it unseen
            while True:
                t = round(time.time() - self.t0, 3)
                try:
                    self.poll(t)
                except Exception as e:  # the service went away (or never answered)
                    self.error, self.failed_t = str(e) if isinstance(e, HarnessError) else f"{type(e).__name__}: {e}", t
                    return
                if self._halt.wait(1.0):
                    return
        finally:
            self.close()

    def poll(self, t: float) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what ``poll`` opened (on the watcher's own thread)."""


class NginxWatcher(Watcher):
    def __init__(self, status_url: str, error_log: Path, t0: float, on_record: Callable[[ProxySample], None]):
        super().__init__("nginx", t0)
        self.status_url, self.error_log, self.on_record = status_url, error_log, on_record
        self._last: tuple[int, int, int] | None = None  # accepts, handled, requests
        self._log_pos = 0

    def poll(self, t: float) -> None:
        with urllib.request.urlopen(self.status_url, timeout=2.0) as r:
            m = _STUB.search(r.read().decode())
        if m is None:
            raise ValueError(f"{self.status_url} did not answer as stub_status does")
        active, accepts, handled, requests, reading, writing, waiting = map(int, m.groups())
        last, self._last = self._last, (accepts, handled, requests)
        if last is None:
            return
        errors: dict[str, int] = {}
        for line in self._new_log_lines():
            kind = nginx_error_kind(line)
            errors[kind] = errors.get(kind, 0) + 1
        # the poll itself is one of the active and writing connections, and one request of each interval
        self.on_record(ProxySample(t, "nginx", active - 1, reading, writing - 1, waiting,
                                   max(0, requests - last[2] - 1), max(0, (accepts - handled) - (last[0] - last[1])),
                                   errors))

    def _new_log_lines(self) -> list[str]:
        try:
            with open(self.error_log, "rb") as f:
                f.seek(self._log_pos)
                data = f.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        self._log_pos += end
        return [ln for ln in data[:end].decode(errors="replace").splitlines() if "[error]" in ln or "[crit]" in ln
                or "[alert]" in ln or "[warn]" in ln]


class RedisWatcher(Watcher):
    COUNTERS = ("total_commands_processed", "keyspace_hits", "keyspace_misses", "evicted_keys",
                "rejected_connections")

    def __init__(self, address: tuple[str, int], t0: float, on_record: Callable[[CacheSample], None]):
        super().__init__("Redis", t0)
        self.address, self.on_record = address, on_record
        self._last: tuple[float, dict[str, float]] | None = None

    def poll(self, t: float) -> None:
        info = {k: v for k, _, v in (ln.partition(":") for ln in command(self.address, "INFO").decode().splitlines())
                if v}
        now = time.monotonic()
        figures = {k: float(info.get(k, 0)) for k in self.COUNTERS}
        figures["cpu"] = float(info.get("used_cpu_user", 0)) + float(info.get("used_cpu_sys", 0))
        last, self._last = self._last, (now, figures)
        if last is None:
            return
        delta = {k: max(0.0, v - last[1][k]) for k, v in figures.items()}
        self.on_record(CacheSample(
            t, "redis", int(info.get("connected_clients", 0)) - 1, int(info.get("blocked_clients", 0)),
            int(delta["total_commands_processed"]) - 1, int(delta["keyspace_hits"]), int(delta["keyspace_misses"]),
            round(float(info.get("used_memory", 0)) / 2**20, 2), int(delta["evicted_keys"]),
            int(delta["rejected_connections"]), round(delta["cpu"] / max(now - last[0], 1e-3), 4)))
