"""Compare configurations: expand a matrix of scenario overrides, run it interleaved and repeated.

Every configuration is validated before anything runs; a configuration whose app fails
to boot is recorded as failed and the others still run; Ctrl-C keeps what finished.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness.config import Scenario, build_scenario
from harness.errors import ConfigError, HarnessError, Interrupted, TargetError
from harness.diagnose import DiagnoseOptions
from harness.runner import run_scenario


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
        axes.append(("app.server", _values("--server", servers)))
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
    diagnose: DiagnoseOptions | None,
    finish: Callable[[Path], dict[str, Any]],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Run A B C A B C ...; return the compare record (also written as compare/runs.json)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    record = {"mode": "diagnose" if diagnose else "fixed", "repeat": repeat, "runs": runs,
              "configs": [{"label": c.label, "overrides": c.overrides} for c in configs], "interrupted": False}
    order = [(r, i) for r in range(repeat) for i in range(len(configs))]
    try:
        for n, (r, i) in enumerate(order, 1):
            cfg, scenario = configs[i], scenarios[i]
            run_dir = out_dir / f"{n:02d}-{_slug(cfg.label)}-r{r + 1}"
            say(f"[{n}/{len(order)}] {cfg.label} (repeat {r + 1})")
            entry: dict[str, Any] = {"order": n, "label": cfg.label, "repeat": r + 1, "dir": run_dir.name}
            try:
                run_scenario(scenario, run_dir, diagnose=diagnose, say=lambda line: say("    " + line))
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
        (out_dir / "runs.json").write_text(json.dumps(record, indent=2, default=str))
    return record


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label)[:60]


def diff_pairs(a: Path, b: Path) -> list[tuple[str, Path, Path]]:
    """(label, before, after): one pair for two runs, one per shared configuration for two compare directories."""
    if (a / "runs.json").is_file() and (b / "runs.json").is_file():
        def first_runs(d: Path) -> dict[str, Path]:
            out: dict[str, Path] = {}
            for r in json.loads((d / "runs.json").read_text())["runs"]:
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
