"""The local target: boots the app's server tree on loopback, waits until it answers, and always
takes it down (``LocalServer``, a ``target.Target``; leaving it as a context manager — normally,
on an exception, on Ctrl-C or SIGTERM turned into an exception — stops the whole tree).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx

from harness.config import AgentConfig, AppConfig
from harness.errors import BootError, ConfigError, PortInUseError
from harness.processes import spawn, stderr_tail, stop_group, tree_roles
from harness.target import HOST, Target

AGENT_PACKAGE = "fastapi_harness_agent"
AGENT_FACTORY = f"{AGENT_PACKAGE}.boot:create_app"
AGENT_ENV = "FASTAPI_HARNESS_AGENT"
RUN_DIR_ENV = "FASTAPI_HARNESS_RUN_DIR"


@dataclass(frozen=True)
class FdLimits:
    soft_before: int
    soft: int
    hard: int


def raise_fd_limit() -> FdLimits:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        target = soft
    return FdLimits(soft, target, hard)


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(port: int, host: str = HOST) -> None:
    """Raise PortInUseError when ``port`` is already bound."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise PortInUseError(
                f"port {port} on {host} is already in use; stop what listens there "
                f"(`ss -ltnp 'sport = :{port}'`) or set [app] port = 0 to pick a free one"
            ) from None


def find_binary(name: str, field: str, hint: str) -> str:
    """The executable ``name`` (on the PATH, in the sbin folders a non-root PATH lacks, or a path), else a
    ConfigError naming ``field`` and how to install it."""
    found = (name if os.access(name, os.X_OK) and "/" in name else
             shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])))
    if not found:
        raise ConfigError(f"{field} = {name!r}: not found; {hint}")
    return found


def resolve_python(app: AppConfig) -> str:
    """The interpreter that runs the app: its own when ``[app] python`` names one."""
    if not app.python:
        return sys.executable
    found = shutil.which(app.python) if "/" not in app.python else app.python
    if not found or not os.access(found, os.X_OK):
        raise ConfigError(
            f"[app] python = {app.python!r} is not an executable interpreter; "
            "point it at the app's virtualenv, e.g. python = \".venv/bin/python\""
        )
    return found


def server_command(app: AppConfig, python: str, port: int) -> list[str]:
    """The argv that starts the server tree for ``app`` on HOST:port."""
    if app.server == "gunicorn":
        target = app.target + ("()" if app.factory else "")
        return [
            python, "-m", "gunicorn", target, "--worker-class", "uvicorn.workers.UvicornWorker",
            "--workers", str(app.workers), "--bind", f"{HOST}:{port}", "--chdir", app.app_dir,
            "--graceful-timeout", "5", "--log-level", "warning",
            *(["--backlog", str(app.backlog)] if app.backlog else []),
        ]
    cmd = [
        python, "-m", "uvicorn", app.target, "--host", HOST, "--port", str(port),
        "--app-dir", app.app_dir, "--loop", app.loop, "--log-level", "warning",
    ]
    if app.workers > 1:
        cmd += ["--workers", str(app.workers)]
    if app.backlog:
        cmd += ["--backlog", str(app.backlog)]
    if app.factory:
        cmd.append("--factory")
    if not app.access_log:
        cmd.append("--no-access-log")
    return cmd


def install_agent(run_dir: Path) -> Path:
    """Copy the agent package into the run directory; return the folder to put on the app's path.

    A copy (not the installed harness) keeps the app's interpreter free of the harness's
    dependencies, and records exactly which agent ran.
    """
    dest = run_dir / ".agent"
    shutil.copytree(Path(__file__).parent / "agent", dest / AGENT_PACKAGE, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def agent_options(app: AppConfig, agent: AgentConfig, run_dir: Path) -> dict[str, object]:
    """What the agent reads from its environment variable."""
    return {"target": app.target, "factory": app.factory, "run_dir": str(run_dir), "app_dir": app.app_dir,
            "stall_ms": agent.stall_threshold_ms, "hot_hz": agent.hotspot_hz, "tracemalloc": agent.tracemalloc}


_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$")
# Python's words, and uvicorn's when it imports the app itself (--no-agent)
_NO_MODULE = re.compile(r"No module named '([^']+)'|Could not import module \"([^\"]+)\"")
_NO_ATTRIBUTE = re.compile(r"has no attribute '([^']+)'|Attribute \"([^\"]+)\" not found")


def boot_failure(log: Path, app: AppConfig) -> str:
    """Why the app did not start, in one line: the last error its output shows, and what to do."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    error = next((line for line in reversed(lines) if _ERROR_LINE.match(line)), lines[-1] if lines else "")
    if not error:
        return "it printed nothing"
    message = _ERROR_LINE.sub(r"\2", error)
    module, _, attribute = app.target.partition(":")
    missing = _NO_MODULE.search(error)
    name = (missing.group(1) or missing.group(2)) if missing else ""
    if missing and module.split(".")[0] == name.split(".")[0]:
        near = difflib.get_close_matches(name, _modules_in(app.app_dir), n=1)
        return (f"{message} (no module '{name}' in {app.app_dir}" + (f"; did you mean '{near[0]}'?" if near else "")
                + ") — give --app MODULE:ATTRIBUTE (or [app] target) of a module in --app-dir (or [app] app_dir)")
    if missing:
        return (f"{message} — the app imports it and {app.python or 'this Python'} does not have it: install it "
                "there, or give --python the app's own interpreter")
    absent = _NO_ATTRIBUTE.search(error)
    if absent and (absent.group(1) or absent.group(2)) == attribute.split(".")[0]:
        names = _module_names(Path(app.app_dir) / (module.replace(".", "/") + ".py"))
        near = difflib.get_close_matches(attribute, names, n=1)
        return (f"{message}" + (f"; did you mean '{near[0]}'?" if near else "")
                + (f" ({module} defines: {', '.join(names[:12])})" if names else ""))
    return message


def _modules_in(folder: str) -> list[str]:
    """The importable modules and packages directly in ``folder``."""
    try:
        return sorted(p.stem for p in Path(folder).iterdir()
                      if (p.suffix == ".py" or (p / "__init__.py").exists()) and p.stem.isidentifier())
    except OSError:
        return []


def _module_names(path: Path) -> list[str]:
    """The names a module's top level assigns (read, not imported: the app's import already failed once)."""
    try:
        tree = ast.parse(path.read_text(errors="replace"))
    except (OSError, SyntaxError, ValueError):
        return []
    names = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AnnAssign, ast.AugAssign)) else []
        names += [t.id for t in targets if isinstance(t, ast.Name)]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.append(node.name)
    return list(dict.fromkeys(names))


class LocalServer(Target):
    """The target's server tree booted here: master plus workers (or one process for a single worker)."""

    def __init__(self, app: AppConfig, run_dir: Path, agent: AgentConfig | None = None,
                 env: dict[str, str] | None = None, instance: int | None = None):
        self.app = app
        self.run_dir = run_dir.resolve()
        self.agent = agent if app.agent else None
        self.has_agent = self.agent is not None
        self.extra_env = env or {}
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.command: list[str] = []
        self.instance = instance  # behind a proxy: which instance this is (its logs and agents say so)
        name = "server" if instance is None else f"server-{instance}"
        self.stdout_path = self.run_dir / f"{name}.stdout.log"
        self.stderr_path = self.run_dir / f"{name}.stderr.log"

    @property
    def address(self) -> tuple[str, int]:
        return HOST, self.port

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the server tree (without waiting for it to answer)."""
        app = self.app
        if not Path(app.app_dir).is_dir():
            raise ConfigError(
                f"[app] app_dir = {app.app_dir!r} is not a directory; point it at the folder holding your app"
            )
        python = resolve_python(app)
        if app.port:
            check_port_free(app.port)
        self.port = app.port or free_port()
        env = {**os.environ, **app.env, **self.extra_env, "PYTHONUNBUFFERED": "1", RUN_DIR_ENV: str(self.run_dir)}
        booted = app
        if self.agent is not None:
            path = install_agent(self.run_dir)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path), env.get("PYTHONPATH", "")]))
            env[AGENT_ENV] = json.dumps({**agent_options(app, self.agent, self.run_dir), "instance": self.instance})
            booted = dataclasses.replace(app, target=AGENT_FACTORY, factory=True)
        self.command = server_command(booted, python, self.port)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = spawn(self.command, cwd=app.app_dir, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                              preexec=_fd_limiter(app.fd_limit) if app.fd_limit else None)

    def wait_ready(self) -> None:
        """Return once the app answers on its readiness path with every worker up."""
        app = self.app
        deadline = time.monotonic() + app.readiness.timeout_s
        url = self.url + app.readiness.path
        with httpx.Client(timeout=1.0) as client:
            while True:
                if self.proc and self.proc.poll() is not None:
                    raise BootError(f"the app exited during start-up (code {self.proc.returncode}): "
                                    f"{boot_failure(self.stderr_path, app)}; its whole output: {self.stderr_path}")
                if time.monotonic() > deadline:
                    raise BootError(
                        f"the app did not answer GET {app.readiness.path} within {app.readiness.timeout_s:g} s; "
                        f"raise [app.readiness] timeout or set its path to a route that answers. Its stderr:\n"
                        f"{stderr_tail(self.stderr_path)}"
                    )
                try:
                    client.get(url)
                    if len(self.worker_pids()) >= app.workers:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)

    def processes(self) -> list[tuple[int, str]]:
        return tree_roles(self.proc.pid) if self.proc else []

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def death_note(self) -> tuple[str, str]:
        return f"code {self.proc.returncode if self.proc else None}", stderr_tail(self.stderr_path)

    def describe(self) -> dict[str, object]:
        return {"kind": self.app.server, "workers": self.app.workers, "command": self.command, "pid": self.pid or None,
                "url": self.url, **({"instance": self.instance} if self.instance is not None else {})}

    def stop(self, grace_s: float = 8.0) -> None:
        """SIGTERM to the tree's group, wait, then kill whatever is left of the tree and its group."""
        if not self.proc:
            return
        stop_group(self.proc, grace_s)


def _fd_limiter(limit: int) -> Callable[[], None]:
    """Lower the server's soft RLIMIT_NOFILE (runs in the child before exec; no threads exist yet)."""

    def apply() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))

    return apply
