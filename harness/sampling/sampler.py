"""A thread that samples the processes of a run with psutil, re-listing the server tree each tick.

uvicorn and gunicorn respawn workers, so PIDs are never assumed stable: every tick asks
the master for its children again, and a PID that appears or vanishes becomes an event.
"""

from __future__ import annotations

import collections
import os
import resource
import threading
import time
from typing import Callable

import psutil

from harness.records import Event, ForeignProcess, ProcessSample, Sample
from harness.sampling.host import accept_queue, listen_counters

CONN_EVERY_S = 1.0  # listing TCP connections reads /proc/net/tcp: once a second is plenty
HOST_BUSY_FOR_FOREIGN = 0.85  # host CPU share from which processes outside the run are looked at
TOP_FOREIGN = 5
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Sampler(threading.Thread):
    """Calls ``on_sample(Sample)`` every ``interval_s`` and ``on_event(Event)`` on worker churn.

    ``processes()`` says which processes to sample now, with their roles (the target's, then the
    drivers'); it is asked again on every tick.
    """

    def __init__(
        self,
        processes: Callable[[], list[tuple[int, str]]],
        t0: float,
        interval_s: float,
        on_sample: Callable[[Sample], None],
        on_event: Callable[[Event], None],
        db_port: int | None = None,
        remote: Callable[[], list[ProcessSample]] = list,
    ):
        super().__init__(name="sampler", daemon=True)
        self.processes = processes
        self.t0 = t0
        self.interval_s = interval_s
        self.on_sample = on_sample
        self.on_event = on_event
        self.db_port = db_port
        self.remote = remote  # samples of processes on other machines, from their agents
        self._halt = threading.Event()
        self._procs: dict[int, psutil.Process] = {}
        self._workers_seen: set[int] = set()
        self._last_conns = 0.0
        self._totals: dict[tuple[str, int], tuple[float, float]] = {}  # (what, pid) → (when, seconds) last read
        self._others: dict[int, psutil.Process] = {}  # processes outside the run, while the host is busy
        self.errors: collections.Counter[str] = collections.Counter()
        self._listen_ports: set[int] = set()  # the server's (and proxy's) listening ports, seen once a second
        self._listen_last: dict[str, int] = {}

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=5.0)

    def run(self) -> None:
        psutil.cpu_percent(percpu=True)
        next_tick = time.monotonic()
        while not self._halt.is_set():
            try:
                self.on_sample(self.sample())
            except Exception as e:  # a sampling hiccup must never end the run
                self.errors[type(e).__name__] += 1
            next_tick += self.interval_s
            self._halt.wait(max(0.0, next_tick - time.monotonic()))

    def _proc(self, pid: int) -> psutil.Process:
        p = self._procs.get(pid)
        if p is None:
            p = self._procs[pid] = psutil.Process(pid)
            p.cpu_percent()
        return p

    def sample(self) -> Sample:
        now = time.time()
        with_conns = now - self._last_conns >= CONN_EVERY_S
        if with_conns:
            self._last_conns = now
        procs = []
        live: set[int] = set()
        for pid, role in self.processes():
            try:
                procs.append(self._measure(self._proc(pid), role, with_conns))
                live.add(pid)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                self._procs.pop(pid, None)
            except psutil.AccessDenied:
                self.errors["AccessDenied"] += 1
        procs += self.remote()
        workers = {p.pid for p in procs if p.role == "worker"}
        t = round(now - self.t0, 3)
        for pid in sorted(workers - self._workers_seen):
            if self._workers_seen:
                self.on_event(Event(t, "worker-started", pid=pid))
        for pid in sorted(self._workers_seen - workers):
            self.on_event(Event(t, "worker-exited", pid=pid))
        self._workers_seen = workers or self._workers_seen
        for pid in list(self._procs):
            if pid not in live:
                self._procs.pop(pid, None)
        host = tuple(round(x / 100.0, 3) for x in psutil.cpu_percent(percpu=True))
        foreign = self._foreign({p.pid for p in procs}, host) if with_conns else None
        return Sample(t, tuple(procs), host, foreign, self._listen() if with_conns else None,
                      self._steal() if with_conns else None)

    def _steal(self) -> float | None:
        """Cores of this (virtual) machine the hypervisor ran other machines on since the last read."""
        steal = getattr(psutil.cpu_times(), "steal", None)
        rate = self._rate(("steal", 0), steal) if steal is not None else None
        return round(rate, 3) if rate is not None else None

    def _listen(self) -> dict[str, int] | None:
        """Overflowed accept queues since the last reading, and the server's longest accept queue now."""
        now = listen_counters()
        last, self._listen_last = self._listen_last, now
        if not now or not last:
            return None
        out = {k: max(0, v - last.get(k, v)) for k, v in now.items()}
        queued = accept_queue(self._listen_ports)
        if queued is not None:
            out["queued"] = queued
        return out

    def _foreign(self, ours: set[int], host: tuple[float, ...]) -> tuple[ForeignProcess, ...] | None:
        """The processes outside the run that used the most CPU since the last look, while the host is
        busy (None when it is not: then nobody is looked at, which costs nothing)."""
        if not host or sum(host) / len(host) < HOST_BUSY_FOR_FOREIGN:
            self._others.clear()
            return None
        seen = []
        for p in psutil.process_iter(["name"]):
            if p.pid in ours or p.pid == 0:
                continue
            known = self._others.get(p.pid)
            try:
                if known is None:
                    self._others[p.pid] = p
                    p.cpu_percent()  # primes it: its first figure comes next second
                    continue
                cpu = known.cpu_percent() / 100.0
            except psutil.Error:
                self._others.pop(p.pid, None)
                continue
            if cpu >= 0.01:
                seen.append(ForeignProcess(p.pid, p.info["name"] or "?", round(cpu, 3)))
        return tuple(sorted(seen, key=lambda f: -f.cpu)[:TOP_FOREIGN])

    def _runq(self, pid: int) -> float | None:
        """Seconds per second the process's threads waited runnable for a CPU since the last read."""
        total = 0
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            return None
        rate = self._rate(("runq", pid), total / 1e9)
        return round(rate, 4) if rate is not None else None

    def _reaped_cpu(self, p: psutil.Process) -> float:
        """Cores used since the last read by the process's children that have exited (a database
        server's parallel query workers and closed backends live less than a second: the server's
        own figures must include them, or the host looks busy with somebody else's work)."""
        times = p.cpu_times()
        return self._rate(("reaped", p.pid), times.children_user + times.children_system) or 0.0

    def _main_cpu(self, pid: int) -> float | None:
        """Cores its main thread used since the last read (/proc/PID/task/PID/stat)."""
        try:
            with open(f"/proc/{pid}/task/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            ticks = int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            return None
        rate = self._rate(("main", pid), ticks / CLOCK_TICKS)
        return round(rate, 4) if rate is not None else None

    def _rate(self, key: tuple[str, int], total: float) -> float | None:
        """Per second, how much a running ``total`` (seconds of something) grew since its last reading;
        None at the first."""
        now = time.monotonic()
        last = self._totals.get(key)
        self._totals[key] = (now, total)
        if last is None or now <= last[0]:
            return None
        return max(0.0, total - last[1]) / (now - last[0])

    def _measure(self, p: psutil.Process, role: str, with_conns: bool) -> ProcessSample:
        with p.oneshot():
            if p.status() == psutil.STATUS_ZOMBIE:  # exited, not yet reaped by its parent: gone for us
                raise psutil.ZombieProcess(p.pid)
            cpu, rss, fds = p.cpu_percent() / 100.0, p.memory_info().rss, p.num_fds()
            if role == "database":
                cpu += self._reaped_cpu(p)
        try:
            fd_limit: int | None = p.rlimit(resource.RLIMIT_NOFILE)[0]
        except (psutil.AccessDenied, AttributeError):
            fd_limit = None
        tcp = db_conns = runq = main_cpu = None
        if with_conns:
            conns = p.net_connections(kind="tcp")
            tcp = dict(collections.Counter(c.status for c in conns))
            if role in ("master", "worker", "proxy"):
                self._listen_ports.update(c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN and c.laddr)
            if self.db_port and role != "driver":
                db_conns = sum(1 for c in conns if c.raddr and c.raddr.port == self.db_port)
            runq = self._runq(p.pid) if role != "driver" else None
            main_cpu = self._main_cpu(p.pid) if role == "worker" else None
        return ProcessSample(p.pid, role, round(cpu, 4), round(rss / 2**20, 2), fds, fd_limit, tcp, db_conns, runq,
                             main_cpu)
