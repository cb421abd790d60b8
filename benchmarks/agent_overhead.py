"""What the in-process agent costs: /fast on one worker, with and without the agent.

    python benchmarks/agent_overhead.py [--boots 5] [--pairs 4] [--seconds 2] [--users 50]

Boots two copies of sample_app through the harness launcher, each one uvicorn worker
(scenarios/fast.toml): A without the agent, B with it (no profiling). Then one harness
driver process drives them in turns with the same closed load, A B, B A, A B ..., a short
slice each, so that the machine's drift (its speed wanders by tens of percent over minutes
on this shared 2-core machine, which buries a 3 % effect when whole runs take turns) weighs
on both sides of every pair alike. Only one server is loaded at a time. Both servers are
booted afresh --boots times, because one process can be a few percent faster than another
of the same code for the whole of its life (memory layout, hash seeds). Prints every pair
and the medians of the pairs' ratios B/A for throughput and p99. Each boot's first pair
warms the servers up and is not counted. Also printed: the server's CPU time per request (all
its threads, the agent's included). Load goes to 127.0.0.1 only, bounded by
--boots × --pairs × --seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.config import Scenario, load_scenario  # noqa: E402
from harness.launcher import HOST, Server  # noqa: E402
from harness.load.histogram import Histogram  # noqa: E402
from harness.load.manager import DriverFleet, shard_plans  # noqa: E402


def drive(scenario: Scenario, server: Server, log_dir: Path) -> tuple[float, float, float]:
    """One slice of load: completed requests per second, p99 in ms, and the server's CPU µs per request."""
    records: list[dict] = []
    cpu_before = server_cpu(server)
    with DriverFleet(shard_plans(scenario, HOST, server.port, time.time() + 0.3, 1), records.append, log_dir) as fleet:
        while not fleet.finished():
            time.sleep(0.02)
    cpu = server_cpu(server) - cpu_before
    seconds = [r for r in records if r["type"] == "second"]
    assert seconds and not fleet.failed(), f"the driver failed; see {log_dir}"
    completed = sum(sum(r["outcomes"].values()) for r in seconds)
    p99 = Histogram.merged(Histogram.from_json(r["hist"]) for r in seconds).percentile(0.99) / 1000
    return completed / sum(r["span"] for r in seconds), p99, cpu / completed * 1e6


def server_cpu(server: Server) -> float:
    """CPU seconds the server's processes (all threads) have used so far."""
    return sum(sum(p.cpu_times()[:2]) for p in server.tree())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--boots", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=4, help="counted pairs per boot")
    ap.add_argument("--seconds", type=int, default=2)
    ap.add_argument("--users", type=int, default=50)
    args = ap.parse_args()
    scenario = load_scenario(ROOT / "scenarios" / "fast.toml", overrides={
        "load.users": args.users, "load.duration": f"{args.seconds}s"})
    ratios: list[tuple[float, float, float]] = []
    print(f"/fast, 1 uvicorn worker each, {args.users} users, {args.seconds} s slices; pair 0 of each boot warms up")
    for boot in range(args.boots):
        with tempfile.TemporaryDirectory() as tmp:
            dirs = {agent: Path(tmp) / ("agent" if agent else "no-agent") for agent in (False, True)}
            for d in dirs.values():
                d.mkdir()
            with Server(dataclasses.replace(scenario.app, agent=False), dirs[False]) as bare, \
                    Server(scenario.app, dirs[True], scenario.agent) as with_agent:
                servers = {False: bare, True: with_agent}
                run_pairs(scenario, servers, dirs, args.pairs, boot, ratios)
    print(f"throughput ratio agent/no-agent:      median {statistics.median(r[0] for r in ratios):.3f} "
          f"over {len(ratios)} pairs (target ≥ 0.97)")
    print(f"p99 ratio agent/no-agent:             median {statistics.median(r[1] for r in ratios):.3f} (target ≤ 1.05)")
    print(f"CPU per request ratio agent/no-agent: median {statistics.median(r[2] for r in ratios):.3f} "
          f"(all the server's threads)")


def run_pairs(scenario: Scenario, servers: dict[bool, Server], dirs: dict[bool, Path], pairs: int, boot: int,
              ratios: list[tuple[float, float, float]]) -> None:
    """Drive the two servers in turns; append each counted pair's ratios B/A: throughput, p99, CPU per request."""
    for i in range(pairs + 1):
        got = {agent: drive(scenario, servers[agent], dirs[agent])
               for agent in ((False, True) if i % 2 == 0 else (True, False))}
        a, b = got[False], got[True]
        r = (b[0] / a[0], b[1] / a[1], b[2] / a[2])
        print(f"boot {boot + 1} pair {i}: no agent {a[0]:7,.0f} req/s p99 {a[1]:6.2f} ms {a[2]:5.1f} µs CPU/req | "
              f"agent {b[0]:7,.0f} req/s p99 {b[1]:6.2f} ms {b[2]:5.1f} µs CPU/req | ratios {r[0]:.3f} {r[1]:.3f} {r[2]:.3f}",
              flush=True)
        if i:
            ratios.append(r)

if __name__ == "__main__":
    main()
