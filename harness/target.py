"""What the load is aimed at: one interface, one class per kind of target.

The session, the sampler and the run's checks use only this interface (as httpx's client
uses only its transport's). Kinds today: ``launcher.LocalServer`` (uvicorn or gunicorn with N
workers, booted here) and ``ExternalTarget`` (a server already running, ``--url``). A new kind
(N instances behind a proxy, a server on another machine) is one new subclass.
"""

from __future__ import annotations

from typing import Any, Callable
from urllib.parse import urlsplit

import httpx

from harness.errors import ConfigError, UnreachableError
from harness.processes import Managed, tree_roles

HOST = "127.0.0.1"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Target(Managed):
    """A server to load. ``start`` raises a ``TargetError`` naming the cause and the fix."""

    has_agent = False  # its workers run the in-process agent

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the drivers connect to."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def start(self) -> None:
        """Boot (or check) the target; return once it answers."""
        raise NotImplementedError

    def alive(self) -> bool:
        return True

    def death_note(self) -> tuple[str, str]:
        """Why it is no longer alive (e.g. "code 3"), and the tail of its log, for the error message."""
        return "it stopped answering", ""

    def processes(self) -> list[tuple[int, str]]:
        """(pid, role) of each process to sample now; roles: master, worker."""
        return []

    def worker_pids(self) -> list[int]:
        """The processes that serve requests, now."""
        return [pid for pid, role in self.processes() if role == "worker"]

    def describe(self) -> dict[str, Any]:
        """run.json's ``server`` entry."""
        raise NotImplementedError

    def watchers(self, t0: float, on_record: Callable[[Any], None]) -> list[Any]:
        """Threads (``sampling.services.Watcher``) that watch what this target runs besides the app
        (a proxy), each calling ``on_record`` once a second; the session starts and stops them."""
        return []


def loopback_address(url: str, allow_remote: bool) -> tuple[str, int]:
    """(host, port) of ``url``; refuses non-loopback hosts unless allowed."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"--url {url!r}: expected http://HOST:PORT (plain HTTP/1.1), e.g. http://127.0.0.1:8000")
    host, port = parts.hostname, parts.port or 80
    if host not in LOOPBACK and not allow_remote:
        raise ConfigError(
            f"--url {url!r} is not on loopback; load goes to 127.0.0.1 by default. "
            "Pass --allow-remote if you really mean to load another host you own"
        )
    return (HOST if host == "localhost" else host), port


class ExternalTarget(Target):
    """A server that is already running; with ``pid``, its process tree is sampled too."""

    def __init__(self, url: str, pid: int = 0, allow_remote: bool = False):
        self.given = url
        self.pid = pid
        self.host, self.port = loopback_address(url, allow_remote)

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def start(self) -> None:
        try:
            httpx.get(self.url + "/", timeout=3.0)
        except httpx.HTTPError as e:
            raise UnreachableError(
                f"nothing answers at {self.given} ({type(e).__name__}); start the server first or fix --url"
            ) from None

    def processes(self) -> list[tuple[int, str]]:
        return tree_roles(self.pid) if self.pid else []

    def describe(self) -> dict[str, Any]:
        return {"kind": "external", "url": self.given, "pid": self.pid or None}
