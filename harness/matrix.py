"""Compare configurations: expand a matrix of scenario overrides, run it interleaved and repeated;
and diff two runs (or two compare directories).

Every configuration is validated before anything runs; a configuration whose app fails
to boot is recorded as failed and the others still run; Ctrl-C keeps what finished. How one
configuration is run is the caller's (``run``): a diagnose search or a fixed load, a real
target or a fake one.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness.analysis.compare import Delta, bootstrap_deltas, comparable, config_changes, matrix_table, regressions
from harness.analysis.stages import Stage, stages
from harness.analysis.summary import summarize
from harness.analysis.verdict import diagnose
from harness.config import SERVERS, Scenario, build_scenario
from harness.errors import ConfigError, HarnessError, Interrupted, TargetError
from harness.recording import Recording

RUNS_JSON = "runs.json"


@dataclass(frozen=True)
class Config:
    label: str
    overrides: dict[str, Any]


def parse_axes(workers: str | None, servers: str | None, sets: list[str]) -> list[tuple[str, list[str]]]:
    """(dotted path, values) for each varied field; ``--set path=v1,v2`` and the shorthands."""
    axes: list[tuple[str, list[str]]] = []
    if workers:
        axes.append(("app.workers", _values("--workers", workers)))
    if servers:
        values = _values("--server", servers)
        unknown = [v for v in values if v not in SERVERS]
        if unknown:
            raise ConfigError(f"--server {','.join(unknown)}: expected one of {', '.join(SERVERS)}")
        axes.append(("app.server", values))
    for item in sets:
        path, sep, values = item.partition("=")
        if not sep or not path:
            raise ConfigError(f"--set {item!r}: expected PATH=V1,V2,..., e.g. --set app.env.SAMPLE_APP_POOL_SIZE=5,10")
        axes.append((path, _values(f"--set {path}", values)))
    return axes


def _values(flag: str, text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise ConfigError(f"{flag}: no values; give a comma-separated list like 1,2,4")
    return values


def expand(axes: list[tuple[str, list[str]]]) -> list[Config]:
    """Every combination of the axes' values, labelled by what varies."""
    if not axes:
        raise ConfigError("nothing to compare: vary something with --workers 1,2,4, --server uvicorn,gunicorn "
                          "or --set PATH=V1,V2")
    out = []
    for combo in itertools.product(*(values for _, values in axes)):
        overrides = {path: value for (path, _), value in zip(axes, combo)}
        label = ",".join(f"{_short(path)}={value}" for path, value in overrides.items())
        out.append(Config(label, overrides))
    return out


def _short(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def validate(raw: dict[str, Any], source: str, base_dir: Path | None, base: dict[str, Any],
             configs: list[Config]) -> list[Scenario]:
    """Build every configuration's scenario up front; a bad path or value is named before anything runs."""
    out = []
    for cfg in configs:
        try:
            out.append(build_scenario(raw, source=source, base_dir=base_dir, overrides={**base, **cfg.overrides}))
        except ConfigError as e:
            raise ConfigError(f"configuration {cfg.label}: {e}") from None
    return out


def run_matrix(
    configs: list[Config],
    scenarios: list[Scenario],
    out_dir: Path,
    repeat: int,
    mode: str,
    run: Callable[[Scenario, Path, Callable[[str], None]], object],
    finish: Callable[[Path], dict[str, Any]],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Run A B C A B C ... (``run(scenario, run_dir, say)`` each, ``finish(run_dir)`` for its summary);
    return the compare record (also written as compare/runs.json). ``mode``: diagnose | fixed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    record = {"mode": mode, "repeat": repeat, "runs": runs,
              "configs": [{"label": c.label, "overrides": c.overrides} for c in configs], "interrupted": False}
    order = [(r, i) for r in range(repeat) for i in range(len(configs))]
    try:
        for n, (r, i) in enumerate(order, 1):
            cfg, scenario = configs[i], scenarios[i]
            run_dir = out_dir / f"{n:02d}-{_slug(cfg.label)}-r{r + 1}"
            say(f"[{n}/{len(order)}] {cfg.label} (repeat {r + 1})")
            entry: dict[str, Any] = {"order": n, "label": cfg.label, "repeat": r + 1, "dir": run_dir.name}
            try:
                run(scenario, run_dir, lambda line: say("    " + line))
            except TargetError as e:
                entry["error"] = str(e).splitlines()[0]
                say(f"    failed: {entry['error']}")
            except Interrupted:
                record["interrupted"] = True
                if (run_dir / "driver.jsonl").is_file():
                    entry["summary"] = finish(run_dir)
                    entry["partial"] = True
                    runs.append(entry)
                raise
            except HarnessError as e:
                entry["error"] = str(e).splitlines()[0]
                say(f"    failed: {entry['error']}")
            if "error" not in entry:
                entry["summary"] = finish(run_dir)
            runs.append(entry)
    finally:
        (out_dir / RUNS_JSON).write_text(json.dumps(record, indent=2, default=str))
    return record


def read_matrix(out_dir: Path) -> dict[str, Any]:
    """The compare record a (possibly interrupted) ``run_matrix`` left in ``out_dir``."""
    return json.loads((out_dir / RUNS_JSON).read_text())


def summarize_matrix(
    out_dir: Path, record: dict[str, Any], cores: int
) -> tuple[dict[str, Any], dict[str, list[Stage]]]:
    """The comparison table (compare/summary.json's ``table``) and, per configuration, the stages of
    its first completed run (the curves the report overlays)."""
    table = matrix_table(record, lambda d: Recording.load(out_dir / d), cores)
    curves = {}
    for cfg in record["configs"]:
        first = next((r for r in record["runs"] if r["label"] == cfg["label"] and "summary" in r), None)
        if first:
            curves[cfg["label"]] = stages(Recording.load(out_dir / first["dir"]))
    return table, curves


@dataclass(frozen=True)
class RunDiff:
    """Two runs compared: the deltas with their intervals, the change of first bottleneck, the gate."""

    label: str
    before: Recording
    after: Recording
    deltas: list[Delta]
    verdict_change: str | None
    regressions: list[str]
    refused: str | None  # why the runs should not be compared (given --force)
    config_changes: list[str]  # "app.workers: 1 → 2"
    summary_rps: tuple[float, float]  # each run's own summary.json throughput (all requests, whole duration)

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "before": str(self.before.path), "after": str(self.after.path),
                "deltas": [d.to_dict() for d in self.deltas], "verdict_change": self.verdict_change,
                "regressions": self.regressions, "refused": self.refused, "config_changes": self.config_changes,
                "summary_rps": list(self.summary_rps)}


def diff_runs(before: Path, after: Path, threshold: float | None = None, force: bool = False) -> list[RunDiff]:
    """``fastapi-harness diff``: each pair of runs (two runs, or the shared configurations of two
    compare directories) re-diagnosed and compared; refuses runs of different scenarios or machines
    unless ``force``."""
    out = []
    for label, a_dir, b_dir in diff_pairs(before, after):
        a, b = Recording.load(a_dir), Recording.load(b_dir)
        why = comparable(a, b)
        if why and not force:
            raise ConfigError(f"{a_dir} and {b_dir} are {why}; pass --force to compare them anyway")
        deltas = bootstrap_deltas(a, b)
        va, vb = diagnose(a).verdict.bottleneck, diagnose(b).verdict.bottleneck
        out.append(RunDiff(label, a, b, deltas, f"First bottleneck moved from {va} to {vb}." if va != vb else None,
                           regressions(deltas, threshold) if threshold is not None else [], why,
                           config_changes(a, b), (summarize(a)["throughput_rps"], summarize(b)["throughput_rps"])))
    return out


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label)[:60]


def diff_pairs(a: Path, b: Path) -> list[tuple[str, Path, Path]]:
    """(label, before, after): one pair for two runs, one per shared configuration for two compare directories."""
    if (a / RUNS_JSON).is_file() and (b / RUNS_JSON).is_file():
        def first_runs(d: Path) -> dict[str, Path]:
            out: dict[str, Path] = {}
            for r in read_matrix(d)["runs"]:
                if "summary" in r:
                    out.setdefault(r["label"], d / r["dir"])
            return out

        ra, rb = first_runs(a), first_runs(b)
        shared = [label for label in ra if label in rb]
        if not shared:
            raise ConfigError(f"{a} and {b} share no configuration; compare directories of the same matrix")
        return [(label, ra[label], rb[label]) for label in shared]
    for d in (a, b):
        if not (d / "run.json").is_file():
            raise ConfigError(f"{d}: not a run directory (no run.json) nor a compare directory (no runs.json)")
    return [("", a, b)]
