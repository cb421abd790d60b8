"""The driver's hot path: what runs once per response, and the state it touches.

``ConnCore.on_message_complete`` is the one callback per response (httptools calls it):
it records the latency into this second's log-linear histogram (``histogram.bucket_of``,
by table lookup or inlined) and the outcome counts, appends the JTL row, and in the common
closed-model case writes the user's next request itself. Every other case calls back into
the driver (``user_next``, ``after``, ``fail``, ``next_request``). ``DriverCore`` holds the
per-second tallies and the flags that callback reads; ``take()`` hands a second over.

``_hotpath.c`` is the same in C, used when it was built (``pip install`` compiles it where
a C compiler is at hand): a response then costs no Python frame at all. Setting
``FASTAPI_HARNESS_PURE_PYTHON=1`` selects this module's classes instead; the tests run the
same loads through both.
"""

from __future__ import annotations

import os
from time import perf_counter
from typing import Any

from harness.histogram import bucket_of

OUTCOMES = ("ok", "4xx", "5xx", "timeout", "connect-refused", "connection-reset", "other")
OK, C4XX, C5XX, TIMEOUT, REFUSED, RESET, OTHER = range(len(OUTCOMES))
HIST_SIZE = 8192  # bucket index of the largest 64-bit microsecond value is below this
FAST_BUCKETS = 1 << 16  # latencies below 65.5 ms find their bucket by one list index


def _bucket_table(n: int) -> list[int]:
    """``bucket_of`` for 0 .. n-1, one shared int object per bucket (0.5 MB for 65,536 entries)."""
    canonical: dict[int, int] = {}
    return [canonical.setdefault(b, b) for b in map(bucket_of, range(n))]


BUCKET_OF = _bucket_table(FAST_BUCKETS)


def hot_bucket(us: int) -> int:
    """The bucket ``ConnCore.on_message_complete`` files ``us`` under (it inlines this body)."""
    if us < FAST_BUCKETS:
        return BUCKET_OF[us]
    shift = us.bit_length() - 8
    return (shift << 7) + (us >> shift)


class DriverCore:
    """The per-second tallies and the flags the hot path reads."""

    __slots__ = ("inflight", "sent", "loops", "dispatch_over", "eager", "mixed", "requests", "jtl_rows",
                 "hist", "max_us", "counts")

    def __init__(self, n_requests: int):
        if n_requests < 1:
            raise ValueError("a driver needs at least one request")
        self.inflight = 0
        self.loops = 0
        self.dispatch_over = self.eager = self.mixed = False
        self.requests: list[bytes] = []
        self.jtl_rows: list[tuple] | None = None
        self._new_second(n_requests)

    def _new_second(self, n_requests: int) -> None:
        self.sent = 0
        self.hist = [0] * HIST_SIZE  # dense: indexing a list beats dict get/set in the hot path
        self.max_us = 0
        self.counts = [[0] * n_requests for _ in OUTCOMES]  # counts[outcome][request]

    def tally(self, kind: int, ri: int) -> None:
        self.counts[kind][ri] += 1

    def take(self) -> tuple[int, list[tuple[int, int]], int, list[list[int]]]:
        """This second's (sent, histogram pairs, max_us, counts); resets them."""
        out = self.sent, [(b, n) for b, n in enumerate(self.hist) if n], self.max_us, self.counts
        self._new_second(len(self.counts[0]))
        return out


class User:
    """A closed-model user (JMeter thread)."""

    __slots__ = ("conn", "done", "index")

    def __init__(self, index: int = 0) -> None:
        self.conn: Any = None
        self.done = 0
        self.index = index


class ConnCore:
    """One keep-alive connection's state and its response callback."""

    __slots__ = ("d", "owner", "transport", "parser", "busy", "closed", "t_start", "t_sent", "ri", "thread")

    def __init__(self, d: DriverCore, owner: User | None):
        self.d = d
        self.owner = owner
        self.transport: Any = None
        self.parser: Any = None
        self.thread = owner.index if owner is not None else 0
        self.busy = self.closed = False
        self.t_start = self.t_sent = 0.0
        self.ri = 0

    def on_message_complete(self) -> None:
        if not self.busy:
            return
        now = perf_counter()
        d = self.d
        us = int((now - self.t_start) * 1e6)
        if us < FAST_BUCKETS:
            d.hist[BUCKET_OF[us]] += 1
        else:
            shift = us.bit_length() - 8
            d.hist[(shift << 7) + (us >> shift)] += 1
        if us > d.max_us:
            d.max_us = us
        status = self.parser.get_status_code()
        kind = OK if status < 400 else C4XX if status < 500 else C5XX
        d.counts[kind][self.ri] += 1
        if kind != OK:
            d.answered(status, self.ri)
        if d.jtl_rows is not None:
            d.jtl_rows.append((self.t_start, us, self.ri, status, self.thread))
        if not self.parser.should_keep_alive():
            self.closed = True
            self.transport.close()
        owner = self.owner
        user_goes_on = owner is not None and not d.dispatch_over
        if user_goes_on:
            owner.done += 1
            if owner.done != d.loops and d.eager and not self.closed:
                # the common case: the same user sends its next request on this connection at once
                ri = d.next_request() if d.mixed else 0
                d.sent += 1
                self.ri = ri
                self.t_start = self.t_sent = now
                try:
                    self.transport.write(d.requests[ri])
                except RuntimeError:  # uvloop: the peer closed it and connection_lost is still queued
                    d.fail(self, RESET)
                return
        self.busy = False
        d.inflight -= 1
        if user_goes_on:
            d.user_next(owner, now)
        else:
            d.after(self, owner, now)


ACCELERATED = False
if not os.environ.get("FASTAPI_HARNESS_PURE_PYTHON"):
    try:
        from harness.load import _hotpath
    except ImportError:  # not built (no C compiler at install time): the classes above serve
        pass
    else:
        if _hotpath.OUTCOMES == OUTCOMES and _hotpath.HIST_SIZE == HIST_SIZE:
            DriverCore, User, ConnCore = _hotpath.DriverCore, _hotpath.User, _hotpath.ConnCore  # type: ignore[misc]
            ACCELERATED = True
