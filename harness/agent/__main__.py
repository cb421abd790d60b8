"""Run a server with the agent inside, streaming to a harness that did not start it.

    python -m fastapi_harness_agent --sink tcp://HARNESS:PORT/TOKEN -- uvicorn main:app --port 8000
    python -m fastapi_harness_agent --sink tcp://HARNESS:PORT/TOKEN -- gunicorn main:app -k \
        uvicorn.workers.UvicornWorker

The harness prints the sink (``fastapi-harness run --url … --agent-sink PORT``). The app named in
the server's command is booted through the agent's factory, as the harness boots its own (the
agent package is copied into a temporary folder on the server's path, so the server's Python
needs nothing installed); the server runs as this process's child, gets the signals this process
gets, and its exit code is this one's. In the app's own code instead:
``app = fastapi_harness_agent.attach(app, sink="tcp://…")``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import List, Optional, Tuple

from .boot import ENV
from .sink import parse_sink

PACKAGE = "fastapi_harness_agent"
FACTORY = PACKAGE + ".boot:create_app"


def _server(cmd: List[str]) -> Tuple[str, int]:
    """Which server the command runs ("uvicorn" or "gunicorn") and where its arguments start."""
    for i, word in enumerate(cmd[:3]):
        name = os.path.basename(word)
        if name in ("uvicorn", "gunicorn"):
            return name, i + 1
        if word == "-m" and i + 1 < len(cmd) and cmd[i + 1] in ("uvicorn", "gunicorn"):
            return cmd[i + 1], i + 2
    raise SystemExit(f"fastapi_harness_agent: expected a uvicorn or gunicorn command after --, got {' '.join(cmd)!r}")


def _option(cmd: List[str], flag: str) -> Optional[str]:
    for i, word in enumerate(cmd):
        if word == flag and i + 1 < len(cmd):
            return cmd[i + 1]
        if word.startswith(flag + "="):
            return word.split("=", 1)[1]
    return None


def rewrite(cmd: List[str]) -> Tuple[List[str], str, bool, str]:
    """The server command with the app replaced by the agent's factory; (command, the app's target,
    whether it is a factory, the app's folder)."""
    server, start = _server(cmd)
    with_value = {"--app-dir", "--host", "--port", "--workers", "--log-level", "--env-file", "--root-path", "-w",
                  "-b", "--bind", "-k", "--worker-class", "--chdir", "-c", "--config", "--uds", "--fd",
                  "--loop", "--http", "--ws", "--lifespan", "--interface", "--timeout-keep-alive",
                  "--limit-concurrency", "--backlog", "--limit-max-requests", "--timeout", "--graceful-timeout",
                  "--threads", "-t"}
    i = start
    while i < len(cmd):
        word = cmd[i]
        if word in with_value:
            i += 2
            continue
        if not word.startswith("-") and ":" in word:
            break
        i += 1
    else:
        raise SystemExit(f"fastapi_harness_agent: no MODULE:APP in {' '.join(cmd)!r}")
    target = cmd[i]
    out = list(cmd)
    if server == "uvicorn":
        factory = "--factory" in cmd
        out[i] = FACTORY
        if not factory:
            out.insert(i + 1, "--factory")
        app_dir = _option(cmd, "--app-dir") or "."
    else:
        factory = target.endswith("()")
        target = target[:-2] if factory else target
        out[i] = FACTORY + "()"
        app_dir = _option(cmd, "--chdir") or "."
    return out, target, factory, os.path.abspath(app_dir)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cmd: List[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, cmd = argv[:cut], argv[cut + 1:]
    ap = argparse.ArgumentParser(prog="python -m fastapi_harness_agent", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sink", required=True, help="tcp://HOST:PORT/TOKEN, as the harness prints it")
    ap.add_argument("--stall-ms", type=float, default=25.0, help="a loop stall is this late (default 25)")
    ap.add_argument("--hot-hz", type=float, default=50.0, help="CPU samples per second of the loop (0: off)")
    args = ap.parse_args(argv)
    if not cmd:
        ap.error("give the server's command after --, e.g. -- uvicorn main:app --port 8000")
    try:
        parse_sink(args.sink)
    except ValueError as e:
        ap.error(str(e))
    server_cmd, target, factory, app_dir = rewrite(cmd)
    with tempfile.TemporaryDirectory(prefix="fastapi-harness-agent-") as folder:
        here = os.path.dirname(os.path.abspath(__file__))
        shutil.copytree(here, os.path.join(folder, PACKAGE), ignore=shutil.ignore_patterns("__pycache__"))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [folder, app_dir, env.get("PYTHONPATH", "")]))
        env[ENV] = json.dumps({"target": target, "factory": factory, "sink": args.sink, "app_dir": app_dir,
                               "stall_ms": args.stall_ms, "hot_hz": args.hot_hz})
        try:
            child = subprocess.Popen(server_cmd, env=env)
        except OSError as e:
            print(f"fastapi_harness_agent: cannot start {server_cmd[0]!r}: {e}", file=sys.stderr)
            return 2

        def forward(signum: int, frame: object) -> None:
            child.send_signal(signum)

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, forward)
        code = child.wait()
    if code < 0:  # ended by a signal (uvicorn re-raises SIGTERM after its shutdown): end the same way
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main())
