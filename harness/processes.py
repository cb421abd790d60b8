"""The harness's child processes: started so that they die with it, and stopped one way.

``spawn`` starts a child in its own session (a terminal's Ctrl-C reaches only the harness, which
then stops its children in order) with a parent-death signal on Linux, so a harness killed by
SIGKILL or the OOM killer takes its children with it. ``stop_group`` is the one way to stop a
child: SIGTERM to its process group, wait, SIGKILL what is left, reap.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import psutil

PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


class Managed:
    """Something the harness starts and must stop: ``with`` starts it, and stops it on the way out,
    or at once when starting failed half-way (``stop`` is safe to call on what never started)."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """End every process this started; safe to call twice."""

    def __enter__(self) -> Any:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def spawn(args: Sequence[str] | str, death_signal: int = signal.SIGTERM,
          preexec: Callable[[], None] | None = None, **popen: Any) -> subprocess.Popen:
    """``subprocess.Popen`` in a new session; the child gets ``death_signal`` when the harness dies."""
    parent = os.getpid()

    def in_child() -> None:  # runs between fork and exec: no allocation-heavy work here
        if _prctl is not None:
            _prctl(PR_SET_PDEATHSIG, int(death_signal), 0, 0, 0)
            if os.getppid() != parent:  # the harness died before prctl took effect
                os.kill(os.getpid(), death_signal)
        if preexec is not None:
            preexec()

    return subprocess.Popen(args, start_new_session=True, preexec_fn=in_child, **popen)


def stop_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM to ``proc``'s process group, wait ``grace_s``, then SIGKILL the group (and any of its
    descendants that left it) and reap ``proc``. Safe to call twice or on a process already gone."""
    procs: list[psutil.Process] = []
    if proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            procs = psutil.Process(proc.pid).children(recursive=True)  # before TERM: they outlive the parent
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    _, alive = psutil.wait_procs([p for p in procs if _running(p)], timeout=min(grace_s, 2.0))
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stderr_tail(path: Path, lines: int = 12) -> str:
    """The last lines of a log file, indented for an error message."""
    try:
        text = path.read_text(errors="replace").rstrip().splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


def tree_roles(pid: int) -> list[tuple[int, str]]:
    """(pid, role) of a server tree now: the master and its workers, or one process serving alone."""
    try:
        master = psutil.Process(pid)
        children = [c for c in master.children(recursive=True) if is_worker(c)]
    except psutil.NoSuchProcess:
        return []
    if not children:
        return [(pid, "worker")]
    return [(pid, "master"), *((c.pid, "worker") for c in children)]


def is_worker(p: psutil.Process) -> bool:
    """False for helper children (multiprocessing's resource tracker) that serve nothing."""
    try:
        return "resource_tracker" not in " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
