"""Redis beside the app: one the harness starts for the run (``[redis] start``), or one already running.

The started server listens on a free loopback port with a temporary directory and no persistence,
runs in the foreground as the harness's child and is stopped on every exit path. Either way the
app gets the URL in the environment variable ``[redis] env`` names.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from harness.config import RedisConfig
from harness.errors import BootError, ConfigError, UnreachableError
from harness.launcher import HOST, find_binary, free_port
from harness.processes import Managed, spawn, stderr_tail, stop_group
from harness.target import LOOPBACK

REDIS_HINT = "install it (`apt-get install redis-server` on Debian/Ubuntu) or point [redis] binary at it"


def redis_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or HOST, parts.port or 6379


def command(address: tuple[str, int], *args: str, timeout: float = 2.0) -> bytes:
    """One Redis command over a plain socket (RESP), its reply's payload (a bulk string or a status)."""
    with socket.create_connection(address, timeout=timeout) as s:
        s.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a.encode()) for a in args))
        f = s.makefile("rb")
        head = f.readline()
        if head.startswith(b"$"):
            n = int(head[1:])
            return f.read(n) if n >= 0 else b""
        if head.startswith(b"-"):
            raise ConnectionError(head[1:].strip().decode(errors="replace"))
        return head[1:].strip()


class RedisServer(Managed):
    """The Redis of a run: started here (``start``), or checked (``url``); ``url`` is what the app gets."""

    def __init__(self, config: RedisConfig, allow_remote: bool = False):
        self.config = config
        self.url = config.url or f"redis://{HOST}:{free_port()}/0"  # known before start: the app's env carries it
        self.proc: subprocess.Popen | None = None
        self.tmp: tempfile.TemporaryDirectory | None = None
        if config.url and redis_address(config.url)[0] not in LOOPBACK and not allow_remote:
            raise ConfigError(f"[redis] url = {config.url!r} is not on loopback; pass --allow-remote if you really "
                              "mean to use a Redis on another host")

    @property
    def address(self) -> tuple[str, int]:
        return redis_address(self.url)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc and self.proc.poll() is None else 0

    def start(self) -> None:
        if self.config.start:
            exe = find_binary(self.config.binary, "[redis] binary", REDIS_HINT)
            port = self.address[1]
            self.tmp = tempfile.TemporaryDirectory(prefix="fastapi-harness-redis-")
            log = Path(self.tmp.name) / "redis.log"
            with open(log, "wb") as out:
                self.proc = spawn([exe, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
                                   "--dir", self.tmp.name, "--daemonize", "no", "--protected-mode", "yes"],
                                  stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + 10.0
            while True:
                if self.proc.poll() is not None:
                    raise BootError(f"redis-server exited at start (code {self.proc.returncode}): "
                                    f"{stderr_tail(log, 3).strip()}")
                try:
                    command(self.address, "PING", timeout=0.5)
                    return
                except OSError:
                    if time.monotonic() > deadline:
                        raise BootError("redis-server did not answer PING within 10 s") from None
                    time.sleep(0.05)
        try:
            command(self.address, "PING")
        except (OSError, ConnectionError) as e:
            raise UnreachableError(f"no Redis answers at {self.url} ({e}); start it or fix [redis] url") from None

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, grace_s=3.0)
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None

    def describe(self) -> dict[str, object]:
        try:
            version = next((ln.split(":", 1)[1] for ln in command(self.address, "INFO", "server").decode().splitlines()
                            if ln.startswith("redis_version:")), "")
        except (OSError, ConnectionError):
            version = ""
        return {"url": self.url, "started": self.config.start, "pid": self.pid or None, "version": version.strip(),
                "env": self.config.env}
