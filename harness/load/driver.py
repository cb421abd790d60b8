"""A driver process: one shard of the load, on its own event loop (uvloop when present).

Contract with the manager (``python -m harness.load.driver``):

* stdin, first line: the shard's plan (``records.ShardPlan`` as JSON); later
  lines: ``stop`` ends the run early; end of file (the manager died) does too.
* stdout: one JSON object per line —
  a ``records.DriverSecond`` for each second since the shared start instant ``t0`` (epoch
  seconds), a ``DriverDone`` once at the end, or a ``DriverFault`` when the shard could not run.

The hot path is callbacks on an ``asyncio.Protocol`` with httptools parsing: no
coroutine, future or timer per request. The event loop hands received bytes straight to
the parser, whose ``on_message_complete`` (``hotpath.ConnCore``, in C when built) records the
response and, in the common closed-model case, sends the user's next request itself; the
``done`` record says which hot path ran (``"hot_path": "c" | "python"``). In the open model
latency counts from the *scheduled* send time, so a slow server cannot hide queueing (no
coordinated omission).
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import os
import random
import re
import signal
import sys
import time
from functools import partial
from time import perf_counter
from typing import Any

import httptools

from harness.errors import HarnessError
from harness.histogram import Histogram
from harness.load.hotpath import ACCELERATED, OTHER, OUTCOMES, REFUSED, RESET, TIMEOUT, ConnCore, DriverCore, User
from harness.load.jtl import JtlPart
from harness.records import DriverDone, DriverFault, DriverRecord, DriverSecond, ShardPlan
from harness.shapes import OpenShape

RAND = re.compile(r"\{rand:(\d+)-(\d+)\}")  # config.RAND, in the request line
LATE_S = 0.010  # a send this much behind its schedule counts as late
SWEEP_S = 0.1


class Tally:
    """What one driver saw during one second, besides the hot path's tallies (``DriverCore.take``)."""

    __slots__ = ("lag_max", "late", "dropped")

    def __init__(self) -> None:
        self.lag_max = 0.0
        self.late = 0
        self.dropped = 0


class Conn(ConnCore, asyncio.Protocol):
    __slots__ = ("data_received",)

    def __init__(self, driver: "Driver", owner: User | None):
        super().__init__(driver, owner)
        self.parser = httptools.HttpResponseParser(self)
        # received bytes go straight to the C parser; a parse error reaches connection_lost
        self.data_received = self.parser.feed_data
        driver.conns.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.d.open_conns -= 1
        if self.busy:
            self.d.fail(self, OTHER if isinstance(exc, httptools.HttpParserError) else RESET)


class Driver(DriverCore):
    def __init__(self, plan: ShardPlan, loop: asyncio.AbstractEventLoop, out: Any):
        super().__init__(len(plan.requests))
        self.plan = plan
        self.loop = loop
        self.out = out
        self.index = plan.driver
        self.host, self.port = plan.host, plan.port
        self.timeout = plan.timeout_s
        self.requests = [r.wire.encode("latin-1") for r in plan.requests]
        self.cycle = plan.cycle  # request indices in weighted round-robin order
        self.cycle_pos = self.index % len(self.cycle)
        # a path with {rand:LO-HI}: its request is written afresh, with new numbers, each time it is picked
        self.templates = [_template(r) for r in self.requests]
        self.mixed = len(self.cycle) > 1 or any(self.templates)
        self.loops = plan.loops
        self.think = plan.think_time_s
        self.eager = not self.think  # closed users send again as soon as a response completes
        self.cur = Tally()
        self.conns: list[Conn] = []
        self.open_conns = 0
        self.aborted = 0
        self.totals = [0] * len(OUTCOMES)
        self.statuses: collections.Counter[tuple[int, int]] = collections.Counter()  # (request, status) ≥ 400
        self.sent_total = 0
        self.finished = loop.create_future()
        # one clock for everything: perf_counter, anchored to the shared epoch start t0
        self.t0p = perf_counter() + (plan.t0 - time.time())
        self.start_s = plan.start_s  # this shard starts this long after t0 (diagnose steps)
        self.cpu_mark = (perf_counter(), time.process_time())
        self.second = int(self.start_s)
        self.users_active = 0
        self.pending: collections.deque[tuple[float, int]] = collections.deque()
        self.idle: list[Conn] = []
        self.jtl = JtlPart(plan.jtl, [r.label for r in plan.requests], [r.url for r in plan.requests],
                           [len(b) for b in self.requests], self.index) if plan.jtl else None
        if self.jtl is not None:
            self.jtl_rows = self.jtl.rows

    # ---------------------------------------------------------------- sending

    def next_request(self) -> int:
        self.cycle_pos = (self.cycle_pos + 1) % len(self.cycle)
        ri = self.cycle[self.cycle_pos]
        parts = self.templates[ri]
        if parts:
            self.requests[ri] = b"".join(p if isinstance(p, bytes) else b"%d" % random.randint(*p) for p in parts)
        return ri

    def write(self, conn: Conn, ri: int, t_start: float, now: float) -> None:
        conn.busy = True
        conn.ri = ri
        conn.t_start = t_start
        conn.t_sent = now
        try:
            conn.transport.write(self.requests[ri])  # type: ignore[union-attr]
        except RuntimeError:  # uvloop: the peer closed it and connection_lost is still queued
            self.fail(conn, RESET)

    def attempt(self, conn: Conn | None, owner: User | None, ri: int, t_start: float, now: float) -> None:
        """Send on ``conn`` when it is usable, else open a new connection first."""
        self.sent += 1
        self.inflight += 1
        if conn is not None and not conn.closed and not conn.transport.is_closing():  # type: ignore[union-attr]
            self.write(conn, ri, t_start, now)
            return
        self.open_conns += 1
        fut = asyncio.ensure_future(
            asyncio.wait_for(self.loop.create_connection(lambda: Conn(self, owner), self.host, self.port), self.timeout)
        )
        fut.add_done_callback(partial(self.connected, owner, ri, t_start))

    def connected(self, owner: Any, ri: int, t_start: float, fut: asyncio.Future) -> None:
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or exc is not None:
            self.open_conns -= 1
            kind = (
                REFUSED
                if isinstance(exc, ConnectionRefusedError)
                else (
                    TIMEOUT
                    if isinstance(exc, asyncio.TimeoutError)
                    else RESET
                    if isinstance(exc, ConnectionError)
                    else OTHER
                )
            )
            self.record_failure(t_start, ri, kind, owner)
            self.count(kind, ri)
            self.after(None, owner, perf_counter())
            return
        _, conn = fut.result()
        if owner is not None:
            owner.conn = conn
        self.write(conn, ri, t_start, perf_counter())

    # ---------------------------------------------------------------- outcomes

    def record_failure(self, t_start: float, ri: int, kind: int, owner: User | None) -> None:
        if self.jtl_rows is not None:
            us = int((perf_counter() - t_start) * 1e6)
            self.jtl_rows.append((t_start, us, ri, OUTCOMES[kind], owner.index if owner else 0))

    def answered(self, status: int, ri: int) -> None:
        """A response of status ≥ 400 (the hot path counts its class; this, which status and for what)."""
        self.statuses[ri, status] += 1

    def count(self, kind: int, ri: int) -> None:
        self.inflight -= 1
        self.tally(kind, ri)

    def fail(self, conn: Conn, kind: int) -> None:
        conn.busy = False
        conn.closed = True
        if conn.transport is not None and not conn.transport.is_closing():
            conn.transport.abort()
        self.record_failure(conn.t_start, conn.ri, kind, conn.owner)
        self.count(kind, conn.ri)
        self.after(conn, conn.owner, perf_counter())

    def after(self, conn: Conn | None, owner: User | None, now: float) -> None:
        if owner is not None:
            owner.done += 1
            self.user_next(owner, now)
        else:
            self.open_next(conn, now)
        if self.dispatch_over and self.inflight == 0 and not self.pending and not self.finished.done():
            self.finished.set_result(None)

    # ---------------------------------------------------------------- closed model

    def start_closed(self) -> None:
        offsets = self.plan.user_offsets
        self.users_active = len(offsets)
        for i, off in enumerate(offsets):
            user = User(self.index + i * self.plan.drivers + 1)
            self.loop.call_at(self.loop_time(self.t0p + off), self.user_send, user, self.t0p + off)
        if self.plan.duration_s:
            self.loop.call_at(self.loop_time(self.t0p + self.start_s + self.plan.duration_s), self.end_dispatch)
        if not offsets:
            self.end_dispatch()

    def user_send(self, user: User, intended: float) -> None:
        if self.dispatch_over:
            self.user_gone()
            return
        now = perf_counter()
        self.note_lag(now - intended)
        self.attempt(user.conn, user, self.next_request(), now, now)

    def user_next(self, user: User, now: float) -> None:
        conn = user.conn
        if self.dispatch_over or (self.loops and user.done >= self.loops):
            if conn is not None and not conn.closed:
                conn.closed = True
                conn.transport.close()  # type: ignore[union-attr]
            self.user_gone()
            return
        if self.think:
            self.loop.call_later(self.think, self.user_send, user, now + self.think)
        else:
            self.attempt(conn, user, self.next_request(), now, now)

    def user_gone(self) -> None:
        self.users_active -= 1
        if self.users_active <= 0:
            self.end_dispatch()

    # ---------------------------------------------------------------- open model

    def start_open(self) -> None:
        self.shape = OpenShape(self.plan.points)
        self.shape_end = self.shape.duration_s
        self.max_conns = self.plan.connections
        self.credit = self.plan.phase
        self.last_rel = self.shape.points[0][0] if self.shape.points else 0.0
        self.loop.call_at(self.loop_time(self.t0p + self.last_rel), self.tick)

    def tick(self) -> None:
        if self.dispatch_over:
            return
        rel = min(perf_counter() - self.t0p, self.shape_end)
        last = self.last_rel
        if rel > last:
            # arrivals in (last, rel]: trapezoid of the rate, each placed where the cumulative crosses an integer
            gain = (self.shape.at(last) + self.shape.at(rel - 1e-9)) / 2 * (rel - last)
            before = self.credit
            self.credit += gain
            n = int(math.floor(self.credit) - math.floor(before))
            for j in range(1, n + 1):
                frac = (math.floor(before) + j - before) / gain
                self.dispatch(self.t0p + last + frac * (rel - last))
            self.last_rel = rel
        if rel >= self.shape_end:
            self.end_dispatch()
            return
        self.loop.call_later(0.001, self.tick)

    def dispatch(self, sched: float) -> None:
        ri = self.next_request()
        if self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                self.send_scheduled(conn, ri, sched)
                return
        if self.open_conns < self.max_conns:
            self.send_scheduled(None, ri, sched)
        else:
            self.pending.append((sched, ri))

    def send_scheduled(self, conn: Conn | None, ri: int, sched: float) -> None:
        now = perf_counter()
        self.note_lag(now - sched)
        self.attempt(conn, None, ri, sched, now)

    def open_next(self, conn: Conn | None, now: float) -> None:
        while self.pending:
            sched, ri = self.pending.popleft()
            if now - sched > self.timeout:
                self.cur.dropped += 1
                continue
            self.send_scheduled(conn, ri, sched)
            return
        if conn is not None and not conn.closed:
            self.idle.append(conn)

    # ---------------------------------------------------------------- shared

    def note_lag(self, lag: float) -> None:
        cur = self.cur
        if lag > cur.lag_max:
            cur.lag_max = lag
        if lag > LATE_S:
            cur.late += 1

    def loop_time(self, perf_t: float) -> float:
        return self.loop.time() + (perf_t - perf_counter())

    def end_dispatch(self) -> None:
        if self.dispatch_over:
            return
        self.dispatch_over = True
        if self.inflight == 0 and not self.pending and not self.finished.done():
            self.finished.set_result(None)

    def sweep(self) -> None:
        """Time out requests past the per-request timeout and queued sends past it too."""
        now = perf_counter()
        for conn in self.conns:
            if conn.busy and now - conn.t_sent > self.timeout:
                self.fail(conn, TIMEOUT)
        self.conns = [c for c in self.conns if not c.closed or c.busy]
        while self.pending and now - self.pending[0][0] > self.timeout:
            self.pending.popleft()
            self.cur.dropped += 1
        if self.dispatch_over and self.inflight == 0 and not self.finished.done():
            self.pending.clear()
            self.finished.set_result(None)
        if self.jtl is not None:  # every 100 ms: small batches of rows stay in the CPU cache
            self.jtl.flush(self.users_active or self.open_conns)
        self.loop.call_later(SWEEP_S, self.sweep)

    def flush_second(self) -> None:
        """Emit the current second and schedule the next flush at the next boundary."""
        self.emit_second(1.0)
        self.second += 1
        self.loop.call_at(self.loop_time(self.t0p + self.second + 1), self.flush_second)

    def emit_second(self, span: float) -> None:
        cur, self.cur = self.cur, Tally()
        sent, hist, max_us, counts = self.take()  # counts[outcome][request]
        outcomes = [sum(per_request) for per_request in counts]
        now_w, now_c = perf_counter(), time.process_time()
        wall, cpu = now_w - self.cpu_mark[0], now_c - self.cpu_mark[1]
        self.cpu_mark = (now_w, now_c)
        for i, n in enumerate(outcomes):
            self.totals[i] += n
        self.sent_total += sent
        self.emit(DriverSecond(
            driver=self.index, t=self.second, span=round(span, 4), sent=sent,
            outcomes={OUTCOMES[i]: n for i, n in enumerate(outcomes) if n}, hist=Histogram(dict(hist), max_us),
            lag_max_ms=round(cur.lag_max * 1000, 3), late=cur.late, dropped=cur.dropped, conns=self.open_conns,
            inflight=self.inflight, users=self.users_active, cpu=round(cpu / wall, 4) if wall > 0 else 0.0,
        ))

    def emit(self, record: DriverRecord) -> None:
        self.out.write(json.dumps(record.to_json(), separators=(",", ":")) + "\n")
        self.out.flush()

    def interrupt(self) -> None:
        """Stop early: no new sends; what is still in flight a second later is aborted."""
        self.end_dispatch()
        self.pending.clear()
        self.loop.call_later(1.0, self.abort_inflight)

    def abort_inflight(self) -> None:
        for conn in self.conns:
            if conn.busy:
                conn.busy = False
                self.aborted += 1
                self.inflight -= 1
                if conn.transport is not None:
                    conn.transport.abort()
        if not self.finished.done():
            self.finished.set_result(None)

    async def run(self) -> None:
        delay = self.t0p + self.start_s - perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        self.cpu_mark = (perf_counter(), time.process_time())
        self.loop.call_at(self.loop_time(self.t0p + self.second + 1), self.flush_second)
        self.loop.call_later(SWEEP_S, self.sweep)
        if self.plan.model == "closed":
            self.start_closed()
        else:
            self.start_open()
        await self.finished
        self.emit_second(max(0.0, perf_counter() - (self.t0p + self.second)))
        if self.jtl is not None:
            self.jtl.close(0)
        self.emit(DriverDone(driver=self.index, sent=self.sent_total, aborted=self.aborted,
                             outcomes={OUTCOMES[i]: n for i, n in enumerate(self.totals) if n},
                             statuses=[(self.plan.requests[ri].label, status, n)
                                       for (ri, status), n in sorted(self.statuses.items())],
                             hot_path="c" if ACCELERATED else "python"))


def _template(wire: bytes) -> list[bytes | tuple[int, int]] | None:
    """The request split at its {rand:LO-HI} fields (each becomes (lo, hi)); None without any."""
    line, sep, rest = wire.partition(b"\r\n")
    pieces = RAND.split(line.decode("latin-1"))
    if len(pieces) == 1:
        return None
    out: list[bytes | tuple[int, int]] = []
    for i in range(0, len(pieces) - 1, 3):
        out += [pieces[i].encode("latin-1"), (int(pieces[i + 1]), int(pieces[i + 2]))]
    return out + [(pieces[-1] + "\r\n").encode("latin-1") + rest]


def new_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop when uvloop is installed, else the standard one."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def main() -> int:
    line = sys.stdin.readline()
    out = sys.stdout
    try:
        plan = ShardPlan.from_json(json.loads(line))
    except (ValueError, KeyError, HarnessError) as e:
        out.write(json.dumps(DriverFault(f"bad plan on stdin: {e!r}").to_json()) + "\n")
        return 2
    loop = new_loop()
    asyncio.set_event_loop(loop)
    driver = Driver(plan, loop, out)
    stdin_fd = sys.stdin.fileno()

    def on_stdin() -> None:
        data = os.read(stdin_fd, 4096)
        if not data or b"stop" in data:
            loop.remove_reader(stdin_fd)
            driver.interrupt()

    def quiet_parse_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # a response that does not parse is counted as "other" by Conn.connection_lost
        if not isinstance(context.get("exception"), httptools.HttpParserError):
            loop.default_exception_handler(context)

    loop.set_exception_handler(quiet_parse_errors)
    loop.add_reader(stdin_fd, on_stdin)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, driver.interrupt)
    try:
        loop.run_until_complete(driver.run())
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
