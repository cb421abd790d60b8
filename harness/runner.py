"""The orchestrator: the only place that owns time and processes.

``run_scenario`` boots (or attaches to) the target, starts the sampler and the drivers,
reports progress, and tears everything down in reverse order on every exit path. It
returns the run directory's final status; errors propagate after cleanup with the run
directory already holding whatever was measured.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import httpx
import psutil

from harness.config import Scenario
from harness.diagnose import DiagnoseOptions, search_knee
from harness.errors import ConfigError, DriverError, HarnessError, Interrupted, TargetDiedError, UnreachableError
from harness.launcher import HOST, Server, raise_fd_limit, stderr_tail
from harness.load.histogram import Histogram
from harness.load.jtl import join_parts
from harness.load.manager import DriverFleet, check_driver, default_drivers, shard_plans
from harness.recording import AGENT_CONTROL, RunWriter
from harness.sampling.database import PgWatcher, check_postgres, db_port
from harness.sampling.sampler import Sampler

START_DELAY_S = 1.0  # drivers start together this long after launch (imports take ~0.2 s)
KEY_PACKAGES = ("fastapi", "starlette", "uvicorn", "gunicorn", "pydantic", "httptools", "uvloop", "sqlalchemy", "psutil")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Progress:
    elapsed_s: float
    planned_s: float | None
    rps: float
    p99_ms: float
    requests: int
    errors: int
    planned_requests: int | None


class LiveStats:
    """Running totals from driver records, for the progress line (bounded memory)."""

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.last_t = -1
        self._window: dict[int, tuple[int, Histogram, float]] = {}

    def add(self, record: dict[str, Any]) -> None:
        if record.get("type") != "second":
            return
        outcomes = record.get("outcomes", {})
        n = sum(outcomes.values())
        self.requests += n
        self.errors += n - outcomes.get("ok", 0)
        t = int(record["t"])
        count, hist, span = self._window.get(t, (0, Histogram(), 0.0))
        self._window[t] = (count + n, hist.merge(Histogram.from_json(record.get("hist"))), max(span, record.get("span", 1.0)))
        self.last_t = max(self.last_t, t)
        for old in [k for k in self._window if k < self.last_t - 3]:
            del self._window[old]

    def latest(self) -> tuple[float, float]:
        """(req/s, p99 ms) of the newest second seen."""
        if self.last_t < 0:
            return 0.0, 0.0
        count, hist, span = self._window[self.last_t]
        return count / max(span, 1e-3), hist.percentile(0.99) / 1000.0


def machine_info() -> dict[str, Any]:
    """The host, interpreter and key package versions, for run.json."""
    versions = {}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
        "harness_packages": versions,
    }


def check_url(url: str, allow_remote: bool) -> tuple[str, int]:
    """(host, port) of a running target; refuses non-loopback hosts unless allowed."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"--url {url!r}: expected http://HOST:PORT (plain HTTP/1.1), e.g. http://127.0.0.1:8000")
    host, port = parts.hostname, parts.port or 80
    if host not in LOOPBACK and not allow_remote:
        raise ConfigError(
            f"--url {url!r} is not on loopback; load goes to 127.0.0.1 by default. "
            "Pass --allow-remote if you really mean to load another host you own"
        )
    try:
        httpx.get(f"http://{host}:{port}/", timeout=3.0)
    except httpx.HTTPError as e:
        raise UnreachableError(
            f"nothing answers at {url} ({type(e).__name__}); start the server first or fix --url"
        ) from None
    return ("127.0.0.1" if host == "localhost" else host), port


def check_overlap(first: float, last: float, t0: float, sampled_until: float, start: float = -1.0) -> None:
    """Refuse results whose clock does not overlap the sampled window (taken elsewhere, or at another time)."""
    lo, hi = t0 + start, t0 + sampled_until + 1
    inside = max(0.0, min(last, hi) - max(first, lo))
    if first > last or inside < 0.5 * max(last - first, 1e-3):
        when = lambda x: datetime.fromtimestamp(x, timezone.utc).isoformat(timespec="seconds")  # noqa: E731
        raise ConfigError(f"the results run from {when(first)} to {when(last)}, but the app was sampled from {when(lo)} "
                          f"to {when(hi)}; they do not overlap — were they taken against this run, on this machine's clock?")


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def request_profile(run_dir: Path, ident: int, seconds: float) -> None:
    """Ask every worker's agent to profile the next ``seconds`` (the agents poll this file)."""
    tmp = run_dir / (AGENT_CONTROL + ".tmp")
    tmp.write_text(json.dumps({"id": ident, "seconds": seconds}))
    tmp.replace(run_dir / AGENT_CONTROL)


def wait_for_profiles(run_dir: Path, pids: list[int], timeout_s: float) -> None:
    """Keep the target up until each worker has written its requested profile (bounded)."""
    deadline = time.monotonic() + timeout_s
    waiting = set(pids)
    while waiting and time.monotonic() < deadline:
        for pid in list(waiting):
            try:
                if '"type":"profile"' in (run_dir / f"agent-{pid}.jsonl").read_text():
                    waiting.discard(pid)
            except OSError:
                pass
        time.sleep(0.2)


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """Turn SIGTERM into Interrupted (SIGINT is KeyboardInterrupt already) in the main thread."""

    def on_term(signum: int, frame: Any) -> None:
        raise Interrupted("stopped by SIGTERM; partial results kept")

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Ignore further Ctrl-C/SIGTERM while tearing down, so cleanup always completes."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old[0])
        signal.signal(signal.SIGTERM, old[1])


def run_scenario(
    scenario: Scenario,
    run_dir: Path,
    progress: Callable[[Progress], None] = lambda p: None,
    allow_remote: bool = False,
    drivers: int = 0,
    diagnose: DiagnoseOptions | None = None,
    say: Callable[[str], None] = lambda line: None,
    jtl: Path | None = None,
    driver_cmd: str = "",
) -> str:
    """Run ``scenario`` (or, with ``diagnose``, search its load for the knee) into ``run_dir``; return the status."""
    writer = RunWriter(run_dir)
    limits = raise_fd_limit()
    writer.write_run(
        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        status="starting", mode="diagnose" if diagnose else "run",
        machine=machine_info(),
        scenario=scenario.to_dict(),
        limits={"nofile_soft_before": limits.soft_before, "nofile_soft": limits.soft, "nofile_hard": limits.hard},
        diagnose=dataclasses.asdict(diagnose) if diagnose else None,
    )
    status = "failed"
    try:
        with signals_as_interrupts(), contextlib.ExitStack() as stack:
            try:
                session = Session(scenario, writer, progress, drivers or scenario.load.drivers or default_drivers(), stack,
                                  jtl=jtl is not None)
                try:
                    session.open(allow_remote)
                    if driver_cmd:
                        session.drive_external(driver_cmd, say)
                    elif diagnose:
                        search_knee(session, scenario, diagnose, say)
                    else:
                        session.drive(scenario, 0.0, profile_at=scenario.agent.profile_at_s)
                except (KeyboardInterrupt, HarnessError) as e:
                    session.event("stopped", why=type(e).__name__)
                    raise
                finally:
                    with shielded():
                        stack.close()
                status = "completed"
            except KeyboardInterrupt:
                status = "interrupted"
                raise Interrupted("interrupted by Ctrl-C; partial results kept") from None
            except Interrupted:
                status = "interrupted"
                raise
            except TargetDiedError:
                status = "target-died"
                raise
    finally:
        with shielded():
            if jtl is not None:
                parts = sorted(str(p) for p in writer.path.glob("driver-*.jtl.part"))
                writer.write_run(jtl={"path": str(jtl), "lines": join_parts(parts, str(jtl))})
                for part in parts:
                    os.unlink(part)
            writer.write_run(status=status, ended_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
            writer.close()
    return status


class Session:
    """A booted (or attached) target, sampled, at which fleets of drivers are run one after another."""

    def __init__(self, scenario: Scenario, writer: RunWriter, progress: Callable[[Progress], None], drivers: int,
                 stack: contextlib.ExitStack, jtl: bool = False):
        self.scenario = scenario
        self.writer = writer
        self.progress = progress
        self.drivers = drivers
        self.stack = stack
        self.live = LiveStats()
        self.server: Server | None = None
        self.fleet: DriverFleet | None = None
        self.host, self.port, self.t0 = HOST, 0, 0.0
        self.profiles = 0
        self.jtl = jtl
        self.external: subprocess.Popen | None = None

    def open(self, allow_remote: bool) -> None:
        """Check the database, boot or attach to the target, start the samplers."""
        scenario, writer = self.scenario, self.writer
        database = scenario.database
        if database.is_postgres:
            writer.write_run(database={"url": database.url, "max_connections": check_postgres(database.url)})
        server_pid = scenario.pid
        if scenario.url:
            self.host, self.port = check_url(scenario.url, allow_remote)
            writer.write_run(server={"kind": "external", "url": scenario.url, "pid": scenario.pid or None})
        else:
            self.server = Server(scenario.app, writer.path, scenario.agent)
            writer.write_run(server={"kind": scenario.app.server, "workers": scenario.app.workers})
            self.stack.enter_context(self.server)
            self.port, server_pid = self.server.port, self.server.pid
            writer.write_run(server={
                "kind": scenario.app.server, "workers": scenario.app.workers, "command": self.server.command,
                "pid": self.server.pid, "url": self.server.url,
            })
        self.t0 = time.time() + START_DELAY_S
        writer.write_run(t0=self.t0, drivers=self.drivers)
        sampler = Sampler(
            server_pid=lambda: server_pid, driver_pids=self.driver_pids, t0=self.t0,
            interval_s=scenario.sampling.interval_s,
            on_sample=lambda s: writer.append("samples.jsonl", s),
            on_event=lambda e: writer.append("events.jsonl", e),
            db_port=db_port(database.url) if database.url else None,
        )
        sampler.start()
        self.stack.callback(sampler.stop)
        if database.is_postgres:
            watcher = PgWatcher(database.url, self.t0, lambda r: writer.append("db.jsonl", r))
            watcher.start()
            self.stack.callback(watcher.stop)

    def driver_pids(self) -> list[int]:
        if self.external is not None:
            try:
                return [self.external.pid, *(c.pid for c in psutil.Process(self.external.pid).children(recursive=True))]
            except psutil.Error:
                return []
        return self.fleet.pids if self.fleet else []

    def drive_external(self, template: str, say: Callable[[str], None]) -> None:
        """Let another load tool drive the target; read its results into the recording afterwards."""
        from harness.interop.results import read_results

        results = self.writer.path / "external.jtl"
        url = f"http://{self.host}:{self.port}"
        cmd = (template.replace("{url}", url).replace("{host}", self.host).replace("{port}", str(self.port))
               .replace("{jtl}", str(results)))
        self.writer.write_run(driver_cmd=cmd)
        say(f"driving with: {cmd}")
        log = open(self.writer.path / "driver-cmd.log", "wb")
        self.stack.callback(log.close)
        try:
            self.external = subprocess.Popen(cmd, shell=True, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True, cwd=os.getcwd())
        except OSError as e:
            raise DriverError(f"--driver-cmd could not start ({e}); check the command") from None
        self.stack.callback(_kill_group, self.external)
        while self.external.poll() is None:
            self.check_target()
            self.progress(Progress(max(0.0, self.now()), None, 0.0, 0.0, 0, 0, None))
            time.sleep(0.25)
        if self.external.returncode != 0:
            raise DriverError(f"--driver-cmd exited with code {self.external.returncode}: "
                              f"{stderr_tail(self.writer.path / 'driver-cmd.log', 5).strip()}")
        if not results.is_file():
            raise DriverError(f"--driver-cmd finished but wrote no results at {results}; pass {{jtl}} where the tool "
                              "writes its result file")
        res = read_results(results, self.t0)
        check_overlap(res.first, res.last, self.t0, self.now())
        for record in res.driver_records():
            self.writer.append("driver.jsonl", record)
        if res.problems:
            say(f"{results.name}: kept what parsed; skipped {dict(res.problems)}")

    @property
    def agent_on(self) -> bool:
        return self.server is not None and self.scenario.app.agent

    def now(self) -> float:
        """Seconds since t0."""
        return time.time() - self.t0

    def next_start(self) -> float:
        """The next whole second since t0 that leaves drivers time to start."""
        return float(max(0, math.ceil(self.now() + 0.6)))

    def event(self, kind: str, **fields: Any) -> None:
        self.writer.append("events.jsonl", {"t": round(self.now(), 3) if self.t0 else None, "kind": kind, **fields})

    def drive(self, scenario: Scenario, start_s: float, profile_at: float = 0.0,
              deadline: float | None = None) -> list[dict[str, Any]]:
        """Run one fleet for ``scenario``'s load from ``start_s``; return its driver records.

        ``deadline`` (seconds since t0): the drivers are stopped then, however much is still
        queued or in flight (they abort what is left a second later).
        """
        records: list[dict[str, Any]] = []

        def on_record(r: dict[str, Any]) -> None:
            self.writer.append("driver.jsonl", r)
            self.live.add(r)
            records.append(r)

        plans = shard_plans(scenario, self.host, self.port, self.t0, self.drivers, start_s,
                            jtl_dir=self.writer.path if self.jtl else None)
        self.fleet = DriverFleet(plans, on_record, self.writer.path)
        planned = scenario.planned_duration_s
        with self.fleet as fleet:
            while not fleet.finished():
                if profile_at and self.agent_on and self.now() >= profile_at:
                    self.request_profile(self.scenario.agent.profile_for_s)
                    profile_at = 0.0
                if deadline is not None and self.now() >= deadline:
                    fleet.stop()
                    deadline = None
                self.check_target()
                check_driver(fleet)
                rps, p99 = self.live.latest()
                self.progress(Progress(max(0.0, self.now()), start_s + planned if planned else None, rps, p99,
                                       self.live.requests, self.live.errors, scenario.planned_requests))
                time.sleep(0.25)
            check_driver(fleet)
        if self.profiles and profile_at == 0.0:
            self.wait_for_profiles()
        return records

    def check_target(self) -> None:
        server = self.server
        if server is not None and not server.alive():
            self.event("target-died")
            raise TargetDiedError(
                f"the target exited mid-run (code {server.proc.returncode}); partial results kept. "
                f"Its stderr:\n{stderr_tail(server.stderr_path)}"
            )

    def request_profile(self, seconds: float) -> None:
        """Ask every worker's agent to profile the next ``seconds``."""
        self.profiles += 1
        self.profile_seconds = seconds
        request_profile(self.writer.path, self.profiles, seconds)
        self.event("profile-requested", seconds=seconds, id=self.profiles)

    def wait_for_profiles(self) -> None:
        if self.server is not None:
            wait_for_profiles(self.writer.path, [p.pid for p in self.server.workers()], self.profile_seconds + 10)
