"""A session: a started target, sampled, at which fleets of drivers are run one after another.

The session knows its target only through the ``Target`` interface, so the same session drives
a server booted here, one already running, or a fake in the tests. Load plans (a fixed load, the
knee search, another tool) take a session and call ``drive``; the session records everything
into the run directory as it goes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import time
from typing import Any, Callable

import psutil

from harness.cache import RedisServer
from harness.config import Scenario
from harness.errors import DriverError, TargetDiedError
from harness.histogram import Histogram
from harness.load.cluster import Node, RayCluster
from harness.load.manager import DriverFleet, check_driver, shard_plans
from harness.processes import spawn, stderr_tail, stop_group
from harness.recording import AGENT_CONTROL, RunWriter
from harness.records import DriverRecord, DriverSecond, Event, Progress
from harness.sampling.database import PgWatcher, check_postgres, db_port, local_server
from harness.sampling.pyspy import PySpyWindow
from harness.sampling.sampler import Sampler
from harness.sampling.services import RedisWatcher, Watcher
from harness.target import Target

START_DELAY_S = 1.0  # drivers start together this long after launch (imports take ~0.2 s)
POLL_S = 0.25


class LiveStats:
    """Running totals from driver records, for the progress line (bounded memory)."""

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.last_t = -1
        self._window: dict[int, tuple[int, Histogram, float]] = {}

    def add(self, record: DriverRecord) -> None:
        if not isinstance(record, DriverSecond):
            return
        n = sum(record.outcomes.values())
        self.requests += n
        self.errors += n - record.outcomes.get("ok", 0)
        count, hist, span = self._window.get(record.t, (0, Histogram(), 0.0))
        self._window[record.t] = (count + n, hist.merge(record.hist), max(span, record.span))
        self.last_t = max(self.last_t, record.t)
        for old in [k for k in self._window if k < self.last_t - 3]:
            del self._window[old]

    def latest(self, since: float = 0.0) -> tuple[float | None, float | None]:
        """(req/s, p99 ms) of the newest second seen from ``since`` on; None before one (or p99 of none)."""
        if self.last_t < since:
            return None, None
        count, hist, span = self._window[self.last_t]
        return count / max(span, 1e-3), hist.percentile(0.99) / 1000.0 if count else None


class Session:
    """A started, sampled target; ``drive`` runs one fleet of drivers at it and returns their records."""

    def __init__(self, scenario: Scenario, writer: RunWriter, target: Target, stack: contextlib.ExitStack,
                 drivers: int, progress: Callable[[Progress], None] = lambda p: None, jtl: bool = False,
                 redis: RedisServer | None = None):
        self.scenario = scenario
        self.writer = writer
        self.target = target
        self.stack = stack
        self.drivers = drivers
        self.progress = progress
        self.jtl = jtl
        self.redis = redis
        self.live = LiveStats()
        self.fleet: DriverFleet | None = None
        self.external: subprocess.Popen | None = None
        self.t0 = 0.0
        self.profiles = 0
        self.profile_seconds = 0.0
        self.pyspy: PySpyWindow | None = None
        self.budget_s: float | None = None  # a search's --max-time, for the progress line
        self.cluster: RayCluster | None = None  # --cluster: the drivers run on its nodes

    @property
    def agent_on(self) -> bool:
        return self.target.has_agent

    def open(self) -> None:
        """Check the database, start Redis and the target, start the samplers."""
        scenario, writer = self.scenario, self.writer
        database = scenario.database
        if database.is_postgres:
            writer.write_run(database={"url": database.url, "max_connections": check_postgres(database.url)})
        if self.redis is not None:
            self.stack.enter_context(self.redis)
            writer.write_run(redis=self.redis.describe())
        if scenario.load.cluster:
            self.cluster = self.stack.enter_context(RayCluster(scenario.load.cluster, scenario.load.nodes))
            self.drivers = (scenario.load.drivers or 1) * len(self.cluster.nodes)
        self.stack.enter_context(self.target)
        writer.write_run(server=self.target.describe())
        self.t0 = time.time() + START_DELAY_S
        writer.write_run(t0=self.t0, drivers=self.drivers)
        port = db_port(database.url) if database.url else None
        database_pids = local_server(port) if port else list
        cache_pids = local_server(self.redis.address[1]) if self.redis is not None else list
        sampler = Sampler(
            processes=lambda: (self.target.processes() + [(pid, "driver") for pid in self.driver_pids()]
                               + [(pid, "database") for pid in database_pids()] + [(os.getpid(), "harness")]
                               + [(pid, "cache") for pid in cache_pids()]
                               + [(pid, "profiler") for pid in (self.pyspy.pids if self.pyspy else ())]),
            t0=self.t0, interval_s=scenario.sampling.interval_s, on_sample=writer.append, on_event=writer.append,
            db_port=port, remote=self.target.remote_samples,
        )
        sampler.start()
        self.stack.callback(sampler.stop)
        watchers = self.target.watchers(self.t0, writer.append)
        if self.redis is not None:
            watchers.append(RedisWatcher(self.redis.address, self.t0, writer.append))
        if database.is_postgres:
            watchers.append(PgWatcher(database.url, self.t0, writer.append))
        for watcher in watchers:
            watcher.start()
            self.stack.callback(self._stop_watcher, watcher)

    def _node_lost(self, node: Node, why: str) -> None:
        """A load node stopped answering: the run is degraded from now (its share is not sent elsewhere)."""
        node.lost_at = round(self.now(), 3)
        self.event("node-lost", node=node.index, host=node.host, why=why)
        assert self.cluster is not None
        self.writer.write_run(cluster=self.cluster.describe())

    def _stop_watcher(self, watcher: Watcher) -> None:
        watcher.stop()
        if watcher.error:
            self.writer.append(Event(watcher.failed_t, "watcher-stopped", why=f"{watcher.service}: {watcher.error}"))

    def driver_pids(self) -> list[int]:
        if self.external is not None:
            try:
                return [self.external.pid, *(c.pid for c in psutil.Process(self.external.pid).children(recursive=True))]
            except psutil.Error:
                return []
        return self.fleet.pids if self.fleet else []

    def now(self) -> float:
        """Seconds since t0."""
        return time.time() - self.t0

    def next_start(self) -> float:
        """The next whole second since t0 that leaves drivers time to start."""
        return float(max(0, math.ceil(self.now() + 0.6)))

    def event(self, kind: str, **fields: Any) -> None:
        self.writer.append(Event(round(self.now(), 3) if self.t0 else None, kind, **fields))

    def drive(self, scenario: Scenario, start_s: float, profile_at: float = 0.0,
              deadline: float | None = None, step: str = "") -> list[DriverRecord]:
        """Run one fleet for ``scenario``'s load from ``start_s``; return its driver records.

        ``deadline`` (seconds since t0): the drivers are stopped then, however much is still
        queued or in flight (they abort what is left a second later). ``step`` names this fleet's
        part of a search on the progress line, whose clock is then the step's and the budget's.
        """
        records: list[DriverRecord] = []

        def on_record(r: DriverRecord) -> None:
            self.writer.append(r)
            self.live.add(r)
            records.append(r)

        host, port = self.target.address
        plans = shard_plans(scenario, host, port, self.t0, self.drivers, start_s,
                            jtl_dir=self.writer.path if self.jtl else None)
        self.fleet = (self.cluster.fleet(plans, on_record, self._node_lost) if self.cluster is not None
                      else DriverFleet(plans, on_record, self.writer.path))
        planned = scenario.planned_duration_s
        with self.fleet as fleet:
            if self.cluster is not None:  # which node runs which drivers, now that they do
                self.writer.write_run(cluster=self.cluster.describe())
            while not fleet.finished():
                if profile_at and self.agent_on and self.now() >= profile_at:
                    self.request_profile(self.scenario.agent.profile_for_s)
                    profile_at = 0.0
                if deadline is not None and self.now() >= deadline:
                    fleet.stop()
                    deadline = None
                self.check_target()
                check_driver(fleet)
                rps, p99 = self.live.latest(since=start_s)
                now = self.now()
                self.progress(Progress(max(0.0, now), start_s + planned if planned else None, rps, p99,
                                       self.live.requests, self.live.errors, scenario.planned_requests, step,
                                       max(0.0, now - start_s), planned, self.budget_s))
                time.sleep(POLL_S)
            check_driver(fleet)
        if self.profiles and profile_at == 0.0:
            self.wait_for_profiles()
        return records

    def drive_external(self, template: str, say: Callable[[str], None]) -> None:
        """Let another load tool drive the target; read its results into the recording afterwards."""
        from harness.interop.ingest import append_results

        results = self.writer.path / "external.jtl"
        url, (host, port) = self.target.url, self.target.address
        cmd = (template.replace("{url}", url).replace("{host}", host).replace("{port}", str(port))
               .replace("{jtl}", str(results)))
        self.writer.write_run(driver_cmd=cmd)
        say(f"driving with: {cmd}")
        log_path = self.writer.path / "driver-cmd.log"
        with open(log_path, "wb") as log:
            try:
                self.external = spawn(cmd, shell=True, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      cwd=os.getcwd())
            except OSError as e:
                raise DriverError(f"--driver-cmd could not start ({e}); check the command") from None
        self.stack.callback(stop_group, self.external)
        while self.external.poll() is None:
            self.check_target()
            self.progress(Progress(max(0.0, self.now()), None, None, None, 0, 0, None))
            time.sleep(POLL_S)
        if self.external.returncode != 0:
            raise DriverError(f"--driver-cmd exited with code {self.external.returncode}: "
                              f"{stderr_tail(log_path, 5).strip()}")
        if not results.is_file():
            raise DriverError(f"--driver-cmd finished but wrote no results at {results}; pass {{jtl}} where the tool "
                              "writes its result file")
        res = append_results(self.writer, results, self.t0, (-1.0, self.now()))
        if res.problems:
            say(f"{results.name}: kept what parsed; skipped {dict(res.problems)}")

    def check_target(self) -> None:
        if not self.target.alive():
            self.event("target-died")
            why, log = self.target.death_note()
            raise TargetDiedError(f"the target exited mid-run ({why}); partial results kept. Its stderr:\n{log}")

    def request_profile(self, seconds: float) -> None:
        """Ask every worker's agent to profile the next ``seconds`` (the agents poll a control file)."""
        self.profiles += 1
        self.profile_seconds = seconds
        tmp = self.writer.path / (AGENT_CONTROL + ".tmp")
        tmp.write_text(json.dumps({"id": self.profiles, "seconds": seconds}))
        tmp.replace(self.writer.path / AGENT_CONTROL)
        self.event("profile-requested", seconds=seconds, id=self.profiles)
        workers = self.target.worker_pids()
        if workers:
            self.pyspy = PySpyWindow(workers, self.now(), seconds, self.writer.path, self.profiles)
            self.stack.callback(self.pyspy.stop)

    def wait_for_profiles(self) -> None:
        """Keep the target up until each worker has written its requested profile (bounded)."""
        if self.pyspy is not None:
            for profile in self.pyspy.finish():
                self.writer.append(profile)
            self.pyspy = None
        deadline = time.monotonic() + self.profile_seconds + 10
        waiting = set(self.target.worker_pids())
        while waiting and time.monotonic() < deadline:
            for pid in list(waiting):
                with contextlib.suppress(OSError):
                    if '"type":"profile"' in (self.writer.path / f"agent-{pid}.jsonl").read_text():
                        waiting.discard(pid)
            time.sleep(0.2)
