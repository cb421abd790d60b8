"""The host a run happens on: machine, interpreter and key package versions, for run.json."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

import psutil

KEY_PACKAGES = (
    "fastapi",
    "starlette",
    "uvicorn",
    "gunicorn",
    "pydantic",
    "httptools",
    "uvloop",
    "sqlalchemy",
    "psutil",
)


def machine_info() -> dict[str, Any]:
    """run.json's ``machine`` entry (``recording.Machine``'s fields)."""
    versions = {}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpus": os.cpu_count() or 1,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
        "harness_packages": versions,
    }


def listen_counters() -> dict[str, int]:
    """The kernel's counts, host-wide since boot, of connections a full accept queue turned away
    (``TcpExt`` ``ListenOverflows``, ``ListenDrops`` in /proc/net/netstat); empty where unreadable."""
    try:
        with open("/proc/net/netstat") as f:
            lines = [line.split() for line in f if line.startswith("TcpExt:")]
        fields = dict(zip(lines[0][1:], map(int, lines[1][1:])))
    except (OSError, IndexError, ValueError):
        return {}
    return {"overflows": fields.get("ListenOverflows", 0), "drops": fields.get("ListenDrops", 0)}


def accept_queue(ports: set[int]) -> int | None:
    """The longest accept queue now (connections the kernel accepted and the server has not) among the
    listening sockets on ``ports`` (/proc/net/tcp's rx_queue of a LISTEN socket); None when none is found."""
    longest = None
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) in ports:
                        queued = int(cols[4].split(":")[1], 16)
                        longest = max(longest or 0, queued)
        except (OSError, IndexError, ValueError, StopIteration):
            continue
    return longest
