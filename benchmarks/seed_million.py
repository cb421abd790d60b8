"""The seed article's million: `fastapi-harness run scenarios/seed_million.toml`, measured.

    python benchmarks/seed_million.py [--scenario scenarios/seed_million.toml] [--out DIR]

Prints whether every request was accounted for, the run's throughput and latency, the
peak RSS of all harness processes together (the CLI plus its driver processes, not the
target), and how long rendering the report takes. 10,000 users against 127.0.0.1 only;
the run ends after users × loops requests.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def harness_rss_mb(cli: psutil.Process) -> float:
    """RSS of the CLI and its driver processes (the server tree is the target, not the harness)."""
    procs = [cli] + [c for c in cli.children(recursive=True) if "harness.load.driver" in " ".join(c.cmdline())]
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default=str(ROOT / "scenarios" / "seed_million.toml"))
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="seed-million-")) / "run"
    start = time.monotonic()
    cli = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", args.scenario, "--out", str(out), "--quiet"], cwd=ROOT
    )
    peak = 0.0
    try:
        proc = psutil.Process(cli.pid)
        while cli.poll() is None:
            try:
                peak = max(peak, harness_rss_mb(proc))
            except psutil.Error:
                pass
            time.sleep(0.5)
    except KeyboardInterrupt:
        cli.send_signal(2)
        cli.wait()
        raise
    wall = time.monotonic() - start
    summary = json.loads((out / "summary.json").read_text())

    from harness.cli import write_reports

    t = time.monotonic()
    write_reports(out)
    render_s = time.monotonic() - t

    planned = 10_000 * 100 if "seed_million" in args.scenario else None
    print(f"exit code {cli.returncode}, wall {wall:.0f} s, run dir {out}")
    print(
        f"requests {summary['requests']:,} (sent {summary['load']['sent']:,}, aborted {summary['load']['aborted']})"
        + (
            f", planned {planned:,}: {'all accounted for' if summary['requests'] == planned else 'MISMATCH'}"
            if planned
            else ""
        )
    )
    print(f"errors {summary['errors']['total']:,} {summary['errors']['by_kind']}")
    print(
        f"throughput {summary['throughput_rps']:,.0f} req/s over {summary['duration_s']:.1f} s; "
        f"latency p50 {summary['latency_ms']['p50']:.1f} ms, p99 {summary['latency_ms']['p99']:.1f} ms, max "
        f"{summary['latency_ms']['max']:.0f} ms"
    )
    print(
        f"worker CPU p90 {summary['resources']['worker_cpu_p90']:.2f} cores, driver CPU p90 "
        f"{summary['resources']['driver_cpu_p90']:.2f}, "
        f"server FDs max {summary['resources']['fds_max']}"
    )
    print(f"harness peak RSS (CLI + drivers) {peak:.0f} MB (target < 300 MB)")
    print(f"report rendering {render_s:.1f} s (target < 10 s)")


if __name__ == "__main__":
    main()
