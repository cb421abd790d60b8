"""What the in-process agent costs: /fast on one worker, with and without the agent, alternating.

    python benchmarks/agent_overhead.py [--pairs 5] [--seconds 5] [--users 50]

Runs A (no agent) and B (agent on, no profiling) in turns — A B A B ... — in one invocation,
each a fresh server booted by the harness, and prints every run, the medians and the ratios
B/A for throughput and p99. Load goes to 127.0.0.1 only, bounded by --seconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.analysis.summary import summarize  # noqa: E402
from harness.config import load_scenario  # noqa: E402
from harness.recording import Recording  # noqa: E402
from harness.runner import run_scenario  # noqa: E402


def one_run(agent: bool, seconds: int, users: int, out: Path) -> tuple[float, float]:
    scenario = load_scenario(ROOT / "scenarios" / "fast.toml", overrides={
        "app.agent": agent, "load.duration": f"{seconds}s", "load.users": users,
    })
    run_scenario(scenario, out)
    s = summarize(Recording.load(out))
    return s["throughput_rps"], s["latency_ms"]["p99"]


def asgi_cost_us(n: int = 4_000) -> tuple[float, float]:
    """Median µs per in-process ASGI request to /fast: bare app vs wrapped by the running agent.

    No sockets and no second process, so this figure is far steadier than the end-to-end one.
    """
    import asyncio
    import time

    sys.path.insert(0, str(ROOT / "harness"))
    from agent.core import Agent
    from agent.middleware import AgentMiddleware
    from sample_app.main import app

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "path": "/fast",
             "raw_path": b"/fast", "query_string": b"", "headers": [], "scheme": "http", "server": ("127.0.0.1", 80),
             "client": ("127.0.0.1", 1), "root_path": ""}

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        pass

    async def per_request_us(target) -> float:
        t = time.perf_counter()
        for i in range(n):
            await target(dict(scope), receive, send)
            if i % 50 == 0:
                await asyncio.sleep(0)  # let the loop run its callbacks (the heartbeat), as a server's does
        return (time.perf_counter() - t) / n * 1e6

    async def both() -> tuple[float, float]:
        await per_request_us(app)  # warm-up
        bare, agent_on = [], []
        for _ in range(5):  # alternate, a fresh agent each round, so drift hits both alike
            bare.append(await per_request_us(app))
            agent = Agent({"run_dir": tempfile.mkdtemp(), "stall_ms": 25, "hot_hz": 50})
            wrapped = AgentMiddleware(app, agent)
            agent_on.append(await per_request_us(wrapped))
            agent.stop()
        return statistics.median(bare), statistics.median(agent_on)

    return asyncio.run(both())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--users", type=int, default=50)
    args = ap.parse_args()
    runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            for agent in (False, True):
                rps, p99 = one_run(agent, args.seconds, args.users, Path(tmp) / f"{i}-{agent}")
                runs[agent].append((rps, p99))
                print(f"pair {i + 1} {'agent   ' if agent else 'no agent'}: {rps:8,.0f} req/s  p99 {p99:6.2f} ms", flush=True)
    med = {a: (statistics.median(r for r, _ in v), statistics.median(p for _, p in v)) for a, v in runs.items()}
    print(f"median no agent: {med[False][0]:,.0f} req/s, p99 {med[False][1]:.2f} ms")
    print(f"median agent:    {med[True][0]:,.0f} req/s, p99 {med[True][1]:.2f} ms")
    print(f"throughput ratio agent/no-agent: {med[True][0] / med[False][0]:.3f} (target ≥ 0.97)")
    print(f"p99 ratio agent/no-agent:        {med[True][1] / med[False][1]:.3f} (target ≤ 1.05)")
    bare_us, agent_us = asgi_cost_us()
    print(f"in-process ASGI cost per /fast request: bare {bare_us:.1f} µs, with the agent {agent_us:.1f} µs "
          f"(+{agent_us - bare_us:.1f} µs, ratio {bare_us / agent_us:.3f} as throughput)")


if __name__ == "__main__":
    main()
