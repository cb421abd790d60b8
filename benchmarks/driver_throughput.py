"""The harness driver vs wrk, one core each, against the same loopback target.

    python benchmarks/driver_throughput.py [--runs 9] [--seconds 3] [--connections 50] [--jtl]

The target is nginx when installed (one worker pinned to core 0), else a minimal uvloop
server. wrk (when installed) and one harness driver process (full latency recording)
take turns on core 1 with the same connection count. Prints each run, the medians and
the ratio driver / wrk, both as a ratio of medians and as the median of each run's paired
ratio (the steadier figure on a shared machine). Load goes to 127.0.0.1 only, bounded by --seconds.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.config import build_scenario  # noqa: E402
from harness.load.jtl import join_parts  # noqa: E402
from harness.load.manager import shard_plans  # noqa: E402

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


def run_wrk(port: int, seconds: int, connections: int) -> float:
    out = subprocess.run(pinned(1, ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"http://127.0.0.1:{port}/"]),
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def run_driver(port: int, seconds: int, connections: int, jtl_dir: Path | None = None) -> float:
    scenario = build_scenario({"load": {"users": connections, "duration": f"{seconds}s"}, "requests": [{"path": "/"}]})
    plan = shard_plans(scenario, "127.0.0.1", port, time.time() + 0.5, 1, jtl_dir=jtl_dir)[0]
    proc = subprocess.Popen(pinned(1, [sys.executable, "-m", "harness.load.worker"]), cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        proc.stdin.write(json.dumps(plan) + "\n")
        proc.stdin.flush()
        seconds_recs = []
        for line in proc.stdout:
            rec = json.loads(line)
            if rec["type"] == "second":
                seconds_recs.append(rec)
            elif rec["type"] == "done":
                break
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    recorded = sum(c for r in seconds_recs for _, c in r["hist"]["b"])
    ok = sum(r["outcomes"].get("ok", 0) for r in seconds_recs)
    assert recorded == ok, "every response must be in a latency histogram"
    if jtl_dir is not None:
        t = time.perf_counter()
        lines = join_parts([plan["jtl"]], str(jtl_dir / "results.jtl"))
        print(f"  JTL: {lines:,} lines formatted by the manager in {time.perf_counter() - t:.2f} s")
        assert lines == sum(sum(r["outcomes"].values()) for r in seconds_recs), "one JTL line per request"
    return ok / sum(r["span"] for r in seconds_recs)


def ratio_line(what: str, ours: list[float], anchor: list[float]) -> str:
    paired = statistics.median(a / b for a, b in zip(ours, anchor))
    return (f"ratio {what}: {statistics.median(ours) / statistics.median(anchor):.2f} (medians), "
            f"{paired:.2f} (median of the runs' paired ratios)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--jtl", action="store_true", help="also run the driver writing a JTL line per request, and compare")
    args = ap.parse_args()
    has_wrk = shutil.which("wrk") is not None
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        target, name = start_target(Path(tmp), port)
        try:
            print(f"target: {name}; load generator on core 1; {args.connections} connections, {args.seconds} s per run")
            wrk, ours, with_jtl = [], [], []
            for i in range(args.runs):
                # each run's contenders go back to back, in reversed order every other run, so that
                # the machine's drift (other tenants) weighs on both sides of a paired ratio alike
                todo = [lambda: ours.append(run_driver(port, args.seconds, args.connections))]
                if has_wrk:
                    todo.append(lambda: wrk.append(run_wrk(port, args.seconds, args.connections)))
                if args.jtl:
                    todo.append(lambda: with_jtl.append(run_driver(port, args.seconds, args.connections, Path(tmp))))
                for step in todo[::-1] if i % 2 else todo:
                    step()
                print(f"run {i + 1}: " + (f"wrk {wrk[-1]:,.0f} req/s   " if has_wrk else "") + f"harness driver {ours[-1]:,.0f} req/s"
                      + (f"   with JTL {with_jtl[-1]:,.0f} req/s" if args.jtl else ""))
        finally:
            target.terminate()
            target.wait(timeout=10)
    print(f"median: harness driver {statistics.median(ours):,.0f} req/s (latency recorded for every response)")
    if with_jtl:
        print(f"median: with a JTL line per request {statistics.median(with_jtl):,.0f} req/s")
        print(ratio_line("with JTL / without (target ≥ 0.90)", with_jtl, ours))
    if has_wrk:
        print(f"median: wrk {statistics.median(wrk):,.0f} req/s")
        print(ratio_line("driver / wrk per core (target ≥ 1.0)", ours, wrk))
    else:
        print("wrk is not installed (apt-get install wrk): no anchor, no ratio")


if __name__ == "__main__":
    main()
