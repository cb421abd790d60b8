"""Where the agent's records go: a file in the run directory, or a TCP connection to the harness.

A worker the harness booted appends ``agent-<pid>.jsonl`` in the run directory. A worker
started by hand (``python -m fastapi_harness_agent --sink tcp://HOST:PORT/TOKEN -- uvicorn …``),
possibly on another machine, streams the same lines to the harness's sink instead: the first
line says who speaks (the run's token, the pid, the host and its boot id), and once a second a
``proc`` line carries the process's own figures from ``/proc``, since the harness may not see
its PID. While the harness cannot be reached the lines wait in the agent's bounded buffer
(``Agent.records``; what falls out of it is counted in a ``gap`` record), and the connection
is tried again at most once a second.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import threading
import time
from typing import Any, Dict, Optional, Tuple
from urllib.parse import urlsplit

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
RETRY_S = 1.0


class FileStream:
    """Appends to a file, opened at the first write."""

    remote = False

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: Optional[int] = None

    def write(self, data: bytes) -> None:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


def parse_sink(url: str) -> Tuple[str, int, str]:
    """(host, port, token) of ``tcp://HOST:PORT/TOKEN``; ValueError naming the expected form."""
    parts = urlsplit(url)
    token = parts.path.lstrip("/")
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "tcp" or not parts.hostname or not port or not token:
        raise ValueError(f"--sink {url!r}: expected tcp://HOST:PORT/TOKEN, as the harness prints it")
    return parts.hostname, port, token


class TcpStream:
    """One connection to the harness's sink, made again when it drops; ``write`` raises OSError
    while there is none (the caller keeps its lines for the next try)."""

    remote = True

    def __init__(self, url: str, pid: int) -> None:
        self.host, self.port, self.token = parse_sink(url)
        self.pid = pid
        self.sock: Optional[socket.socket] = None
        self.next_try = 0.0

    def write(self, data: bytes) -> None:
        if self.sock is None:
            now = time.monotonic()
            if now < self.next_try:
                raise OSError(f"the harness at {self.host}:{self.port} is not connected")
            self.next_try = now + RETRY_S
            sock = socket.create_connection((self.host, self.port), timeout=2.0)
            try:
                sock.sendall(_line({"type": "sink", "token": self.token, "pid": self.pid,
                                    "host": socket.gethostname(), "boot_id": boot_id()}))
            except OSError:
                sock.close()
                raise
            self.sock = sock
        try:
            self.sock.sendall(data)
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


def open_stream(options: Dict[str, Any], pid: int, stream_dir: str) -> Any:
    sink = options.get("sink")
    if sink:
        return TcpStream(sink, pid)
    return FileStream(os.path.join(stream_dir, f"agent-{pid}.jsonl"))


def boot_id() -> str:
    """This machine's boot id (the harness knows by it whether it can see the agent's PID itself)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def proc_figures(pid: int, loop_tid: int) -> Dict[str, Any]:
    """The process's own figures, as the harness's sampler reads them from outside: CPU seconds so
    far (all threads, and the loop's thread), resident memory, open descriptors and their limit,
    threads. Fields it cannot read are left out."""
    out: Dict[str, Any] = {"type": "proc", "t": time.time()}
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        out["cpu_s"] = (int(fields[11]) + int(fields[12])) / _TICKS
        out["threads"] = int(fields[17])
        with open(f"/proc/{pid}/task/{loop_tid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        out["main_cpu_s"] = (int(fields[11]) + int(fields[12])) / _TICKS
        with open(f"/proc/{pid}/statm") as f:
            out["rss_mb"] = round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 2)
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError, IndexError):
        pass
    out["fd_limit"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return out


def native_tid() -> int:
    return threading.get_native_id() if hasattr(threading, "get_native_id") else os.getpid()


def _line(record: Dict[str, Any]) -> bytes:
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()
