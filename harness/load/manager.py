"""Starts K driver processes, hands each a shard of the load, and reads their streams.

The shard plan and the JSON-lines records (``records.ShardPlan`` in, ``records.DriverRecord``
out) are the only contract between the manager and a driver, so a driver could run anywhere
that can send lines back.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from harness.config import RequestSpec, Scenario
from harness.errors import DriverError
from harness.processes import spawn, stop_group
from harness.records import DriverDone, DriverFault, DriverRecord, RequestWire, ShardPlan, driver_record
from harness.shapes import closed_shape, open_shape

DRIVER_MODULE = "harness.load.driver"


def default_drivers(cpus: int | None = None) -> int:
    """Driver processes for this host: a quarter of its cores (at least one), leaving the rest to the app."""
    return max(1, math.ceil((cpus or os.cpu_count() or 1) / 4))


def request_bytes(req: RequestSpec, host: str, port: int) -> str:
    """The HTTP/1.1 request as it goes on the wire (latin-1 text)."""
    body = req.body.encode("utf-8")
    lines = [f"{req.method} {req.path} HTTP/1.1", f"Host: {host}:{port}", "User-Agent: fastapi-harness"]
    lines += [f"{k}: {v}" for k, v in req.headers.items()]
    if body or req.method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    head = "\r\n".join(lines) + "\r\n\r\n"
    return (head.encode("latin-1", "replace") + body).decode("latin-1")


def weighted_cycle(weights: list[int]) -> list[int]:
    """Request indices in smooth weighted round-robin order: the mix is exact over every cycle."""
    g = math.gcd(*weights)
    w = [x // g for x in weights]
    total = sum(w)
    current = [0] * len(w)
    order = []
    for _ in range(total):
        for i, x in enumerate(w):
            current[i] += x
        best = max(range(len(w)), key=lambda i: current[i])
        current[best] -= total
        order.append(best)
    return order


def shard_plans(scenario: Scenario, host: str, port: int, t0: float, drivers: int,
                start_s: float = 0.0, jtl_dir: Path | None = None) -> list[ShardPlan]:
    """One plan per driver process; together they make the scenario's load exactly.

    Seconds are counted from ``t0``; the load itself begins ``start_s`` later (a diagnose step).
    """
    load = scenario.load
    closed = load.model == "closed"
    drivers = max(1, min(drivers, load.users)) if closed else drivers
    requests = tuple(RequestWire(r.label, request_bytes(r, host, port), f"http://{host}:{port}{r.path}")
                     for r in scenario.requests)

    def plan(k: int, **shard: Any) -> ShardPlan:
        jtl = str(jtl_dir / f"driver-{k}-{int(start_s)}.jtl.part") if jtl_dir is not None else ""
        return ShardPlan(driver=k, drivers=drivers, host=host, port=port, t0=t0, start_s=start_s, model=load.model,
                         timeout_s=load.timeout_s, requests=requests,
                         cycle=tuple(weighted_cycle([r.weight for r in scenario.requests])), loops=load.loops,
                         duration_s=load.duration_s, think_time_s=load.think_time_s, jtl=jtl, **shard)

    if closed:
        users = closed_shape(load)
        return [plan(k, user_offsets=tuple(round(start_s + users.start_offset(u), 6)
                                           for u in range(k, load.users, drivers))) for k in range(drivers)]
    rate = open_shape(load).scaled(1.0 / drivers)
    connections = load.connections or 10_000
    # phase staggers the shards so their arrivals interleave
    return [plan(k, points=tuple((t + start_s, r) for t, r in rate.points), connections=max(1, connections // drivers),
                 phase=k / drivers) for k in range(drivers)]


class DriverFleet:
    """Owns the driver processes: start, stream records to ``on_record``, stop, always reap.

    Use as a context manager; leaving it (normally, on error or on Ctrl-C) ends every driver.
    """

    def __init__(self, plans: list[ShardPlan], on_record: Callable[[DriverRecord], None], log_dir: Path):
        self.plans = plans
        self.on_record = on_record
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []
        self.threads: list[threading.Thread] = []
        self.done: set[int] = set()
        self.errors: list[str] = []
        self._lock = threading.Lock()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def __enter__(self) -> "DriverFleet":
        try:
            for plan in self.plans:
                self._start(plan)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _start(self, plan: ShardPlan) -> None:
        k = plan.driver
        stderr = open(self.log_dir / f"driver-{k}.stderr.log", "wb")
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])
            ),
        }
        # its own session: Ctrl-C reaches us, and we stop them in order; SIGKILL if we die first
        proc = spawn([sys.executable, "-m", DRIVER_MODULE], death_signal=signal.SIGKILL, stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, stderr=stderr, env=env)
        stderr.close()
        self.procs.append(proc)
        proc.stdin.write((json.dumps(plan.to_json()) + "\n").encode())  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        t = threading.Thread(target=self._read, args=(k, proc), name=f"driver-{k}-reader", daemon=True)
        t.start()
        self.threads.append(t)

    def _read(self, k: int, proc: subprocess.Popen) -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            try:
                record = driver_record(json.loads(line))
            except ValueError:
                continue
            if isinstance(record, DriverFault):
                self.errors.append(f"driver {k}: {record.message}")
            with self._lock:
                self.on_record(record)
            if isinstance(record, DriverDone):
                self.done.add(k)

    def finished(self) -> bool:
        """True once every driver has reported done (or exited)."""
        return all(p.poll() is not None for p in self.procs) or len(self.done) == len(self.procs)

    def failed(self) -> str | None:
        """Why a driver failed, with its stderr tail; None while all are healthy."""
        for plan, p, reader in zip(self.plans, self.procs, self.threads):
            k, rc = plan.driver, p.poll()  # a fleet on a load node runs drivers 3 and 7, say
            if rc is None or (rc == 0 and (k in self.done or reader.is_alive())):
                continue
            tail = (self.log_dir / f"driver-{k}.stderr.log").read_text(errors="replace").strip().splitlines()[-5:]
            return f"driver {k} exited with code {rc} before finishing: " + " | ".join(tail or self.errors)
        return None

    def stop(self) -> None:
        """Ask every driver to stop early; they flush what they measured and exit."""
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.stdin.write(b"stop\n")  # type: ignore[union-attr]
                    p.stdin.flush()  # type: ignore[union-attr]
                except OSError:
                    pass

    def close(self, grace_s: float = 5.0) -> None:
        """Stop, wait, then kill: no driver outlives the fleet."""
        self.stop()
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=grace_s)  # they flush what they measured first
            stop_group(p, grace_s=1.0)
        for t in self.threads:
            t.join(timeout=2.0)
        for p in self.procs:
            for f in (p.stdin, p.stdout):
                try:
                    f.close()  # type: ignore[union-attr]
                except OSError:
                    pass


def check_driver(fleet: DriverFleet) -> None:
    """Raise DriverError when a driver died."""
    why = fleet.failed()
    if why:
        raise DriverError(f"{why}; see driver-*.stderr.log in the run directory")
