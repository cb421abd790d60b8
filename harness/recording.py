"""The run directory and the frozen ``Recording`` read back from it.

Layout of a run directory (every stream is JSON lines, appended and flushed as the run goes,
so a crash or Ctrl-C keeps what was measured; record types in ``harness/records.py``)::

    run.json            RunInfo: format, machine, resolved scenario, limits, server, status
    driver.jsonl        one record per driver per second (harness/load/driver.py)
    samples.jsonl       one psutil sample per tick: processes by role, host CPU per core
    events.jsonl        worker started/exited, target died, stages, ...
    db.jsonl            the database server, once a second (PostgreSQL: pg_stat_activity by state)
    proxy.jsonl         the proxy in front of the instances, once a second (nginx: stub_status, error log)
    cache.jsonl         the cache server, once a second (Redis: INFO)
    cpu_profile.jsonl   each worker's CPU samples from outside (py-spy) in a profile window
    agent-PID.jsonl     each worker's in-process agent (format: harness/agent/__init__.py)
    profile-PID-N-*     profiles taken on command (pyinstrument HTML/JSON, yappi tables)
    server.*.log        the server's stdout and stderr
    driver-K.stderr.log each driver's stderr
    summary.json, report.html   written by the CLI from the Recording

``Recording`` is the one contract between the I/O side and analysis/report.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field, fields
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

from harness.config import Scenario
from harness.errors import ConfigError, RecordError
from harness.histogram import Histogram
from harness.records import (
    FORMAT,
    AgentRecord,
    CacheSample,
    CpuProfile,
    DbSample,
    DriverDone,
    DriverFault,
    DriverRecord,
    DriverSecond,
    Event,
    ProxySample,
    Sample,
    agent_record,
    agent_record_to_json,
    driver_record,
)

RUN_JSON, DRIVER_JSONL, SAMPLES_JSONL, EVENTS_JSONL = "run.json", "driver.jsonl", "samples.jsonl", "events.jsonl"
DB_JSONL, CPU_PROFILE_JSONL = "db.jsonl", "cpu_profile.jsonl"
PROXY_JSONL, CACHE_JSONL = "proxy.jsonl", "cache.jsonl"
AGENT_CONTROL = "agent-control.json"  # {"id": n, "seconds": s}: the agents profile a window when id grows
AGENT_GLOB = "agent-*.jsonl"  # one per worker PID, written by the in-process agent (harness/agent)
STREAM_OF: dict[type, str] = {DriverSecond: DRIVER_JSONL, DriverDone: DRIVER_JSONL, DriverFault: DRIVER_JSONL,
                              Sample: SAMPLES_JSONL, Event: EVENTS_JSONL, DbSample: DB_JSONL,
                              CpuProfile: CPU_PROFILE_JSONL, ProxySample: PROXY_JSONL, CacheSample: CACHE_JSONL}
WRITTEN = (DRIVER_JSONL, SAMPLES_JSONL, EVENTS_JSONL, DB_JSONL, CPU_PROFILE_JSONL, PROXY_JSONL, CACHE_JSONL)
Record = DriverRecord | Sample | Event | DbSample | CpuProfile | ProxySample | CacheSample


def default_run_dir(name: str, root: Path = Path("reports")) -> Path:
    """Where a run (or a comparison, or a diff) lands by default: reports/<YYYYmmdd-HHMMSS>-<name>/."""
    return root / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{name}"


@dataclass(frozen=True)
class Machine:
    hostname: str = ""
    platform: str = ""
    cpus: int = 1
    memory_gb: float = 0.0
    python: str = ""
    harness_packages: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerInfo:
    kind: str = ""  # uvicorn | gunicorn | external
    workers: int = 0
    command: tuple[str, ...] = ()
    pid: int | None = None
    url: str = ""
    instances: tuple[Mapping[str, Any], ...] = ()  # behind a proxy: each instance's own entry
    proxy: Mapping[str, Any] | None = None
    agent_sink: str = ""  # external, watched from inside: where its agents streamed to
    agents: Mapping[str, str] = field(default_factory=dict)  # their pids → hosts


@dataclass(frozen=True)
class RunInfo:
    """run.json: what ran, where, and how it ended."""

    scenario: Scenario
    format: int = FORMAT
    started_at: str = ""
    ended_at: str = ""
    status: str = "unknown"  # starting | completed | interrupted | target-died | failed
    mode: str = "run"  # run | diagnose | ingest
    machine: Machine = Machine()
    server: ServerInfo = ServerInfo()
    limits: Mapping[str, int] = field(default_factory=dict)
    t0: float = 0.0  # the epoch instant the load started; every relative time counts from it
    drivers: int = 0
    diagnose: Mapping[str, Any] | None = None  # the knee search's options
    database: Mapping[str, Any] | None = None
    redis: Mapping[str, Any] | None = None
    driver_cmd: str = ""
    jtl: Mapping[str, Any] | None = None
    ingested: Mapping[str, Any] | None = None
    cluster: Mapping[str, Any] | None = None  # --cluster: the address and each load node (clock offset, drivers, lost)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RunInfo:
        fmt = int(d.get("format", 1))
        if fmt > FORMAT:
            raise RecordError(f"run.json has format {fmt}, newer than this fastapi-harness reads ({FORMAT}); "
                              "upgrade fastapi-harness to read it")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise RecordError(f"run.json: unknown field(s) {', '.join(sorted(unknown))}")
        server = dict(d.get("server") or {})
        server["command"] = tuple(server.get("command") or ())
        server["instances"] = tuple(server.get("instances") or ())
        return cls(**{**d, "format": fmt, "scenario": Scenario.from_dict(d["scenario"]),
                      "machine": Machine(**(d.get("machine") or {})), "server": ServerInfo(**server)})


@dataclass(frozen=True)
class Second:
    """Everything the drivers saw in one second of the run, merged across drivers."""

    t: int
    span: float
    sent: int
    outcomes: dict[str, int]
    hist: Histogram
    lag_max_ms: float
    late: int
    dropped: int
    inflight: int
    conns: int
    users: int
    driver_cpu: tuple[float, ...]

    @property
    def completed(self) -> int:
        return sum(self.outcomes.values())

    @property
    def errors(self) -> int:
        return self.completed - self.outcomes.get("ok", 0)


@dataclass(frozen=True)
class Totals:
    """Every driver's ``done`` record summed (zeros when no driver finished)."""

    drivers_done: int
    sent: int
    aborted: int
    outcomes: dict[str, int]


def merge_seconds(records: tuple[DriverRecord, ...] | list[DriverRecord]) -> tuple[Second, ...]:
    """Per-second driver records merged across drivers, in time order."""
    by_t: dict[int, list[DriverSecond]] = {}
    for r in records:
        if isinstance(r, DriverSecond):
            by_t.setdefault(r.t, []).append(r)
    out = []
    for t in sorted(by_t):
        rs = by_t[t]
        outcomes: dict[str, int] = {}
        for r in rs:
            for k, n in r.outcomes.items():
                outcomes[k] = outcomes.get(k, 0) + n
        out.append(Second(
            t=t, span=max(r.span for r in rs), sent=sum(r.sent for r in rs), outcomes=outcomes,
            hist=Histogram.merged(r.hist for r in rs), lag_max_ms=max(r.lag_max_ms for r in rs),
            late=sum(r.late for r in rs), dropped=sum(r.dropped for r in rs), inflight=sum(r.inflight for r in rs),
            conns=sum(r.conns for r in rs), users=sum(r.users for r in rs),
            driver_cpu=tuple(r.cpu for r in sorted(rs, key=lambda r: r.driver)),
        ))
    return tuple(out)


@dataclass(frozen=True)
class Recording:
    """A finished (or interrupted) run, loaded from its directory."""

    run: RunInfo
    driver_records: tuple[DriverRecord, ...] = ()
    samples: tuple[Sample, ...] = ()
    events: tuple[Event, ...] = ()
    agents: Mapping[int, tuple[AgentRecord, ...]] = field(default_factory=dict)
    db: tuple[DbSample, ...] = ()
    cpu_profiles: tuple[CpuProfile, ...] = ()
    proxy: tuple[ProxySample, ...] = ()
    cache: tuple[CacheSample, ...] = ()
    path: Path | None = field(default=None, compare=False)

    @property
    def t0(self) -> float:
        """The epoch instant the load started; every relative time counts from it."""
        return self.run.t0

    @property
    def scenario(self) -> Scenario:
        return self.run.scenario

    @property
    def status(self) -> str:
        return self.run.status

    @cached_property
    def seconds(self) -> tuple[Second, ...]:
        """Per-second driver records merged across drivers, in time order."""
        return merge_seconds(self.driver_records)

    @cached_property
    def totals(self) -> Totals:
        done = [r for r in self.driver_records if isinstance(r, DriverDone)]
        outcomes: dict[str, int] = {}
        for r in done:
            for k, n in r.outcomes.items():
                outcomes[k] = outcomes.get(k, 0) + n
        return Totals(len(done), sum(r.sent for r in done), sum(r.aborted for r in done), outcomes)

    @classmethod
    def load(cls, path: str | Path) -> Recording:
        """Read a run directory back (this format or the one before it)."""
        p = Path(path)
        run_file = p / RUN_JSON
        if not run_file.is_file():
            raise ConfigError(f"{p}: not a run directory (no {RUN_JSON}); pass a folder under reports/")
        run = RunInfo.from_json(json.loads(run_file.read_text()))
        fmt = run.format
        try:
            return cls(
                run=run,
                driver_records=tuple(driver_record(d, fmt) for d in read_jsonl(p / DRIVER_JSONL)),
                samples=tuple(Sample.from_json(d, fmt) for d in read_jsonl(p / SAMPLES_JSONL)),
                events=tuple(Event.from_json(d) for d in read_jsonl(p / EVENTS_JSONL)),
                agents={int(f.stem.split("-", 1)[1]): tuple(agent_record(d, fmt) for d in read_jsonl(f))
                        for f in sorted(p.glob(AGENT_GLOB))},
                db=tuple(DbSample.from_json(d) for d in read_jsonl(p / DB_JSONL)),
                cpu_profiles=tuple(CpuProfile.from_json(d) for d in read_jsonl(p / CPU_PROFILE_JSONL)),
                proxy=tuple(ProxySample.from_json(d) for d in read_jsonl(p / PROXY_JSONL)),
                cache=tuple(CacheSample.from_json(d) for d in read_jsonl(p / CACHE_JSONL)),
                path=p,
            )
        except RecordError as e:
            raise RecordError(f"{p}: {e}") from None

    def save(self, path: str | Path) -> Path:
        """Write this recording as a run directory in the current format (the inverse of ``load``)."""
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        (p / RUN_JSON).write_text(json.dumps(run_json(self.run), indent=2, default=str))
        streams: list[tuple[str, list[dict[str, Any]]]] = [
            (DRIVER_JSONL, [r.to_json() for r in self.driver_records]),
            (SAMPLES_JSONL, [r.to_json() for r in self.samples]),
            (EVENTS_JSONL, [r.to_json() for r in self.events]),
            (DB_JSONL, [r.to_json() for r in self.db]),
            (CPU_PROFILE_JSONL, [r.to_json() for r in self.cpu_profiles]),
            (PROXY_JSONL, [r.to_json() for r in self.proxy]),
            (CACHE_JSONL, [r.to_json() for r in self.cache]),
        ] + [(f"agent-{pid}.jsonl", [agent_record_to_json(r) for r in rows]) for pid, rows in self.agents.items()]
        for name, rows in streams:
            with open(p / name, "w") as f:
                for row in rows:
                    f.write(json.dumps(row, separators=(",", ":")) + "\n")
        return p


def run_json(run: RunInfo) -> dict[str, Any]:
    """run.json's content for ``run`` (the current format)."""
    d = {f.name: getattr(run, f.name) for f in fields(run)}
    d.update(format=FORMAT, scenario=run.scenario.to_dict(), machine=vars(run.machine),
             server={**vars(run.server), "command": list(run.server.command), "instances": list(run.server.instances)})
    return d


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a JSON-lines file; a torn last line (crash mid-write) is skipped."""
    if not path.is_file():
        return
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    yield json.loads(line)
                except ValueError:
                    continue


class RunWriter:
    """Appends the streams of a live run; every line is flushed as it is written."""

    def __init__(self, path: Path):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, IO[str]] = {name: open(path / name, "a", buffering=1) for name in WRITTEN}
        self._lock = threading.Lock()
        existing = path / RUN_JSON  # appending to a run (ingest --into) keeps what it recorded
        self.run: dict[str, Any] = json.loads(existing.read_text()) if existing.is_file() else {"format": FORMAT}

    def write_run(self, **values: Any) -> None:
        """Merge ``values`` (RunInfo's fields) into run.json and rewrite it."""
        unknown = set(values) - {f.name for f in fields(RunInfo)}
        if unknown:
            raise TypeError(f"run.json has no field(s) {sorted(unknown)}")
        self.run.update(values)
        tmp = self.path / (RUN_JSON + ".tmp")
        tmp.write_text(json.dumps(self.run, indent=2, default=str))
        tmp.replace(self.path / RUN_JSON)

    def append(self, record: Record) -> None:
        """Append a typed record to its stream."""
        line = json.dumps(record.to_json(), separators=(",", ":")) + "\n"
        stream = STREAM_OF[type(record)]
        with self._lock:
            f = self._files.get(stream)
            if f is None:
                raise RuntimeError(f"{self.path}: {stream} is closed; the run has ended")
            f.write(line)

    def close(self) -> None:
        with self._lock:
            for f in self._files.values():
                f.close()
            self._files.clear()
