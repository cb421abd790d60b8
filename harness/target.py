"""What the load is aimed at: one interface, one class per kind of target.

The session, the sampler and the run's checks use only this interface (as httpx's client
uses only its transport's). Kinds today: ``launcher.LocalServer`` (uvicorn or gunicorn with N
workers, booted here) and ``ExternalTarget`` (a server already running, ``--url``). A new kind
(N instances behind a proxy, a server on another machine) is one new subclass.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import httpx

from harness.config import sink_address
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

    def remote_samples(self) -> list[Any]:
        """``ProcessSample``s of workers on another machine, from what their agents sent."""
        return []

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
    """A server that is already running; with ``pid``, its process tree is sampled too. With ``sink``
    ("[HOST:]PORT"), the harness listens there for the agents of the app, started by hand with
    ``python -m fastapi_harness_agent --sink …`` (what to run is printed), and waits for the first."""

    def __init__(self, url: str, pid: int = 0, allow_remote: bool = False, sink: str = "",
                 run_dir: Path | None = None, sink_wait_s: float = 60.0,
                 say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)):
        self.given = url
        self.pid = pid
        self.host, self.port = loopback_address(url, allow_remote)
        self.sink_at = sink_address(sink) if sink else None
        if self.sink_at and self.sink_at[0] not in LOOPBACK and not allow_remote:
            raise ConfigError(f"--agent-sink {sink!r} listens beyond loopback; pass --allow-remote if agents on "
                              "other machines should reach it, or give a loopback address")
        self.run_dir, self.sink_wait_s, self.say = run_dir, sink_wait_s, say
        self.sink: Any = None

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def start(self) -> None:
        if self.sink_at is not None:
            self._await_agents()
        elif not self._answers():
            raise UnreachableError(f"nothing answers at {self.given}; start the server first or fix --url")

    def _answers(self) -> bool:
        try:
            httpx.get(self.url + "/", timeout=3.0)
            return True
        except httpx.HTTPError:
            return False

    def _await_agents(self) -> None:
        from harness.sampling.sink import AgentSink

        assert self.sink_at is not None and self.run_dir is not None
        try:
            self.sink = AgentSink(*self.sink_at, self.run_dir)
        except OSError as e:
            raise ConfigError(f"--agent-sink {self.sink_at[0]}:{self.sink_at[1]}: cannot listen there ({e.strerror}); "
                              "give a free port, or 0 for any") from None
        self.sink.start()
        self.say(f"agent sink: {self.sink.url}\n  start the app with its agent, e.g.\n"
                 f"  python -m fastapi_harness_agent --sink {self.sink.url} -- uvicorn MODULE:app --port {self.port}\n"
                 f"  waiting up to {self.sink_wait_s:g} s for an agent and for {self.given} to answer …")
        if not self.sink.wait_for_agent(self.sink_wait_s, self._answers):
            why = ("no agent connected" if not self.sink.agents else f"{self.given} did not answer")
            refused = f" ({self.sink.refused} connection(s) gave another run's token)" if self.sink.refused else ""
            raise UnreachableError(f"{why} within {self.sink_wait_s:g} s{refused}; start the app with "
                                   f"`python -m fastapi_harness_agent --sink {self.sink.url} -- uvicorn …` while the "
                                   "harness waits (or raise [agent] sink_wait)")

    def stop(self) -> None:
        if self.sink is not None:
            self.sink.stop()

    def processes(self) -> list[tuple[int, str]]:
        tree = tree_roles(self.pid) if self.pid else []
        known = {pid for pid, _ in tree}
        return tree + [(pid, "worker") for pid in (self.sink.local_pids() if self.sink else ()) if pid not in known]

    def remote_samples(self) -> list[Any]:
        return self.sink.remote_samples() if self.sink is not None else []

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "external", "url": self.given, "pid": self.pid or None}
        if self.sink is not None:
            out["agent_sink"] = f"tcp://{self.sink.host}:{self.sink.port}"
            out["agents"] = {str(a.pid): a.host for a in self.sink.agents.values()}
        return out
