"""Another tool's result file into a run directory: the one place results are read into a run.

Used by ``--driver-cmd`` (the tool drove a run the harness sampled) and by ``fastapi-harness
ingest`` (a finished file, into a run sampled meanwhile or into a new one).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from harness.config import AppConfig, LoadConfig, Scenario
from harness.errors import ConfigError
from harness.interop.results import Results, read_results
from harness.recording import Recording, RunWriter, default_run_dir
from harness.sampling.host import machine_info


def check_overlap(first: float, last: float, t0: float, sampled_until: float, start: float = -1.0) -> None:
    """Refuse results whose clock does not overlap the sampled window (taken elsewhere, or at another time)."""
    lo, hi = t0 + start, t0 + sampled_until + 1
    inside = max(0.0, min(last, hi) - max(first, lo))
    if first > last or inside < 0.5 * max(last - first, 1e-3):
        def when(x: float) -> str:
            return datetime.fromtimestamp(x, timezone.utc).isoformat(timespec="seconds")

        raise ConfigError(
            f"the results run from {when(first)} to {when(last)}, but the app was sampled from {when(lo)} "
            f"to {when(hi)}; they do not overlap — were they taken against this run, on this machine's clock?"
        )


def append_results(writer: RunWriter, source: Path, t0: float, sampled: tuple[float, float]) -> Results:
    """Read ``source`` (seconds from ``t0``), check it overlaps the ``sampled`` window, append it as
    driver records, and note it in run.json; return what was read (its ``problems`` included)."""
    res = _read(source, t0)
    check_overlap(res.first, res.last, t0, sampled[1], sampled[0])
    _write(writer, source, res)
    return res


def _read(source: Path, t0: float | None) -> Results:
    res = read_results(source, t0)
    if not res.seconds:
        raise ConfigError(f"{source}: no request could be read")
    return res


def _write(writer: RunWriter, source: Path, res: Results) -> None:
    for record in res.driver_records():
        writer.append(record)
    writer.write_run(ingested={"file": str(source), "format": res.fmt, "unparsed": dict(res.problems)})


def ingest(source: Path, into: Path | None = None, out: Path | None = None) -> tuple[Path, Results]:
    """``fastapi-harness ingest``: ``source`` into the run at ``into`` (its clocks must overlap) or a
    new run directory (``out``, or one under reports/); return the run directory and what was read."""
    if into is not None:
        rec = Recording.load(into)
        if rec.driver_records:
            raise ConfigError(f"{into} already has load results; ingest into a run driven by the other tool")
        sampled = [s.t for s in rec.samples]
        writer = RunWriter(into)
        try:
            res = append_results(writer, source, rec.t0, (min(sampled, default=0.0), max(sampled, default=0.0)))
        finally:
            writer.close()
        return into, res
    res = _read(source, None)
    run_dir = out or default_run_dir(source.stem)
    if (run_dir / "run.json").exists():
        raise ConfigError(f"--out {run_dir} already holds a run; choose a new directory")
    writer = RunWriter(run_dir)
    try:
        scenario = Scenario(
            name=source.stem, app=AppConfig(agent=False), load=LoadConfig(model="external"), requests=()
        )
        writer.write_run(started_at=datetime.fromtimestamp(res.first, timezone.utc).isoformat(timespec="seconds"),
                         status="completed", mode="ingest", machine=machine_info(), t0=res.t0,
                         scenario=scenario.to_dict(), server={"kind": "external"})
        _write(writer, source, res)
    finally:
        writer.close()
    return run_dir, res
