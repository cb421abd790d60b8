"""N app instances behind nginx: a target kind that boots the instances, then nginx in front of them.

Each instance is a ``LocalServer`` of its own (its own workers, port, logs and agents); nginx
runs in the foreground as the harness's child with a configuration written into the run
directory (upstream of the instances with keep-alive, the balance asked for, access log off,
``stub_status`` on a second loopback port), checked with ``nginx -t`` first. The load goes to
nginx. Every process is stopped on every exit path, nginx first.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import psutil

from harness.config import AgentConfig, AppConfig, ProxyConfig
from harness.errors import BootError, ConfigError
from harness.launcher import HOST, LocalServer, find_binary, free_port
from harness.processes import spawn, stderr_tail, stop_group
from harness.sampling.services import NginxWatcher
from harness.target import Target

NGINX_HINT = "install it (`apt-get install nginx-light` on Debian/Ubuntu) or point [proxy] binary at it"
STATUS_PATH = "/nginx_status"


def nginx_conf(proxy: ProxyConfig, upstreams: list[int], port: int, status_port: int, prefix: Path) -> str:
    """The whole nginx.conf: one upstream of the instances, a server on ``port``, stub_status on another."""
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""  # workers keep our files
    balance = "    least_conn;\n" if proxy.balance == "least_conn" else ""
    servers = "".join(f"    server {HOST}:{p} max_fails=0;\n" for p in upstreams)
    temp = "".join(f"    {k}_temp_path {prefix / 'tmp' / k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                          "scgi"))
    return f"""# written by fastapi-harness for this run
{user}worker_processes {proxy.workers};
daemon off;
pid {prefix / 'nginx.pid'};
error_log {prefix / 'error.log'} warn;
events {{
    worker_connections {proxy.worker_connections};
}}
http {{
    access_log off;
{temp}    upstream app {{
{balance}{servers}    keepalive {max(16, proxy.worker_connections // 4)};
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_connect_timeout 5s;
        }}
    }}
    server {{
        listen {HOST}:{status_port};
        location = {STATUS_PATH} {{
            stub_status;
        }}
    }}
}}
"""


class ProxiedServers(Target):
    """``app.instances`` servers behind nginx; the load goes to nginx."""

    def __init__(self, app: AppConfig, proxy: ProxyConfig, run_dir: Path, agent: AgentConfig | None = None,
                 env: dict[str, str] | None = None):
        self.app, self.proxy_config = app, proxy
        self.run_dir = run_dir.resolve()
        self.instances = [LocalServer(app, run_dir, agent, env, instance=k) for k in range(app.instances)]
        self.has_agent = any(s.has_agent for s in self.instances)
        self.prefix = self.run_dir / "nginx"
        self.port = self.status_port = 0
        self.nginx: subprocess.Popen | None = None
        self.exe = ""

    @property
    def address(self) -> tuple[str, int]:
        return HOST, self.port

    @property
    def status_url(self) -> str:
        return f"http://{HOST}:{self.status_port}{STATUS_PATH}"

    @property
    def error_log(self) -> Path:
        return self.prefix / "error.log"

    def start(self) -> None:
        exe = self.exe = find_binary(self.proxy_config.binary, "[proxy] binary", NGINX_HINT)
        for server in self.instances:  # all boot at once; each is then waited for
            server.launch()
        for server in self.instances:
            server.wait_ready()
        self.port, self.status_port = free_port(), free_port()
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(nginx_conf(self.proxy_config, [s.port for s in self.instances], self.port, self.status_port,
                                   self.prefix))
        base = [exe, "-p", str(self.prefix), "-c", str(conf)]
        check = subprocess.run([*base, "-t", "-q"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if check.returncode != 0:
            why = next((ln for ln in check.stderr.splitlines() if "emerg" in ln or "failed" in ln),
                       check.stderr.strip() or f"exit {check.returncode}")
            raise ConfigError(f"nginx rejected the configuration written from [proxy] ({conf}): {why}")
        with open(self.prefix / "nginx.stderr.log", "wb") as err:
            self.nginx = spawn(base, stdout=err, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 10.0
        url = self.url + self.app.readiness.path
        with httpx.Client(timeout=1.0) as client:
            while True:
                if self.nginx is not None and self.nginx.poll() is not None:
                    raise BootError(f"nginx exited at start (code {self.nginx.returncode}): "
                                    f"{stderr_tail(self.prefix / 'nginx.stderr.log', 3).strip()}")
                try:
                    if client.get(url).status_code < 500:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise BootError(f"nginx did not answer GET {self.app.readiness.path} through its upstreams "
                                    f"within 10 s; its error log: {self.error_log}")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.nginx is not None:
            stop_group(self.nginx, grace_s=3.0)
        for server in self.instances:
            server.stop()

    def alive(self) -> bool:
        """nginx up and at least one instance serving (one instance down is reported, not fatal)."""
        serving = [s.alive() for s in self.instances]  # each asked: that reaps one that exited
        return self.nginx is not None and self.nginx.poll() is None and any(serving)

    def death_note(self) -> tuple[str, str]:
        if self.nginx is not None and self.nginx.poll() is not None:
            return f"nginx exited with code {self.nginx.returncode}", stderr_tail(self.prefix / "nginx.stderr.log")
        return "every instance exited", "\n".join(s.death_note()[1] for s in self.instances)

    def processes(self) -> list[tuple[int, str]]:
        out = [p for s in self.instances for p in s.processes()]
        if self.nginx is not None and self.nginx.poll() is None:
            try:
                out += [(self.nginx.pid, "proxy"),
                        *((c.pid, "proxy") for c in psutil.Process(self.nginx.pid).children())]
            except psutil.Error:
                pass
        return out

    def watchers(self, t0: float, on_record: Callable[[Any], None]) -> list[Any]:
        return [NginxWatcher(self.status_url, self.error_log, t0, on_record)]

    def describe(self) -> dict[str, Any]:
        return {"kind": "nginx", "workers": self.app.workers * len(self.instances), "url": self.url,
                "pid": self.nginx.pid if self.nginx else None,
                "command": [self.exe, "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf")],
                "instances": [s.describe() for s in self.instances],
                "proxy": {"kind": "nginx", "balance": self.proxy_config.balance, "workers": self.proxy_config.workers,
                          "worker_connections": self.proxy_config.worker_connections,
                          "status_url": self.status_url, "error_log": str(self.error_log)}}
