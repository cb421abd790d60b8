"""The harness's end of the agent's TCP stream: agents of an app the harness did not boot.

``fastapi-harness run --url … --agent-sink [HOST:]PORT`` listens here with a per-run token and
prints what to start the app with (``python -m fastapi_harness_agent --sink tcp://…/TOKEN -- …``).
Each agent's lines go to ``agent-<pid>.jsonl`` in the run directory, exactly as a booted
worker's agent writes them, so every report and rule reads them unchanged. Its ``proc`` lines
(the process's own figures) become the worker's samples where the harness cannot see its PID
(another machine); on this machine the PID is sampled like a booted worker's. A tick sent
twice (the agent resends what a dropped connection may not have delivered) is kept once.
"""

from __future__ import annotations

import hmac
import json
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

from harness.agent.sink import boot_id
from harness.records import ProcessSample

ACCEPT_POLL_S = 0.2
HELLO_TIMEOUT_S = 5.0


class _Agent:
    """What one connected agent said about itself, and its last two process readings."""

    def __init__(self, pid: int, host: str, local: bool):
        self.pid, self.host, self.local = pid, host, local
        self.seq = 0  # its last tick written
        self.proc: dict[str, Any] | None = None
        self.used: dict[str, Any] | None = None  # the reading the last sample's rates ran from


class AgentSink:
    """Listens on ``host:port`` (0: any free port) in a thread; one more thread per connected agent."""

    def __init__(self, host: str, port: int, run_dir: Path):
        self.run_dir = run_dir
        self.token = secrets.token_hex(8)
        self.sock = socket.create_server((host, port))
        self.sock.settimeout(ACCEPT_POLL_S)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.agents: dict[int, _Agent] = {}
        self.refused = 0  # connections that did not give this run's token
        self._boot = boot_id()
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._listener = threading.Thread(target=self._accept, name="agent-sink", daemon=True)

    @property
    def url(self) -> str:
        return f"tcp://{self.host}:{self.port}/{self.token}"

    def start(self) -> None:
        self._listener.start()

    def stop(self) -> None:
        self._halt.set()
        self.sock.close()
        with self._lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for t in [self._listener, *self._threads]:
            if t.is_alive():
                t.join(timeout=5.0)

    def local_pids(self) -> list[int]:
        """Agents on this machine: the sampler reads their processes itself."""
        with self._lock:
            return [a.pid for a in self.agents.values() if a.local]

    def remote_samples(self) -> list[ProcessSample]:
        """A sample of each agent on another machine, from the figures it sent (rates since the last call)."""
        out = []
        with self._lock:
            agents = [a for a in self.agents.values() if not a.local and a.proc]
        for a in agents:
            now, last = a.proc, a.used
            if last is None or now is last or now["t"] <= last["t"]:
                continue
            span = now["t"] - last["t"]
            a.used = now

            def rate(key: str) -> float | None:
                return round(max(0.0, now[key] - last[key]) / span, 4) if key in now and key in last else None

            out.append(ProcessSample(a.pid, "worker", rate("cpu_s") or 0.0, now.get("rss_mb", 0.0),
                                     now.get("fds", 0), now.get("fd_limit"), None, None, None, rate("main_cpu_s")))
        return out

    def _accept(self) -> None:
        while not self._halt.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), name="agent-sink-conn", daemon=True)
            with self._lock:
                self._conns.append(conn)
                self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(HELLO_TIMEOUT_S)
            reader = conn.makefile("rb")
            try:
                hello = json.loads(reader.readline() or b"{}")
            except (OSError, ValueError):
                hello = {}
            if hello.get("type") != "sink" or not hmac.compare_digest(str(hello.get("token", "")), self.token):
                with self._lock:
                    self.refused += 1
                return
            conn.settimeout(None)
            pid = int(hello.get("pid") or 0)
            with self._lock:
                agent = self.agents.get(pid) or _Agent(pid, str(hello.get("host", "")),
                                                       bool(self._boot) and hello.get("boot_id") == self._boot)
                self.agents[pid] = agent
            with open(self.run_dir / f"agent-{pid}.jsonl", "ab") as out:
                try:
                    for line in reader:
                        if not line.endswith(b"\n"):
                            break  # cut off by a dropped connection: the agent sends it again
                        self._take(agent, line, out)
                except OSError:
                    pass

    def _take(self, agent: _Agent, line: bytes, out: Any) -> None:
        if line.startswith(b'{"type":"proc"'):
            try:
                agent.proc = json.loads(line)
            except ValueError:
                return
            if agent.used is None:
                agent.used = agent.proc
            return
        if line.startswith(b'{"type":"tick"'):
            seq = json.loads(line).get("seq", 0)
            if seq <= agent.seq:
                return  # sent again after a reconnect
            agent.seq = seq
        out.write(line)
        out.flush()

    def wait_for_agent(self, timeout_s: float, ready: Any) -> bool:
        """Until an agent has connected and ``ready()`` holds (the app answers), at most ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.agents and ready():
                return True
            time.sleep(0.2)
        return False
