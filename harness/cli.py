"""argv → Scenario → run → renderers → files → exit code.

Exit codes: 0 completed; 1 the run failed mid-way (target died, driver failed);
2 usage, configuration or boot error; 130 interrupted. Errors print one message, no traceback.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from harness import __version__
from harness.config import DEFAULT_SCENARIO, Scenario, build_scenario, read_scenario_file
from harness.errors import ConfigError, HarnessError

CLOSED_ONLY = ("users", "loops", "ramp_up", "think_time")
OPEN_ONLY = ("rate", "ramp", "stages")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors: exit 2, one line, no traceback
        self.print_usage(sys.stderr)
        print(f"fastapi-harness: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastapi-harness", description="Boot a FastAPI app, load it, watch it, name the first bottleneck.")
    parser.add_argument("--version", action="version", version=f"fastapi-harness {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run one load test and write its report",
                         description="Run a scenario (or the built-in smoke scenario when none is given).")
    run.add_argument("scenario", nargs="?", help="scenario .toml file (default: the built-in smoke scenario)")
    target = run.add_argument_group("target")
    target.add_argument("--url", help="drive a server that is already running, e.g. http://127.0.0.1:8000")
    target.add_argument("--pid", type=int, help="with --url: sample this process and its children")
    target.add_argument("--get", action="append", metavar="PATH", help="with --url: GET this path (repeatable)")
    target.add_argument("--allow-remote", action="store_true", help="allow --url to name a non-loopback host")
    over = run.add_argument_group("overrides (win over the scenario file)")
    over.add_argument("--workers", type=int, help="server worker processes")
    over.add_argument("--server", choices=("uvicorn", "gunicorn"))
    over.add_argument("--python", help="the app's own interpreter (its virtualenv's python)")
    over.add_argument("--users", type=int, help="closed model: concurrent virtual users")
    over.add_argument("--loops", type=int, help="closed model: requests per user")
    over.add_argument("--rate", type=float, help="open model: arrivals per second")
    over.add_argument("--duration", help='how long to drive load, e.g. "30s"')
    over.add_argument("--drivers", type=int, help="load-generator processes (default: a quarter of the CPUs)")
    over.add_argument("--no-agent", action="store_true", help="run the app without the in-process agent (outside view only)")
    over.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                      help="set any scenario field, e.g. --set app.env.LOG_LEVEL=debug")
    out = run.add_argument_group("output")
    out.add_argument("--out", help="run directory (default: reports/<timestamp>-<name>/)")
    out.add_argument("--quiet", action="store_true", help="no progress line")
    return parser


def overrides_from(args: argparse.Namespace, raw: dict[str, Any]) -> dict[str, Any]:
    """Dotted-path overrides for the flags given; switching load model drops the other model's keys."""
    o: dict[str, Any] = {}
    for flag, path in (("workers", "app.workers"), ("server", "app.server"), ("python", "app.python"),
                       ("users", "load.users"), ("loops", "load.loops"), ("rate", "load.rate"),
                       ("duration", "load.duration"), ("drivers", "load.drivers")):
        value = getattr(args, flag)
        if value is not None:
            o[path] = value
    if args.no_agent:
        o["app.agent"] = False
    for item in args.set:
        path, sep, value = item.partition("=")
        if not sep or not path:
            raise ConfigError(f"--set {item!r}: expected PATH=VALUE, e.g. --set load.users=50")
        o[path] = value
    load = raw.setdefault("load", {})
    if args.rate is not None and load.get("model", "closed") == "closed":
        o["load.model"] = "open"
        for key in CLOSED_ONLY:
            load.pop(key, None)
    if (args.users is not None or args.loops is not None) and load.get("model") == "open":
        o["load.model"] = "closed"
        for key in OPEN_ONLY:
            load.pop(key, None)
    return o


def scenario_from(args: argparse.Namespace) -> Scenario:
    """The scenario the flags describe: a file, --url, or the built-in smoke scenario."""
    if args.url:
        if args.scenario:
            raise ConfigError("give either a scenario file or --url, not both")
        raw: dict[str, Any] = {
            "name": "url", "url": args.url, "pid": args.pid or 0,
            "load": {"users": 10, "duration": "10s"},
            "requests": [{"path": p} for p in (args.get or ["/"])],
        }
        return build_scenario(raw, overrides=overrides_from(args, raw))
    if args.pid or args.get:
        raise ConfigError("--pid and --get go with --url; to boot an app, give a scenario file")
    if args.scenario:
        path = Path(args.scenario)
        raw = read_scenario_file(path)
        return build_scenario(raw, source=str(path), base_dir=path.parent, overrides=overrides_from(args, raw))
    raw = copy.deepcopy(DEFAULT_SCENARIO)
    return build_scenario(raw, source="built-in smoke scenario", overrides=overrides_from(args, raw))


def default_run_dir(name: str) -> Path:
    return Path("reports") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{name}"


class ProgressPrinter:
    """A live line on a terminal (redrawn), a plain line every 5 s elsewhere."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, p: Any) -> None:
        from harness.report.terminal import format_progress

        now = time.monotonic()
        if self.quiet or now - self.last < (0.5 if self.tty else 5.0):
            return
        self.last = now
        line = format_progress(p)
        sys.stderr.write(f"\r{line}\x1b[K" if self.tty else line + "\n")
        sys.stderr.flush()

    def end(self) -> None:
        if self.tty and self.last and not self.quiet:
            sys.stderr.write("\n")


def write_reports(run_dir: Path) -> dict[str, Any]:
    """Load the run back, render summary.json and report.html into it; return the summary."""
    from harness.analysis.summary import summarize
    from harness.recording import Recording
    from harness.report.html import render_html
    from harness.report.summary_json import render_summary_json

    rec = Recording.load(run_dir)
    summary = summarize(rec)
    (run_dir / "summary.json").write_text(render_summary_json(summary))
    (run_dir / "report.html").write_text(render_html(rec, summary))
    return summary


def cmd_run(args: argparse.Namespace) -> int:
    from harness.report.terminal import format_summary
    from harness.runner import run_scenario

    scenario = scenario_from(args)
    run_dir = Path(args.out) if args.out else default_run_dir(scenario.name)
    if (run_dir / "run.json").exists():
        raise ConfigError(f"--out {run_dir} already holds a run; choose a new directory")
    printer = ProgressPrinter(args.quiet)
    failure: HarnessError | None = None
    try:
        run_scenario(scenario, run_dir, progress=printer, allow_remote=args.allow_remote)
    except HarnessError as e:
        failure = e
    finally:
        printer.end()
    measured = any(run_dir.glob("driver.jsonl")) and (run_dir / "driver.jsonl").stat().st_size > 0
    if measured:
        summary = write_reports(run_dir)
        print(format_summary(summary, str(run_dir)))
    if failure is not None:
        raise failure
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"run": cmd_run}[args.command](args)
    except HarnessError as e:
        print(f"fastapi-harness: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("fastapi-harness: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
