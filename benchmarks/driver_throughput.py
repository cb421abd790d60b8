"""The harness driver vs wrk: requests per CPU-second, both on one core, at the same time.

    python benchmarks/driver_throughput.py [--rounds 9] [--seconds 3] [--connections 50] [--jtl] [--pure]

The target is nginx when installed (one worker pinned to core 0), else a minimal uvloop
server. In each round wrk (when installed) and one harness driver process (latency recorded for every
response), and with ``--jtl`` / ``--pure`` a driver writing a JTL line per request / a
driver on its pure-Python hot path, run *together* on core 1, each with its own
connections. Taking turns does not resolve a few percent here: the target saturates its
core too (so req/s is capped by it, not by the generator), and this VM's speed drifts by
±15 % within seconds. Run together, every contender sees the same machine at every
instant, and its requests per CPU-second of its own process (wrk: its rusage; a driver:
its per-second CPU figure, start-up excluded) is its cost per request, whatever the
target's speed. Prints each round, the medians and each driver's paired ratio to wrk.
Load goes to 127.0.0.1 only, bounded by --seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.config import build_scenario  # noqa: E402
from harness.load.jtl import join_parts  # noqa: E402
from harness.load.manager import shard_plans  # noqa: E402
from harness.records import DriverDone, DriverSecond, driver_record  # noqa: E402

NGINX_CONF = """
worker_processes 1;
worker_cpu_affinity 01;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir};
    uwsgi_temp_path {dir}; scgi_temp_path {dir};
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type application/json; return 200 '{{"status":"ok"}}'; }}
    }}
}}
"""

FALLBACK_SERVER = textwrap.dedent("""
    import asyncio, sys, uvloop
    RESP = b'HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nContent-Length: 15\\r\\n\\r\\n{"status":"ok"}'
    class P(asyncio.Protocol):
        def connection_made(self, t): self.t = t
        def data_received(self, d): self.t.write(RESP * d.count(b'\\r\\n\\r\\n'))
    async def main():
        srv = await asyncio.get_running_loop().create_server(P, '127.0.0.1', int(sys.argv[1]))
        await srv.serve_forever()
    uvloop.run(main())
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(core: int, cmd: list[str]) -> list[str]:
    return (["taskset", "-c", str(core)] if shutil.which("taskset") else []) + cmd


def start_target(tmp: Path, port: int) -> tuple[subprocess.Popen, str]:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx:
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=tmp, port=port))
        proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp)], stderr=subprocess.DEVNULL)
        name = "nginx (1 worker, core 0)"
    else:
        proc = subprocess.Popen(pinned(0, [sys.executable, "-c", FALLBACK_SERVER, str(port)]))
        name = "minimal uvloop server (core 0)"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, name
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("the benchmark target did not start")


@dataclass
class Share:
    """What one load generator did in one round: requests answered, wall and CPU seconds."""

    requests: int
    wall_s: float
    cpu_s: float

    @property
    def rps(self) -> float:
        return self.requests / self.wall_s

    @property
    def per_cpu_s(self) -> float:
        return self.requests / self.cpu_s


def run_wrk(port: int, seconds: int, connections: int, start: float) -> Share:
    time.sleep(max(0.0, start - time.time()))
    proc = subprocess.Popen(pinned(1, ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"http://127.0.0.1:{port}/"]),
                            stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # wrk's own CPU time (taskset execs it: same PID)
    proc.returncode = os.waitstatus_to_exitcode(status)
    done = re.search(r"(\d+) requests in ([\d.]+)s", out)
    return Share(int(done.group(1)), float(done.group(2)), usage.ru_utime + usage.ru_stime)


def run_driver(port: int, seconds: int, connections: int, start: float, jtl_dir: Path | None = None,
               pure: bool = False) -> Share:
    scenario = build_scenario({"load": {"users": connections, "duration": f"{seconds}s"}, "requests": [{"path": "/"}]})
    plan = shard_plans(scenario, "127.0.0.1", port, start, 1, jtl_dir=jtl_dir)[0]
    env = {**os.environ, "FASTAPI_HARNESS_PURE_PYTHON": "1"} if pure else None
    proc = subprocess.Popen(pinned(1, [sys.executable, "-m", "harness.load.driver"]), cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        proc.stdin.write(json.dumps(plan.to_json()) + "\n")
        proc.stdin.flush()
        seconds_recs = []
        for line in proc.stdout:
            rec = driver_record(json.loads(line))
            if isinstance(rec, DriverSecond):
                seconds_recs.append(rec)
            elif isinstance(rec, DriverDone):
                assert rec.hot_path == ("python" if pure else "c"), "the C hot path is not built: pip install -e ."
                break
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    recorded = sum(r.hist.count for r in seconds_recs)
    ok = sum(r.outcomes.get("ok", 0) for r in seconds_recs)
    assert recorded == ok, "every response must be in a latency histogram"
    if jtl_dir is not None:
        lines = join_parts([plan.jtl], str(jtl_dir / "results.jtl"))
        assert lines == sum(sum(r.outcomes.values()) for r in seconds_recs), "one JTL line per request"
    # the driver's CPU while it drove (its own per-second figure), not its interpreter's start-up
    return Share(ok, sum(r.span for r in seconds_recs), sum(r.cpu * r.span for r in seconds_recs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--jtl", action="store_true", help="also a driver writing a JTL line per request")
    ap.add_argument("--pure", action="store_true", help="also a driver on its pure-Python hot path")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        target, name = start_target(Path(tmp), port)
        contenders: dict[str, Callable[[float], Share]] = {
            "driver": lambda start: run_driver(port, args.seconds, args.connections, start),
        }
        if shutil.which("wrk"):
            contenders["wrk"] = lambda start: run_wrk(port, args.seconds, args.connections, start)
        if args.jtl:
            contenders["driver+JTL"] = lambda start: run_driver(port, args.seconds, args.connections, start, Path(tmp))
        if args.pure:
            contenders["driver (pure Python)"] = lambda start: run_driver(port, args.seconds, args.connections, start,
                                                                          pure=True)
        shares: dict[str, list[Share]] = {k: [] for k in contenders}
        try:
            print(f"target: {name}; load generators together on core 1, {args.connections} connections each, "
                  f"{args.seconds} s per round")
            with ThreadPoolExecutor(len(contenders)) as pool:
                for i in range(args.rounds):
                    start = time.time() + 1.5  # every contender is up by then and they all start at once
                    futures = {k: pool.submit(run, start) for k, run in contenders.items()}
                    for k, f in futures.items():
                        shares[k].append(f.result())
                    print(f"round {i + 1}: " + "   ".join(
                        f"{k} {v[-1].rps:,.0f} req/s, {v[-1].per_cpu_s:,.0f} per CPU-s" for k, v in shares.items()))
        finally:
            target.terminate()
            target.wait(timeout=10)
    anchor = shares.get("wrk")
    for k, v in shares.items():
        line = (f"median: {k} {statistics.median(s.rps for s in v):,.0f} req/s, "
                f"{statistics.median(s.per_cpu_s for s in v):,.0f} requests per CPU-second")
        if anchor and k != "wrk":
            paired = [a.per_cpu_s / b.per_cpu_s for a, b in zip(v, anchor)]
            line += f"; per core vs wrk: {statistics.median(paired):.2f} (rounds {min(paired):.2f} … {max(paired):.2f})"
        print(line)
    print("target: the driver (latency recorded for every response) ≥ 1.0× wrk per core" if anchor else
          "wrk is not installed (apt-get install wrk): no anchor, no ratio")


if __name__ == "__main__":
    main()
