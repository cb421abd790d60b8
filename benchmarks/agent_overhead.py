"""What the in-process agent costs: /fast on one worker, with and without the agent.

    python benchmarks/agent_overhead.py [--boots 5] [--rounds 4] [--seconds 3] [--users 50] [--aa]
                                        [--hotspot-hz HZ] [--agent FIELD=VALUE]

Boots two copies of sample_app through the harness launcher, each one uvicorn worker
(scenarios/fast.toml): A without the agent, B with it (no profiling; ``--aa``: B without it
too, an A/A check of the benchmark's own bias and spread). Both servers are
pinned to the same core and driven *at the same time*, each by its own harness driver
with the same closed load (the drivers run on the other core): the two workers split one
core, so whatever the machine does (its speed wanders by tens of percent over seconds
on this shared 2-core machine, which buries a 3 % effect when runs take turns) weighs on
both alike, and the ratio of their throughputs is the ratio of their work per request,
the agent's thread, heartbeat and signals included. The absolute figures are about half
a solo worker's; the ratios are the measurement. Both servers are booted afresh --boots
times, because one process can be a few percent faster than another of the same code for
its whole life (memory layout, hash seeds); each boot's first round warms up and is not
counted. Prints every round and the medians of the rounds' ratios B/A for throughput, p99
and the server's CPU time per request. On a machine with one core the servers are not
pinned. Load goes to 127.0.0.1 only, bounded by --boots × (--rounds + 1) × --seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.config import Scenario, load_scenario  # noqa: E402
from harness.histogram import Histogram  # noqa: E402
from harness.launcher import HOST, LocalServer  # noqa: E402
from harness.load.manager import DriverFleet, shard_plans  # noqa: E402
from harness.records import DriverRecord, DriverSecond  # noqa: E402


def drive_both(
    scenario: Scenario, servers: dict[bool, LocalServer], dirs: dict[bool, Path]
) -> dict[bool, tuple[float, float, float]]:
    """One round: both servers loaded at once; per server, req/s, p99 (ms) and its CPU µs per request."""
    records: dict[bool, list[DriverRecord]] = {agent: [] for agent in servers}
    cpu_before = {agent: server_cpu(s) for agent, s in servers.items()}
    t0 = time.time() + 0.5
    with contextlib.ExitStack() as stack:
        fleets = [stack.enter_context(DriverFleet(shard_plans(scenario, HOST, s.port, t0, 1), records[agent].append,
                                                  dirs[agent])) for agent, s in servers.items()]
        while not all(f.finished() for f in fleets):
            time.sleep(0.02)
        assert not any(f.failed() for f in fleets), f"a driver failed; see {dirs}"
    out = {}
    for agent, server in servers.items():
        seconds = [r for r in records[agent] if isinstance(r, DriverSecond)]
        completed = sum(sum(r.outcomes.values()) for r in seconds)
        p99 = Histogram.merged(r.hist for r in seconds).percentile(0.99) / 1000
        cpu = server_cpu(server) - cpu_before[agent]
        out[agent] = (completed / sum(r.span for r in seconds), p99, cpu / completed * 1e6)
    return out


def server_cpu(server: LocalServer) -> float:
    """CPU seconds the server's processes (all threads) have used so far."""
    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid, _ in server.processes())


def pin(servers: dict[bool, LocalServer], core: int) -> None:
    """Every thread of both servers onto one core (threads started later inherit it)."""
    for server in servers.values():
        for pid, _ in server.processes():
            for thread in psutil.Process(pid).threads():
                os.sched_setaffinity(thread.id, {core})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--boots", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=4, help="counted rounds per boot")
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--aa", action="store_true", help="B without the agent too (an A/A check)")
    ap.add_argument("--hotspot-hz", type=float, help="the agent's [agent] hotspot_hz (default: the scenario's)")
    ap.add_argument("--agent", action="append", default=[], metavar="FIELD=VALUE",
                    help="any [agent] field for B, e.g. --agent stall_threshold=100ms (repeatable)")
    args = ap.parse_args()
    overrides = {"load.users": args.users, "load.duration": f"{args.seconds}s"}
    if args.hotspot_hz is not None:
        overrides["agent.hotspot_hz"] = args.hotspot_hz
    for item in args.agent:
        field, _, value = item.partition("=")
        overrides[f"agent.{field}"] = value
    scenario = load_scenario(ROOT / "scenarios" / "fast.toml", overrides=overrides)
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) > 1:
        os.sched_setaffinity(0, set(cores[1:]))  # this process and the drivers it starts
    print(f"/fast, 1 uvicorn worker each, {args.users} users each, {args.seconds} s rounds, both servers at once"
          + (f" on core {cores[0]}, drivers on the other cores" if len(cores) > 1 else " (one core: not pinned)")
          + ("; A/A: neither has the agent" if args.aa else "") + "; round 0 of each boot warms up")
    ratios: list[tuple[float, float, float]] = []
    for boot in range(args.boots):
        with tempfile.TemporaryDirectory() as tmp:
            dirs = {agent: Path(tmp) / ("agent" if agent else "no-agent") for agent in (False, True)}
            for d in dirs.values():
                d.mkdir()
            with (
                LocalServer(dataclasses.replace(scenario.app, agent=False), dirs[False]) as bare,
                LocalServer(dataclasses.replace(scenario.app, agent=not args.aa), dirs[True],
                            scenario.agent) as with_agent,
            ):
                servers = {False: bare, True: with_agent}
                if len(cores) > 1:
                    pin(servers, cores[0])
                for i in range(args.rounds + 1):
                    got = drive_both(scenario, servers, dirs)
                    a, b = got[False], got[True]
                    r = (b[0] / a[0], b[1] / a[1], b[2] / a[2])
                    print(
                        f"boot {boot + 1} round {i}: no agent {a[0]:7,.0f} req/s p99 {a[1]:6.2f} ms {a[2]:5.1f} µs "
                        "CPU/req"
                        f" | agent {b[0]:7,.0f} req/s p99 {b[1]:6.2f} ms {b[2]:5.1f} µs CPU/req"
                        f" | ratios {r[0]:.3f} {r[1]:.3f} {r[2]:.3f}",
                        flush=True,
                    )
                    if i:
                        ratios.append(r)
    print(f"throughput ratio agent/no-agent:      median {statistics.median(r[0] for r in ratios):.3f} "
          f"over {len(ratios)} rounds (floor ≥ 0.95)")
    print(f"p99 ratio agent/no-agent:             median {statistics.median(r[1] for r in ratios):.3f} (target ≤ 1.05)")
    print(f"CPU per request ratio agent/no-agent: median {statistics.median(r[2] for r in ratios):.3f} "
          f"(all the server's threads)")


if __name__ == "__main__":
    main()
