"""argv → Scenario → run → renderers → files → exit code.

Exit codes: 0 completed; 1 the run failed mid-way (target died, driver failed) or, with
``--check``, broke its SLO; 2 usage, configuration or boot error; 3 the run was invalid
(the load generator was the limit); 130 interrupted. Errors print one message, no traceback.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from harness import __version__
from harness.config import (
    DEFAULT_SCENARIO,
    FLAG_PATHS,
    SERVERS,
    Scenario,
    build_scenario,
    flag_overrides,
    read_scenario_file,
)
from harness.errors import ConfigError, HarnessError
from harness.recording import default_run_dir

EXIT_SLO_BROKEN, EXIT_INVALID = 1, 3


EXAMPLES = {
    "run": """examples:
  fastapi-harness run --app main:app --get /items --users 50 --duration 30s
  fastapi-harness run scenarios/db.toml --workers 4 --check      # exit 1 when the SLO breaks
  fastapi-harness run --url http://127.0.0.1:8000 --pid 4242 --post /orders --body @order.json""",
    "diagnose": """examples:
  fastapi-harness diagnose --app main:app --get /items           # step the load until something gives
  fastapi-harness diagnose scenarios/db.toml --max-time 90s --refine
  fastapi-harness diagnose scenarios/blocking.toml --closed --max-users 200""",
    "compare": """examples:
  fastapi-harness compare scenarios/fast.toml --workers 1,2,4
  fastapi-harness compare --app main:app --get /items --set app.env.POOL_SIZE=5,20 --repeat 3
  fastapi-harness compare scenarios/db.toml --fixed --duration 20s --server uvicorn,gunicorn""",
    "export-jmx": """examples:
  fastapi-harness export-jmx scenarios/smoke.toml -o smoke.jmx
  jmeter -n -t smoke.jmx -Jhost=127.0.0.1 -Jport=8000 -l results.jtl""",
    "ingest": """examples:
  fastapi-harness ingest results.jtl                     # a JMeter run, diagnosed from the outside
  fastapi-harness ingest results.jtl --into reports/20261202-main   # into a run that sampled the app""",
    "diff": """examples:
  fastapi-harness diff reports/before reports/after
  fastapi-harness diff reports/compare-a reports/compare-b --fail-on-regression 5%""",
}


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kw: Any) -> None:
        name = kw.get("prog", "").rsplit(" ", 1)[-1]
        if name in EXAMPLES:
            kw.setdefault("epilog", EXAMPLES[name])
            kw.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kw)

    def error(self, message: str) -> None:  # usage errors: exit 2, one line, no traceback
        self.print_usage(sys.stderr)
        print(f"fastapi-harness: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _app_flags(group: Any) -> None:
    group.add_argument("--app", help="boot this app without a scenario file: module:attribute")
    group.add_argument("--app-dir", help="with --app: the directory it is imported from (default: .)")
    group.add_argument("--factory", action="store_true", help="with --app: it names a factory returning the app")


def _request_flags(group: Any, target: str) -> None:
    group.add_argument("--get", action="append", default=[], metavar="PATH",
                       help=f"with {target}: GET this path (repeatable)")
    group.add_argument("--post", action="append", default=[], metavar="PATH",
                       help=f"with {target}: POST this path (repeatable)")
    group.add_argument("--body", metavar="JSON|@FILE",
                       help="with --post: the body, inline or @file (sent as application/json when it parses as "
                            "JSON, else as --content-type)")
    group.add_argument("--content-type", default="", metavar="TYPE",
                       help="with --body: its Content-Type (default: application/json for JSON, else text/plain)")


def _common(p: argparse.ArgumentParser) -> None:
    """Options shared by run and diagnose."""
    p.add_argument("scenario", nargs="?", help="scenario .toml file (default: the built-in smoke scenario)")
    target = p.add_argument_group("target")
    target.add_argument("--url", help="drive a server that is already running, e.g. http://127.0.0.1:8000")
    target.add_argument("--pid", type=int, help="with --url: sample this process and its children")
    target.add_argument("--allow-remote", action="store_true", help="allow --url to name a non-loopback host")
    target.add_argument("--agent-sink", metavar="[HOST:]PORT",
                        help="with --url: listen here for the agents of the app (started with `python -m "
                             "fastapi_harness_agent --sink …`, printed at the start) to see inside it")
    _app_flags(target)
    target.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="environment for the server (repeatable)"
    )
    target.add_argument("--jmx", metavar="PLAN", help="take the load and requests from a JMeter test plan (.jmx)")
    target.add_argument("-J", dest="jmeter_props", action="append", default=[], metavar="NAME=VALUE",
                        help="with --jmx: a JMeter property for ${__P(name,default)} (repeatable)")
    _request_flags(target, "--url/--app")
    over = p.add_argument_group("overrides (win over the scenario file)")
    over.add_argument("--workers", type=int, help="server worker processes")
    over.add_argument("--server", choices=SERVERS, help="the server that runs the app")
    over.add_argument("--python", help="the app's own interpreter (its virtualenv's python)")
    over.add_argument("--users", type=int, help="closed model: concurrent virtual users")
    over.add_argument("--loops", type=int, help="closed model: requests per user")
    over.add_argument("--rate", type=float, help="open model: arrivals per second")
    over.add_argument("--duration", help='run: how long to drive load, e.g. "30s" (diagnose ignores it: its '
                                         'steps last --step, within --max-time)')
    over.add_argument("--slo-p99", metavar="DURATION", help='latency objective, e.g. "200ms"')
    over.add_argument("--drivers", type=int, help="load-generator processes (default: a quarter of the CPUs; "
                                                  "with --cluster, per node)")
    over.add_argument("--cluster", metavar="ADDRESS", help="run the drivers on a Ray cluster's nodes ('auto', "
                                                          "'ray://head:10001'; needs the [ray] extra)")
    over.add_argument("--nodes", type=int, help="with --cluster: how many of its nodes send load (default: all)")
    over.add_argument(
        "--no-agent", action="store_true", help="run the app without the in-process agent (outside view only)"
    )
    over.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                      help="set any scenario field, e.g. --set app.env.LOG_LEVEL=debug")
    out = p.add_argument_group("output")
    out.add_argument("--out", help="run directory (default: reports/<timestamp>-<name>/)")
    out.add_argument("--quiet", action="store_true", help="no progress line")
    out.add_argument("--jtl", metavar="FILE", help="also write every request as a JMeter CSV result file (JTL)")
    target.add_argument("--driver-cmd", metavar="CMD",
                        help="let another tool drive the load, e.g. 'jmeter -n -t plan.jmx -l {jtl}' "
                             "({url} {host} {port} {jtl} are filled in); its results are read afterwards")
    out.add_argument("--detector", action="append", default=[], metavar="MODULE:FUNCTION",
                     help="an extra detector of your own, run after the built-in ones (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fastapi-harness", description="Boot a FastAPI app, load it, watch it, name the first bottleneck."
    )
    parser.add_argument("--version", action="version", version=f"fastapi-harness {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run one load test and write its report",
                         description="Run a scenario (or the built-in smoke scenario when none is given).")
    _common(run)
    run.add_argument("--check", action="store_true", help="exit 1 when the run breaks the scenario's SLO (a CI gate)")
    diag = sub.add_parser("diagnose", help="step the load up until something gives, and name the first bottleneck",
                          description="Calibrate, step the open-model rate ×1.5 until the SLO breaks, throughput "
                                      "plateaus or errors appear, then profile at the knee and give the verdict.")
    _common(diag)
    bounds = diag.add_argument_group("search bounds")
    bounds.add_argument("--max-rate", type=float, default=100_000.0, help="never offer more than this (req/s)")
    bounds.add_argument("--max-users", type=int, default=10_000, help="with --closed: never run more users")
    bounds.add_argument("--max-time", default="60s", help='total load time, profile window included (default "60s")')
    bounds.add_argument("--step", default="4s", help='how long each step is held (default "4s")')
    bounds.add_argument("--closed", action="store_true", help="step virtual users instead of the arrival rate")
    bounds.add_argument("--refine", action="store_true",
                        help="after the knee, bisect between the last level held and the first that broke, to within "
                             "5%%, so the capacity is measured rather than read off the ×1.5 grid (compare does this "
                             "by default)")
    comp = sub.add_parser("compare", help="run a matrix of configurations and rank them",
                          description="Run every configuration (interleaved, repeated) in diagnose mode or at a fixed "
                                      "load, and compare throughput within the SLO, latency, CPU cost and bottlenecks.")
    comp.add_argument("scenario", nargs="?", help="the base scenario .toml file (or --app with --get)")
    inline = comp.add_argument_group("target without a scenario file (as run takes them)")
    _app_flags(inline)
    _request_flags(inline, "--app")
    comp.add_argument("--workers", help="worker counts to try, e.g. 1,2,4")
    comp.add_argument("--server", help="servers to try, e.g. uvicorn,gunicorn")
    comp.add_argument("--set", action="append", default=[], metavar="PATH=V1,V2",
                      help="vary any scenario field, e.g. --set app.env.SAMPLE_APP_POOL_SIZE=5,10,20 (repeatable)")
    comp.add_argument(
        "--fixed", action="store_true", help="run each configuration at the scenario's own load instead of diagnosing"
    )
    comp.add_argument(
        "--repeat", type=int, default=1, help="run the whole matrix this many times, interleaved (default 1)"
    )
    comp.add_argument(
        "--max-configs", type=int, default=12, help="refuse larger matrices (runs × repeats) without --yes"
    )
    comp.add_argument("--yes", action="store_true", help="run a matrix larger than --max-configs")
    comp.add_argument("--duration", help="with --fixed: how long each run drives load")
    comp.add_argument("--max-rate", type=float, default=100_000.0,
                      help="diagnose mode: never offer more than this (req/s)")
    comp.add_argument("--max-time", default="60s", help="diagnose mode: load time per configuration")
    comp.add_argument("--step", default="4s", help='diagnose mode: how long each step is held (default "4s")')
    comp.add_argument("--no-refine", action="store_true",
                      help="diagnose mode: take capacities from the ×1.5 step grid, without bisecting to within 5%% "
                           "after the knee")
    comp.add_argument("--out", help="compare directory (default: reports/<timestamp>-compare-<name>/)")
    comp.add_argument("--quiet", action="store_true", help="no progress lines")
    export = sub.add_parser(
        "export-jmx",
        help="write a scenario as a JMeter test plan",
        description="Write a closed-model scenario as a JMeter 5 .jmx (host and port as "
        "${__P(host,127.0.0.1)} and ${__P(port,8000)}), so a team can run it with their JMeter.",
    )
    export.add_argument("scenario", help="scenario .toml file")
    export.add_argument("-o", "--output", help="the .jmx file to write (default: print it)")
    ingest = sub.add_parser(
        "ingest",
        help="read another tool's result file into a recording and diagnose it",
        description="Read a JMeter JTL (CSV or XML), a Locust stats-history CSV or a k6 JSON output "
        "into a run directory: into an existing run (--into, its clocks must overlap) "
        "or a new one, then write its report.",
    )
    ingest.add_argument("results", help="the result file")
    ingest.add_argument("--into", metavar="RUN_DIR", help="a run whose app was sampled while the tool drove it")
    ingest.add_argument("--out", help="new run directory (default: reports/<timestamp>-<file stem>/)")
    diff = sub.add_parser("diff", help="compare two runs (or two compare directories): deltas with confidence",
                          description="Throughput and percentile deltas with 95% bootstrap intervals, the change of "
                                      "first bottleneck, overlaid plots and a Markdown summary for a pull request.")
    diff.add_argument("before", help="run directory (or compare directory)")
    diff.add_argument("after", help="run directory (or compare directory)")
    diff.add_argument("--fail-on-regression", metavar="PERCENT",
                      help="exit 1 when throughput drops or p99 rises by more than this, with confidence (e.g. 5%%)")
    diff.add_argument("--force", action="store_true", help="compare runs of different scenarios or machines anyway")
    diff.add_argument("--out", help="write diff.md, diff.html and diff.json here (default: reports/<timestamp>-diff/)")
    return parser


def overrides_from(args: argparse.Namespace, raw: dict[str, Any]) -> dict[str, Any]:
    """The dotted-path overrides the flags give (config's rules)."""
    o = flag_overrides(raw, {flag: getattr(args, flag) for flag in FLAG_PATHS}, args.env, args.set,
                       agent=not args.no_agent)
    if getattr(args, "agent_sink", None):
        o["agent.sink"] = args.agent_sink
    return o


def _inline_requests(args: argparse.Namespace) -> list[dict[str, Any]]:
    """--get and --post as [[requests]]; none is a mistake (loading "/" by default reported on 404s),
    unless --driver-cmd's own tool sends the requests."""
    body = _body(args)
    reqs = [{"path": p} for p in args.get] + [{"path": p, "method": "POST", **body} for p in args.post]
    if not reqs and not getattr(args, "driver_cmd", None):
        raise ConfigError("no request to send: add --get PATH (or --post PATH; each repeatable), e.g. --get /health")
    return reqs or [{"path": "/"}]


def _body(args: argparse.Namespace) -> dict[str, Any]:
    """--body (inline, or @file) and --content-type as a [[requests]] entry's body and headers."""
    text = getattr(args, "body", None)
    if text is None:
        if getattr(args, "content_type", ""):
            raise ConfigError("--content-type goes with --body")
        return {}
    if not args.post:
        raise ConfigError("--body goes with --post PATH (a GET sends no body)")
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as e:
            raise ConfigError(f"--body {text}: cannot read it ({e.strerror}); give a readable file after @") from None
    kind = args.content_type
    if not kind:
        try:
            json.loads(text)
            kind = "application/json"
        except ValueError:
            kind = "text/plain"
    return {"body": text, "headers": {"Content-Type": kind}}


INLINE_LOAD = {"users": 10, "duration": "20s"}  # --url and --app without a scenario file


def _app_raw(args: argparse.Namespace) -> dict[str, Any]:
    """The scenario ``--app`` with ``--get``/``--post`` describe."""
    name = args.app.partition(":")[0].rsplit(".", 1)[-1] or "app"
    return {"name": name, "app": {"target": args.app, "app_dir": args.app_dir or ".", "factory": args.factory},
            "load": dict(INLINE_LOAD), "requests": _inline_requests(args)}


def scenario_from(args: argparse.Namespace) -> Scenario:
    """The scenario the flags describe: a file, --url, --app, or the built-in smoke scenario."""
    if (
        sum(bool(x) for x in (args.scenario, args.jmx)) > 1
        or sum(bool(x) for x in (args.scenario, args.url, args.app)) > 1
    ):
        raise ConfigError("give one of: a scenario file, --url, or --app (with --jmx for the load)")
    if args.jmx:
        return scenario_from_jmx(args)
    if (args.get or args.post) and not (args.url or args.app):
        raise ConfigError("--get and --post go with --url or --app; a scenario file lists its [[requests]]")
    if args.pid and not args.url:
        raise ConfigError("--pid goes with --url (the harness samples the apps it boots itself)")
    if args.url:
        raw: dict[str, Any] = {"name": "url", "url": args.url, "pid": args.pid or 0, "load": dict(INLINE_LOAD),
                               "requests": _inline_requests(args)}
        return build_scenario(raw, overrides=overrides_from(args, raw))
    if args.app:
        raw = _app_raw(args)
        return build_scenario(raw, source="command line", overrides=overrides_from(args, raw))
    if args.scenario:
        path = Path(args.scenario)
        raw = read_scenario_file(path)
        return build_scenario(raw, source=str(path), base_dir=path.parent, overrides=overrides_from(args, raw))
    raw = copy.deepcopy(DEFAULT_SCENARIO)
    return build_scenario(raw, source="built-in smoke scenario", overrides=overrides_from(args, raw))


def scenario_from_jmx(args: argparse.Namespace) -> Scenario:
    """A JMeter plan's load and requests, aimed at --app (booted here) or --url."""
    from harness.interop.jmeter import read_jmx

    props = dict(item.partition("=")[::2] for item in args.jmeter_props)
    raw, notes = read_jmx(args.jmx, props)
    for note in notes:
        print(f"fastapi-harness: {args.jmx}: {note}", file=sys.stderr)
    if args.url:
        raw.update(url=args.url, pid=args.pid or 0)
    elif args.app:
        raw["app"] = {"target": args.app, "app_dir": args.app_dir or ".", "factory": args.factory}
    else:
        raise ConfigError(f"{args.jmx} names no app to boot: add --app module:app (the plan's host is replaced by it), "
                          "or --url for a server already running")
    return build_scenario(raw, source=args.jmx, overrides=overrides_from(args, raw))


def cmd_export_jmx(args: argparse.Namespace) -> int:
    from harness.interop.jmeter import write_jmx

    path = Path(args.scenario)
    text = write_jmx(build_scenario(read_scenario_file(path), source=str(path), base_dir=path.parent))
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from harness.interop.ingest import ingest
    from harness.report.terminal import format_summary

    source = Path(args.results)
    run_dir, res = ingest(source, Path(args.into) if args.into else None, Path(args.out) if args.out else None)
    if res.problems:
        print(f"fastapi-harness: {source}: kept what parsed; skipped {dict(res.problems)}", file=sys.stderr)
    summary = write_reports(run_dir)
    print(format_summary(summary, str(run_dir)))
    return 0


class ProgressPrinter:
    """A live line on a terminal (redrawn), a plain line every 5 s elsewhere; step lines always."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.open_line = False

    def __call__(self, p: Any) -> None:
        from harness.report.terminal import format_progress

        now = time.monotonic()
        if self.quiet or now - self.last < (0.5 if self.tty else 5.0):
            return
        self.last = now
        line = format_progress(p)
        sys.stderr.write(f"\r{line}\x1b[K" if self.tty else line + "\n")
        self.open_line = self.tty
        sys.stderr.flush()

    def say(self, line: str) -> None:
        if self.quiet:
            return
        sys.stderr.write(("\r\x1b[K" if self.open_line else "") + line + "\n")
        self.open_line = False
        sys.stderr.flush()

    def end(self) -> None:
        if self.open_line:
            sys.stderr.write("\n")


def write_reports(run_dir: Path, detectors: Sequence[str] = ()) -> dict[str, Any]:
    """Load the run back, diagnose it, render summary.json and report.html into it; return the summary."""
    from harness.analysis.summary import summarize
    from harness.analysis.verdict import diagnose
    from harness.recording import Recording
    from harness.report.html import render_html
    from harness.report.summary_json import render_summary_json

    rec = Recording.load(run_dir)
    diagnosis = diagnose(rec, tuple(detectors))
    summary = summarize(rec, diagnosis.verdict)
    (run_dir / "summary.json").write_text(render_summary_json(summary))
    (run_dir / "report.html").write_text(render_html(rec, summary, diagnosis))
    return summary


def cmd_run(args: argparse.Namespace) -> int:
    from harness.analysis.findings import INVALID
    from harness.analysis.summary import slo_broken
    from harness.analysis.verdict import INVALID_WHY
    from harness.knee_search import DiagnoseOptions, KneeSearch
    from harness.report.terminal import format_summary
    from harness.runner import ExternalLoad, LoadPlan, run_scenario

    scenario = scenario_from(args)
    printer = ProgressPrinter(args.quiet)
    plan: LoadPlan | None = None
    if args.driver_cmd:
        plan = ExternalLoad(args.driver_cmd, printer.say)
    elif args.command == "diagnose":
        plan = KneeSearch(DiagnoseOptions.from_flags(args.max_rate, args.max_time, args.step, args.max_users,
                                                     args.closed, args.refine), printer.say)
    run_dir = Path(args.out) if args.out else default_run_dir(scenario.name)
    if (run_dir / "run.json").exists():
        raise ConfigError(f"--out {run_dir} already holds a run; choose a new directory")
    failure: HarnessError | None = None
    try:
        run_scenario(scenario, run_dir, plan, progress=printer, allow_remote=args.allow_remote,
                     jtl=Path(args.jtl).resolve() if args.jtl else None)
    except HarnessError as e:
        failure = e
    finally:
        printer.end()
    if not (run_dir / "driver.jsonl").is_file() or not (run_dir / "driver.jsonl").stat().st_size:
        if failure is not None:
            raise failure
        return 0
    summary = write_reports(run_dir, args.detector)
    print(format_summary(summary, str(run_dir)))
    if failure is not None:
        raise failure
    if summary["verdict"] and summary["verdict"]["bottleneck"] in INVALID:
        why = INVALID_WHY[summary["verdict"]["bottleneck"]]
        print(f"fastapi-harness: the run is invalid: {why} (see the verdict)", file=sys.stderr)
        return EXIT_INVALID
    if getattr(args, "check", False):
        why = slo_broken(summary, scenario.slo)
        if why:
            print(f"fastapi-harness: SLO broken: {why}", file=sys.stderr)
            return EXIT_SLO_BROKEN
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.errors import Interrupted
    from harness.knee_search import DiagnoseOptions, KneeSearch
    from harness.matrix import expand, parse_axes, read_matrix, run_matrix, summarize_matrix, validate
    from harness.report.compare import render_compare_html, render_compare_markdown
    from harness.runner import run_scenario
    from harness.sampling.host import machine_info

    if bool(args.scenario) == bool(args.app):
        raise ConfigError("compare needs a scenario file or --app module:app with --get PATH (not both)")
    if (args.get or args.post) and not args.app:
        raise ConfigError("--get and --post go with --app; a scenario file lists its [[requests]]")
    path = Path(args.scenario or ".")
    raw = read_scenario_file(path) if args.scenario else _app_raw(args)
    if args.repeat < 1:
        raise ConfigError("--repeat must be ≥ 1")
    configs = expand(parse_axes(args.workers, args.server, args.set))
    total = len(configs) * args.repeat
    if total > args.max_configs and not args.yes:
        raise ConfigError(f"the matrix has {len(configs)} configurations × {args.repeat} repeat(s) = {total} runs, "
                          f"more than --max-configs {args.max_configs}; pass --yes to run them all")
    base = {"load.duration": args.duration} if args.duration else {}
    scenarios = validate(raw, str(path) if args.scenario else "command line", path.parent, base, configs)
    options = None if args.fixed else DiagnoseOptions.from_flags(args.max_rate, args.max_time, args.step,
                                                                 refine=not args.no_refine)

    def run(scenario: Scenario, run_dir: Path, say: Any) -> str:
        return run_scenario(scenario, run_dir, KneeSearch(options, say) if options else None)

    out = Path(args.out) if args.out else default_run_dir(f"compare-{scenarios[0].name}")
    if (out / "runs.json").exists():
        raise ConfigError(f"--out {out} already holds a comparison; choose a new directory")
    say = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    interrupted: Interrupted | None = None
    try:
        record = run_matrix(configs, scenarios, out, args.repeat, "fixed" if args.fixed else "diagnose", run,
                            write_reports, say)
    except Interrupted as e:
        interrupted = e
        record = read_matrix(out)
    table, curves = summarize_matrix(out, record, machine_info()["cpus"])
    (out / "summary.json").write_text(json.dumps({"table": table, "runs": record}, indent=2, default=str))
    (out / "report.html").write_text(render_compare_html(table, curves, record))
    print(render_compare_markdown(table))
    print(f"comparison: {out}")
    if interrupted is not None:
        raise interrupted
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from harness.matrix import diff_runs
    from harness.report.compare import render_diff_html, render_diff_markdown

    threshold = None
    if args.fail_on_regression:
        try:
            threshold = float(args.fail_on_regression.rstrip("%")) / 100
        except ValueError:
            raise ConfigError(
                f"--fail-on-regression {args.fail_on_regression!r}: expected a percentage like 5%"
            ) from None
    diffs = diff_runs(Path(args.before), Path(args.after), threshold, args.force)
    markdown = "\n".join(render_diff_markdown(d) for d in diffs)
    out = Path(args.out) if args.out else default_run_dir("diff")
    out.mkdir(parents=True, exist_ok=True)
    (out / "diff.md").write_text(markdown)
    (out / "diff.json").write_text(json.dumps([d.to_json() for d in diffs], indent=2))
    (out / "diff.html").write_text(render_diff_html(diffs))
    print(markdown)
    failures = [f"{d.label}: {f}" if d.label else f for d in diffs for f in d.regressions]
    if failures:
        print("fastapi-harness: regression: " + "; ".join(failures), file=sys.stderr)
        return EXIT_SLO_BROKEN
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "compare":
            return cmd_compare(args)
        if args.command == "diff":
            return cmd_diff(args)
        if args.command == "export-jmx":
            return cmd_export_jmx(args)
        if args.command == "ingest":
            return cmd_ingest(args)
        return cmd_run(args)
    except HarnessError as e:
        print(f"fastapi-harness: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("fastapi-harness: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
