"""The run directory and the frozen ``Recording`` read back from it.

Layout of a run directory (every stream is JSON lines, appended and flushed as the run goes,
so a crash or Ctrl-C keeps what was measured)::

    run.json            machine, resolved scenario, limits, server, status
    driver.jsonl        one record per driver per second (see harness/load/worker.py)
    samples.jsonl       one psutil sample per tick: processes by role, host CPU per core
    events.jsonl        worker started/exited, target died, interrupted, ...
    db.jsonl            the database server, once a second (PostgreSQL: pg_stat_activity by state)
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
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, Any, Iterator

from harness.errors import ConfigError
from harness.load.histogram import Histogram

RUN_JSON, DRIVER_JSONL, SAMPLES_JSONL, EVENTS_JSONL = "run.json", "driver.jsonl", "samples.jsonl", "events.jsonl"
DB_JSONL = "db.jsonl"
AGENT_CONTROL = "agent-control.json"  # {"id": n, "seconds": s}: the agents profile a window when id grows
AGENT_GLOB = "agent-*.jsonl"  # one per worker PID, written by the in-process agent (harness/agent)


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
class Recording:
    """A finished (or interrupted) run, loaded from its directory."""

    run: dict[str, Any]
    driver_records: tuple[dict[str, Any], ...] = ()
    samples: tuple[dict[str, Any], ...] = ()
    events: tuple[dict[str, Any], ...] = ()
    agents: dict[int, tuple[dict[str, Any], ...]] = field(default_factory=dict)
    db: tuple[dict[str, Any], ...] = ()
    path: Path | None = field(default=None, compare=False)

    @property
    def t0(self) -> float:
        """The epoch instant the load started; every relative time counts from it."""
        return float(self.run.get("t0", 0.0))

    @cached_property
    def seconds(self) -> tuple[Second, ...]:
        """Per-second driver records merged across drivers, in time order."""
        by_t: dict[int, list[dict]] = {}
        for r in self.driver_records:
            if r.get("type") == "second":
                by_t.setdefault(int(r["t"]), []).append(r)
        out = []
        for t in sorted(by_t):
            rs = by_t[t]
            outcomes: dict[str, int] = {}
            for r in rs:
                for k, n in r.get("outcomes", {}).items():
                    outcomes[k] = outcomes.get(k, 0) + n
            out.append(Second(
                t=t,
                span=max(r.get("span", 1.0) for r in rs),
                sent=sum(r["sent"] for r in rs),
                outcomes=outcomes,
                hist=Histogram.merged(Histogram.from_json(r.get("hist")) for r in rs),
                lag_max_ms=max(r.get("lag_max_ms", 0.0) for r in rs),
                late=sum(r.get("late", 0) for r in rs),
                dropped=sum(r.get("dropped", 0) for r in rs),
                inflight=sum(r.get("inflight", 0) for r in rs),
                conns=sum(r.get("conns", 0) for r in rs),
                users=sum(r.get("users", 0) for r in rs),
                driver_cpu=tuple(r.get("cpu", 0.0) for r in sorted(rs, key=lambda r: r["driver"])),
            ))
        return tuple(out)

    @cached_property
    def totals(self) -> dict[str, Any]:
        """Per-driver ``done`` records summed: sent, aborted, outcomes (empty if no driver finished)."""
        done = [r for r in self.driver_records if r.get("type") == "done"]
        outcomes: dict[str, int] = {}
        for r in done:
            for k, n in r.get("outcomes", {}).items():
                outcomes[k] = outcomes.get(k, 0) + n
        return {
            "drivers_done": len(done),
            "sent": sum(r.get("sent", 0) for r in done),
            "aborted": sum(r.get("aborted", 0) for r in done),
            "outcomes": outcomes,
        }

    @property
    def scenario(self) -> dict[str, Any]:
        return self.run.get("scenario", {})

    @property
    def status(self) -> str:
        return self.run.get("status", "unknown")

    @classmethod
    def load(cls, path: str | Path) -> "Recording":
        """Read a run directory back."""
        p = Path(path)
        run_file = p / RUN_JSON
        if not run_file.is_file():
            raise ConfigError(f"{p}: not a run directory (no {RUN_JSON}); pass a folder under reports/")
        return cls(
            run=json.loads(run_file.read_text()),
            driver_records=tuple(read_jsonl(p / DRIVER_JSONL)),
            samples=tuple(read_jsonl(p / SAMPLES_JSONL)),
            events=tuple(read_jsonl(p / EVENTS_JSONL)),
            agents={int(f.stem.split("-", 1)[1]): tuple(read_jsonl(f)) for f in sorted(p.glob(AGENT_GLOB))},
            db=tuple(read_jsonl(p / DB_JSONL)),
            path=p,
        )

    def save(self, path: str | Path) -> Path:
        """Write this recording as a run directory (the inverse of ``load``)."""
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        (p / RUN_JSON).write_text(json.dumps(self.run, indent=2, default=str))
        streams = [(DRIVER_JSONL, self.driver_records), (SAMPLES_JSONL, self.samples), (EVENTS_JSONL, self.events),
                   (DB_JSONL, self.db)] + [(f"agent-{pid}.jsonl", rows) for pid, rows in self.agents.items()]
        for name, rows in streams:
            with open(p / name, "w") as f:
                for row in rows:
                    f.write(json.dumps(row, separators=(",", ":")) + "\n")
        return p


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
        self._files: dict[str, IO[str]] = {
            name: open(path / name, "a", buffering=1) for name in (DRIVER_JSONL, SAMPLES_JSONL, EVENTS_JSONL, DB_JSONL)
        }
        self._lock = threading.Lock()
        existing = path / RUN_JSON  # appending to a run (ingest --into) keeps what it recorded
        self.run: dict[str, Any] = json.loads(existing.read_text()) if existing.is_file() else {}

    def write_run(self, **fields: Any) -> None:
        """Merge ``fields`` into run.json and rewrite it."""
        self.run.update(fields)
        tmp = self.path / (RUN_JSON + ".tmp")
        tmp.write_text(json.dumps(self.run, indent=2, default=str))
        tmp.replace(self.path / RUN_JSON)

    def append(self, stream: str, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            f = self._files.get(stream)
            if f is not None:
                f.write(line)

    def close(self) -> None:
        with self._lock:
            for f in self._files.values():
                f.close()
            self._files.clear()
