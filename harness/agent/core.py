"""The agent's clockwork: a heartbeat on the loop, a CPU-time signal sampler, and one thread of its own.

Only two tiny things run on the loop thread: the heartbeat (every 10 ms: read two clocks,
append to a list) and the SIGPROF handler (about 50 times per second of the loop thread's
CPU time, see ``cputimer``: read a clock, take the innermost frames' code objects and
offsets). Resolving and classifying stacks, building
records and writing happen on the agent's own thread.

Why a signal and not only a thread: a long C call (pydantic-core, json's encoder, a
regex) holds the GIL, so a sampling *thread* cannot run until it returns and then sees the
loop idle. The signal handler runs right after the C call returns, in the frame that made
it, and weighs its sample by the loop thread's CPU time since the previous one.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from . import cputimer, probes, sink, stacks, statements, waits

try:
    from _signal import getsignal as _getsignal  # signal.getsignal wraps this in enums, on every heartbeat
except ImportError:  # not CPython
    _getsignal = signal.getsignal

BEAT_S = 0.010
TICK_S = 0.100
POOL_SAMPLE_S = 0.050
MEMORY_EVERY = 10  # ticks between two readings of the allocators
_dumps = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode  # records are trees


class Agent:
    def __init__(self, options: Dict[str, Any]):
        self.options = options
        self.pid = os.getpid()
        stacks.set_app_dir(options.get("app_dir"))
        self.stall_s = float(options.get("stall_ms", 25)) / 1000.0
        hz = float(options.get("hot_hz", 50) or 0)
        self.hot_interval = 1.0 / hz if hz > 0 else 0.0
        stream_dir = options.get("stream_dir") or options.get("run_dir") or "."
        self.stream = sink.open_stream(options, self.pid, stream_dir)
        self.loop: Any = None
        self.loop_tid = 0
        self.loop_native_tid = 0  # the loop thread's id in /proc
        self.expected = 0.0  # when the next heartbeat is due (perf_counter)
        self.last_cpu = 0.0  # the loop thread's CPU time at the last heartbeat
        self.lags: List[float] = []
        # stacks as taken (stacks.grab), resolved into frames on the agent's thread
        self.stall_samples: List[Tuple[float, list]] = []  # (perf time, stack) while late
        self.ended_stalls: "collections.deque[Tuple[float, float, float, list]]" = collections.deque()
        self.raw_hot: "collections.deque[Tuple[float, list, bool]]" = collections.deque(maxlen=5000)
        self.last_sig_cpu = 0.0
        self.records: "collections.deque[Dict[str, Any]]" = collections.deque()  # emitted, not yet encoded
        self.pending: "collections.deque[str]" = collections.deque(maxlen=10_000)  # lines the stream has not taken
        self.routes: Any = None  # set by the middleware
        self.waits: Any = None  # waits.WaitProbe, set by the middleware
        self.threadpool = probes.ThreadpoolProbe()
        self.pools = probes.PoolProbe()
        self.redis_pools = probes.RedisPoolProbe()
        self.gc = probes.GcProbe()
        self.statements = statements.StatementProbe()
        self.middleware: List[str] = []  # the app's BaseHTTPMiddleware classes, set by the middleware
        self.profiler: Any = None
        self.stopped = threading.Event()
        self.seq = 0
        self.lost = 0
        self.last_error = ""
        self.started = False
        self.thread: Optional[threading.Thread] = None
        self.alarm = False  # the stall watchdog is SIGALRM (else the agent's thread)
        self.cpu_timer = cputimer.CpuTimer()  # SIGPROF for the hotspot sampler
        self.relay = cputimer.WakeupRelay()  # its signals (and the watchdog's) off the loop's self-pipe

    # ------------------------------------------------------------------ start

    def start(self, loop: Any) -> None:
        """Start once, from the first ASGI event on the worker's running loop."""
        if self.started:
            return
        self.started = True
        self.loop = loop
        self.loop_tid = threading.get_ident()
        self.loop_native_tid = sink.native_tid()
        self.pools.install()
        self.statements.install()
        self.gc.install()
        now = time.perf_counter()
        self.expected = now + BEAT_S
        self.last_cpu = self.last_sig_cpu = time.thread_time()
        loop.call_later(BEAT_S, self._beat)
        on_main = threading.current_thread() is threading.main_thread()
        signal_sampling = self.hot_interval and on_main
        if signal_sampling:
            signal.signal(signal.SIGPROF, self._on_sigprof)
            self.cpu_timer.start(self.hot_interval)
        # the watchdog is a one-shot real-time timer that every heartbeat pushes forward, unless
        # the app has SIGALRM for itself; then it is the agent thread's job
        self.alarm = on_main and signal.getsignal(signal.SIGALRM) == signal.SIG_DFL and not any(
            signal.getitimer(signal.ITIMER_REAL))
        if self.alarm:
            signal.signal(signal.SIGALRM, self._on_alarm)
            signal.setitimer(signal.ITIMER_REAL, BEAT_S + self.stall_s)
        if signal_sampling or self.alarm:
            self.relay.install()
        self.emit({
            "type": "hello", "pid": self.pid, "t": time.time(), "python": sys.version.split()[0],
            "versions": probes.versions(), "loop": type(loop).__module__ + "." + type(loop).__name__,
            "hotspots": "sigprof" if signal_sampling else ("thread" if self.hot_interval else "off"),
            "watchdog": "sigalrm" if self.alarm else "thread", "cpu_timer": self.cpu_timer.kind,
            "signal_relay": self.relay.loop_fd != -1,
            "middleware": self.middleware,
            "options": {k: v for k, v in self.options.items() if k not in ("target", "sink")},
        })
        self.thread = threading.Thread(target=self._run, name="fastapi-harness-agent", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        now = time.perf_counter()
        late = now - self.expected
        self.lags.append(late)
        if late >= self.stall_s:
            # a stall just ended; the agent's thread turns it into a record
            samples, self.stall_samples = self.stall_samples, []
            self.ended_stalls.append((self.expected, now, time.thread_time() - self.last_cpu, samples))
        self.last_cpu = time.thread_time()
        self.expected = now + BEAT_S
        self.loop.call_later(BEAT_S, self._beat)
        if self.alarm:
            if _getsignal(signal.SIGALRM) == self._on_alarm:
                signal.setitimer(signal.ITIMER_REAL, BEAT_S + self.stall_s)  # fires only if the next beats are late
            else:
                self.alarm = False  # the app took SIGALRM since: the agent's thread watches from now on

    def _on_alarm(self, signum: int, frame: Any) -> None:
        """The heartbeat is late: sample the loop's stack, again each time the lateness doubles.

        Runs on the loop (main) thread: between bytecodes of code running on the loop, or
        inside a blocking call that released the GIL (time.sleep, socket I/O), which then
        resumes where it was.
        """
        late = time.perf_counter() - self.expected
        if late >= self.stall_s:
            self.stall_samples.append((time.perf_counter(), stacks.grab(frame)))
        signal.setitimer(signal.ITIMER_REAL, max(late, self.stall_s - late, 0.001))

    def _on_sigprof(self, signum: int, frame: Any) -> None:
        # runs on the loop (main) thread, between bytecodes: keep it to a clock read and a stack grab
        cpu = time.thread_time()
        weight, self.last_sig_cpu = cpu - self.last_sig_cpu, cpu
        now = time.perf_counter()
        if now - self.expected >= self.stall_s:  # inside a stall: the whole stack, for its record
            stack = stacks.grab(frame)
            self.stall_samples.append((now, stack))
        else:
            stack = stacks.grab(frame, stacks.HOT_DEPTH)
        self.raw_hot.append((weight, stack, True))

    # ------------------------------------------------------------------ watchdog

    def _watch(self) -> Iterator[float]:
        """Hotspot samples of the threadpool, and the stall watchdog where SIGALRM is not ours:
        one step per call of ``next``, which returns how long it may sleep before the next.

        Every wake-up of the agent's thread takes the GIL from a busy loop (and waits to be
        scheduled when every core is busy), so these steps ride the stream's thread and its 10
        wake-ups a second while the threadpool is idle (20 while it is busy), and the watchdog is
        a timer signal (``_on_alarm``) wherever it can be. What each costs: benchmarks/agent_overhead.md.

        As the watchdog, while the heartbeat is late, it samples the loop thread's stack each
        time the lateness doubles; otherwise it sleeps until the moment the current heartbeat
        would count as a stall.
        """
        poll = min(0.005, self.stall_s / 4)
        next_sample = self.stall_s
        stalled_since = 0.0
        # the loop itself is sampled from here only where SIGPROF could not be used
        include_loop = bool(self.hot_interval) and self.cpu_timer.kind == "off"
        hot_every = (
            (self.hot_interval if include_loop else max(self.hot_interval, POOL_SAMPLE_S)) if self.hot_interval else 0.0
        )
        hot_due = time.perf_counter() + hot_every
        while True:
            now = time.perf_counter()
            pool_busy = False
            if hot_every and now >= hot_due:
                pool_busy = self._sample_threads(include_loop, hot_every)
                hot_due = now + hot_every
            if self.alarm:
                yield hot_every if pool_busy or include_loop else TICK_S
                continue
            expected = self.expected
            late = now - expected
            if late < self.stall_s:
                next_sample = self.stall_s
                wait = max(self.stall_s - late, poll)
            else:
                wait = poll
                if expected != stalled_since:
                    stalled_since, next_sample = expected, self.stall_s
                if late >= next_sample:
                    frame = sys._current_frames().get(self.loop_tid)
                    if frame is not None:
                        self.stall_samples.append((time.perf_counter(), stacks.grab(frame)))
                    next_sample = late * 2
            if hot_every:
                wait = min(wait, max(hot_due - time.perf_counter(), poll))
            yield wait

    def _stall_record(self, start: float, end: float, cpu: float, samples: list) -> Dict[str, Any]:
        duration = end - start
        taken = [stacks.resolve(raw) for _, raw in samples]
        sites = [stacks.app_site(stack) for stack in taken]
        counted = collections.Counter(s for s in sites if s)
        site = counted.most_common(1)[0][0] if counted else None
        stack = next((st for st, s in zip(taken, sites) if s == site), taken[0] if taken else [])
        cpu_share = cpu / duration if duration > 0 else 0.0
        if cpu_share >= 0.5:
            kind = "app-code" if site else "cpu-other"  # running on the loop: app code, or library/framework code
        elif site:
            kind = "blocking-wait"  # the loop thread waited (sleep, I/O, lock) inside app code
        else:
            kind = "starved"  # no app frame and little CPU: the process starved of CPU or GIL
        return {
            "type": "stall", "t_start": time.time() - (time.perf_counter() - start),
            "duration_ms": round(duration * 1000, 2), "class": kind,
            "site": {"file": site[0], "line": site[1], "function": site[2]} if site else None,
            "stack": [list(f) for f in stack[:40]], "samples": len(samples),
        }

    # ------------------------------------------------------------------ hotspots

    def _sample_threads(self, include_loop: bool, weight: float) -> bool:
        """One sample of the threadpool's busy workers (and of the loop, when signals are unavailable);
        False when there was nothing to sample."""
        limiter = self.threadpool.limiter
        if not include_loop and (limiter is None or not limiter.borrowed_tokens):
            return False  # no sync endpoint is running
        me = threading.get_ident()
        pool_threads = {t.ident for t in threading.enumerate() if _is_pool_thread(t.name)}
        for tid, frame in sys._current_frames().items():
            if tid == me or not (tid in pool_threads or (include_loop and tid == self.loop_tid)):
                continue
            raw = stacks.grab(frame)
            if tid != self.loop_tid and _waiting_for_work(stacks.resolve(raw)):
                continue
            self.raw_hot.append((weight, raw, tid == self.loop_tid))
        return True

    def _classify_hot(self) -> Dict[str, Dict[str, float]]:
        """Drain raw samples: ms by category and by category|frame, for the loop and the pool threads apart."""
        out: Dict[str, Dict[str, float]] = {k: {} for k in ("hot_ms", "hot_frames_ms", "pool_ms", "pool_frames_ms")}
        while self.raw_hot:
            weight, raw, on_loop = self.raw_hot.popleft()
            cat, where = stacks.classify(raw)
            ms = weight * 1000.0
            cats, frames = (out["hot_ms"], out["hot_frames_ms"]) if on_loop else (out["pool_ms"], out["pool_frames_ms"])
            cats[cat] = cats.get(cat, 0.0) + ms
            if where is not None:
                frames[where] = frames.get(where, 0.0) + ms
        return {name: {k: round(v, 2) for k, v in d.items()} for name, d in out.items()}

    # ------------------------------------------------------------------ stream

    def emit(self, record: Dict[str, Any]) -> None:
        self.records.append(record)

    def _tick(self, final: bool) -> Dict[str, Any]:
        while self.ended_stalls:
            self.emit(self._stall_record(*self.ended_stalls.popleft()))
        lags, self.lags = self.lags, []
        self.seq += 1
        rec: Dict[str, Any] = {
            "type": "tick", "t": time.time(), "seq": self.seq,
            "lag_ms": [int(x * 100_000) / 100 if x > 0 else 0.0 for x in lags],  # truncated: cheaper than round
            "threadpool": self.threadpool.read(),
            "pools": self.pools.read(),
            "gc": self.gc.read(),
            "statements": self.statements.read(),
            "db_errors": self.statements.read_errors(),
            **self._classify_hot(),
        }
        redis_pools = self.redis_pools.read()
        if redis_pools:
            rec["redis_pools"] = redis_pools
        if self.seq % MEMORY_EVERY == 1:
            rec["memory"] = probes.memory()
            if self.stream.remote:  # the harness may not see this process: its figures go along
                self.emit(sink.proc_figures(self.pid, self.loop_native_tid))
        if self.routes is not None:
            rec.update(self.routes.drain(final))
        if self.waits is not None:
            routes = self.routes
            # walk only when a request may be waiting: one was slow lately, none finished while some
            # are in flight (stuck), or the last walk found one; a loop serving fast requests pays nothing
            if routes is not None and routes.inflight and (
                    self.waits.active or routes.slowest_us * 1000 >= waits.SLOW_NS or not rec.get("routes")):
                self.waits.walk(self.loop)
            rec.update(self.waits.read())
        return rec

    def _run(self) -> None:
        """The agent's one thread: a record every TICK_S, the watchdog's steps in between.

        A step that may sleep a whole tick or longer waits for the next tick instead, so an
        idle threadpool costs no wake-up of its own.
        """
        watch = self._watch()
        tick_due = watch_due = walk_due = time.perf_counter()
        while True:
            now = time.perf_counter()
            if now >= tick_due:
                self.relay.relay()
                self._write()
                tick_due = walk_due = now + TICK_S
            if now >= watch_due:
                wait = next(watch)
                watch_due = now + wait if wait < TICK_S else tick_due
            # while a request waits, where it waits is looked at between ticks too
            walking = self.waits is not None and self.waits.active
            if walking and now >= walk_due:
                self.waits.walk(self.loop)
                walk_due = now + waits.WALK_S
            due = min(tick_due, watch_due, walk_due) if walking else min(tick_due, watch_due)
            if self.stopped.wait(max(due - time.perf_counter(), 0.0)):
                self._write(final=True)
                self.stream.close()
                return

    def _write(self, final: bool = False) -> None:
        """Send this tick's record and everything emitted since to the stream, in one write (each
        syscall that gives the GIL back costs getting it back). When the stream fails, the records
        stay in the bounded buffer for the next tick; what falls out of it is counted and reported."""
        self.emit(self._tick(final))
        if self.profiler is not None:
            self.profiler.poll()
        pending = self.pending
        while self.records:
            try:
                line = _dumps(self.records.popleft()) + "\n"
            except (ValueError, TypeError):
                self.lost += 1
                continue
            if len(pending) == pending.maxlen:
                self.lost += 1  # the oldest falls out: the stream has been failing a while
            pending.append(line)
        try:
            gap = [_dumps({"type": "gap", "lost": self.lost, "error": self.last_error}) + "\n"] if self.lost else []
            self.stream.write("".join(gap + list(pending)).encode())
            pending.clear()
            self.lost = 0
        except (OSError, ValueError, TypeError) as e:
            # the app keeps serving; what could not be sent waits, and what is lost is reported later
            if not self.last_error:
                print(f"fastapi-harness agent: cannot write {getattr(self.stream, 'path', '') or 'to the harness'}: "
                      f"{e}; the app keeps serving", file=sys.stderr)
            self.last_error = f"{type(e).__name__}: {e}"

    def stop(self) -> None:
        if self.started:
            self.cpu_timer.stop()
            if self.alarm:
                self.alarm = False  # a heartbeat after this must not arm the timer again
                try:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                except ValueError:
                    pass
            self.relay.uninstall()
        self.stopped.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(1.0)  # its last record (the last tick's requests) is written before exit


def _is_pool_thread(name: str) -> bool:
    return name.startswith(("AnyIO worker thread", "ThreadPoolExecutor", "asyncio_"))


_POOL_MACHINERY = ("threading.py", "queue.py", "thread.py", "_asyncio.py", "_trio.py")


def _waiting_for_work(stack: List[stacks.Frame]) -> bool:
    """An idle pool thread: nothing on its stack but the pool's own queue and thread plumbing."""
    return all(path.endswith(_POOL_MACHINERY) for path, _, _ in stack)
