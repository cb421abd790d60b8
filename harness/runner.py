"""The orchestrator: the only place that owns time and processes.

``run_scenario`` starts the target (or attaches to it), opens a session, hands it to a load
plan (a fixed load, the knee search, or another tool), and tears everything down in reverse
order on every exit path. It returns the run's final status; errors propagate after cleanup
with the run directory already holding whatever was measured.
"""

from __future__ import annotations

import contextlib
import os
import signal
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from harness.cache import RedisServer
from harness.config import Scenario
from harness.errors import BootError, HarnessError, Interrupted, TargetDiedError
from harness.launcher import LocalServer, raise_fd_limit
from harness.load.jtl import join_parts
from harness.load.manager import default_drivers
from harness.proxy import ProxiedServers
from harness.recording import RunWriter
from harness.records import Progress
from harness.sampling.host import machine_info
from harness.session import Session
from harness.target import ExternalTarget, Target


class LoadPlan(Protocol):
    """What a run does with its session: drive a fixed load, search for the knee, let a tool drive."""

    mode: str  # run.json's mode

    def options(self) -> dict[str, Any] | None:
        """What run.json records of the plan's options."""

    def __call__(self, session: Session) -> None: ...


class FixedLoad:
    """The scenario's own load, once (profiling at ``[agent] profile_at`` when set)."""

    mode = "run"

    def options(self) -> None:
        return None

    def __call__(self, session: Session) -> None:
        session.drive(session.scenario, 0.0, profile_at=session.scenario.agent.profile_at_s)


class ExternalLoad:
    """Another load tool drives (``--driver-cmd``); its result file is read into the run."""

    mode = "run"

    def __init__(self, template: str, say: Callable[[str], None]):
        self.template, self.say = template, say

    def options(self) -> None:
        return None  # the session records the command as it ran

    def __call__(self, session: Session) -> None:
        session.drive_external(self.template, self.say)


def target_for(scenario: Scenario, run_dir: Path, allow_remote: bool = False, redis: RedisServer | None = None
               ) -> Target:
    """The target a scenario names: a server already running (``url``), else its app booted here,
    as ``[app] instances`` behind ``[proxy]`` when it names one; the app gets Redis's URL."""
    if scenario.url:
        return ExternalTarget(scenario.url, scenario.pid, allow_remote, scenario.agent.sink, run_dir,
                              scenario.agent.sink_wait_s)
    env = {scenario.redis.env: redis.url} if redis is not None else {}
    if scenario.proxy.kind == "nginx":
        return ProxiedServers(scenario.app, scenario.proxy, run_dir, scenario.agent, env)
    return LocalServer(scenario.app, run_dir, scenario.agent, env)


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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_scenario(
    scenario: Scenario,
    run_dir: Path,
    plan: LoadPlan | None = None,
    progress: Callable[[Progress], None] = lambda p: None,
    allow_remote: bool = False,
    drivers: int = 0,
    jtl: Path | None = None,
    target: Target | None = None,
) -> str:
    """Run ``plan`` (default: the scenario's own load) against the scenario's target into ``run_dir``;
    return the status. ``target`` replaces the one the scenario names (a fake, in tests)."""
    plan = plan or FixedLoad()
    writer = RunWriter(run_dir)
    limits = raise_fd_limit()
    writer.write_run(
        started_at=_now(), status="starting", mode=plan.mode, machine=machine_info(), scenario=scenario.to_dict(),
        limits={"nofile_soft_before": limits.soft_before, "nofile_soft": limits.soft, "nofile_hard": limits.hard},
        diagnose=plan.options() if plan.mode == "diagnose" else None,
    )
    status = "failed"
    try:
        with signals_as_interrupts(), contextlib.ExitStack() as stack:
            try:
                redis = RedisServer(scenario.redis, allow_remote) if scenario.redis.enabled else None
                session = Session(scenario, writer, target or target_for(scenario, writer.path, allow_remote, redis),
                                  stack, drivers or scenario.load.drivers or default_drivers(), progress,
                                  jtl is not None, redis)
                try:
                    session.open()
                    plan(session)
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
            except BootError:
                status = "boot-failed"
                raise
    finally:
        with shielded():
            if jtl is not None:
                parts = sorted(str(p) for p in writer.path.glob("driver-*.jtl.part"))
                writer.write_run(jtl={"path": str(jtl), "lines": join_parts(parts, str(jtl))})
                for part in parts:
                    os.unlink(part)
            writer.write_run(status=status, ended_at=_now())
            writer.close()
    return status
