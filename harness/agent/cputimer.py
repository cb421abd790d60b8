"""SIGPROF every N seconds of the loop thread's CPU time, kept out of the event loop's self-pipe.

On Linux, a POSIX timer on the thread's own CPU clock, aimed at that thread (``timer_create``
with ``SIGEV_THREAD_ID``, through ctypes: the standard library has no binding). Elsewhere,
or if that fails, the process's ``ITIMER_PROF``. The thread timer is the cheaper of the two
(an armed process-wide CPU timer makes the kernel keep a CPU clock for the whole process;
benchmarks/agent_overhead.md), and it counts only the loop thread's CPU, which is what the
samples are weighted by.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from typing import Any, Optional, Tuple

SIGEV_THREAD_ID = 4  # Linux


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _Sigevent(ctypes.Structure):  # struct sigevent on 64-bit and 32-bit Linux: 64 bytes
    _fields_ = [("sigev_value", ctypes.c_void_p), ("sigev_signo", ctypes.c_int), ("sigev_notify", ctypes.c_int),
                ("sigev_notify_thread_id", ctypes.c_int),
                ("_pad", ctypes.c_int * ((64 - ctypes.sizeof(ctypes.c_void_p) - 12) // 4))]


class CpuTimer:
    """Started and stopped on the thread whose CPU time it counts."""

    def __init__(self) -> None:
        self.kind = "off"  # "thread" (timer_create), "process" (ITIMER_PROF) or "off"
        self._timer: Optional[ctypes.c_void_p] = None
        self._libc: Any = None

    def start(self, interval: float) -> str:
        if self._thread_timer(interval):
            self.kind = "thread"
        else:
            signal.setitimer(signal.ITIMER_PROF, interval, interval)
            self.kind = "process"
        return self.kind

    def _thread_timer(self, interval: float) -> bool:
        if not sys.platform.startswith("linux") or not hasattr(time, "pthread_getcpuclockid"):
            return False
        try:
            libc = ctypes.CDLL(None)
            libc.timer_create.argtypes = [ctypes.c_int, ctypes.POINTER(_Sigevent), ctypes.POINTER(ctypes.c_void_p)]
            libc.timer_settime.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p]
            libc.timer_delete.argtypes = [ctypes.c_void_p]
            clock = time.pthread_getcpuclockid(threading.get_ident())
            event = _Sigevent(sigev_signo=signal.SIGPROF, sigev_notify=SIGEV_THREAD_ID,
                              sigev_notify_thread_id=threading.get_native_id())
            timer = ctypes.c_void_p()
            if libc.timer_create(clock, ctypes.byref(event), ctypes.byref(timer)) != 0:
                return False
            ns = max(int(interval * 1e9), 1000)
            period = _Timespec(ns // 1_000_000_000, ns % 1_000_000_000)
            if libc.timer_settime(timer, 0, ctypes.byref(_Itimerspec(period, period)), None) != 0:
                libc.timer_delete(timer)
                return False
        except (AttributeError, OSError, ValueError):  # no timer_create in this libc, or no libc to load
            return False
        self._libc, self._timer = libc, timer
        return True

    def stop(self) -> None:
        if self.kind == "thread":
            self._libc.timer_delete(self._timer)
        elif self.kind == "process":
            try:
                signal.setitimer(signal.ITIMER_PROF, 0)
            except ValueError:
                pass
        self.kind = "off"


class WakeupRelay:
    """Keeps the agent's own signals (SIGPROF, SIGALRM) out of the event loop's self-pipe.

    CPython writes the number of each signal it catches to the fd given to
    ``signal.set_wakeup_fd``, and uvloop and asyncio give it their self-pipe: every sample
    would wake the loop for a turn that reads one byte and finds nothing to do, ≈ 1 % of
    /fast's throughput at 50 Hz (benchmarks/agent_overhead.md). The relay takes the wakeup
    fd for a pipe of its own, and the agent's thread passes every other signal's byte
    on to the loop's pipe at its next tick (≤ 100 ms later). Python-level handlers (uvicorn's
    SIGTERM, Ctrl-C) do not wait for it: they run at the loop thread's next bytecode, and the
    heartbeat wakes an idle loop every 10 ms; only a handler the app registered with
    ``loop.add_signal_handler`` waits for its byte.
    """

    OURS = frozenset({signal.SIGPROF, signal.SIGALRM})

    def __init__(self) -> None:
        self.loop_fd = -1  # the wakeup fd it took over (the loop's self-pipe)
        self._pipe: Optional[Tuple[int, int]] = None  # (read end, write end)

    def install(self) -> bool:
        """On the main thread: take over the wakeup fd a running loop set (none set: nothing to do)."""
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        try:
            previous = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        except (ValueError, OSError):  # not the main thread
            previous = -1
        else:
            if previous == -1:  # no loop listens: leave it unset
                signal.set_wakeup_fd(-1)
        if previous == -1:
            os.close(r)
            os.close(w)
            return False
        self.loop_fd, self._pipe = previous, (r, w)
        return True

    def relay(self) -> None:
        """On the agent's thread: pass on every byte that is not one of the agent's own signals."""
        if self._pipe is None:
            return
        data = b""
        while True:
            try:
                chunk = os.read(self._pipe[0], 4096)
            except OSError:  # empty (BlockingIOError)
                break
            data += chunk
            if len(chunk) < 4096:  # the pipe is empty now: no second call to learn it
                break
        theirs = bytes(b for b in data if b not in self.OURS)
        if theirs:
            try:
                os.write(self.loop_fd, theirs)
            except OSError:  # the loop closed its pipe: it no longer listens
                pass

    def uninstall(self) -> None:
        """On the main thread: give the wakeup fd back (unless someone has replaced ours since: the
        loop, pausing its signal handling, restores its own predecessor), and pass on what is left."""
        if self._pipe is None:
            return
        try:
            current = signal.set_wakeup_fd(self.loop_fd, warn_on_full_buffer=False)
            if current != self._pipe[1]:
                signal.set_wakeup_fd(current, warn_on_full_buffer=False)
        except (ValueError, OSError):  # not the main thread: the fd stays registered, so the pipe stays open
            return
        self.relay()
        for fd in self._pipe:
            os.close(fd)
        self._pipe = None
