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
