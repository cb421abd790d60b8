"""A throwaway PostgreSQL cluster for tests: initdb into a temp dir, pg_ctl on a free port, stopped after.

initdb refuses to run as root, so as root the cluster belongs to the ``postgres`` user
(created by Debian's postgresql package, which .ci/run installs when missing).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def bindir() -> Path:
    """The PostgreSQL server binaries: pg_config --bindir, else Debian's layout."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    if shutil.which("pg_config"):
        out = Path(subprocess.check_output(["pg_config", "--bindir"], text=True).strip())
        if (out / "initdb").exists():
            return out
    raise RuntimeError("PostgreSQL server binaries not found: apt-get install -y postgresql")


class Cluster:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="harness-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> "Cluster":
        if self.as_user:
            os.chmod(self.dir, 0o755)
            shutil.chown(self.dir, "postgres", "postgres")
        b = bindir()
        self._run(str(b / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=50 -c fsync=off"
        self._run(
            str(b / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.dir / "server.log"), "-w", "start"
        )
        return self

    def stop(self) -> None:
        try:
            self._run(str(bindir() / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
