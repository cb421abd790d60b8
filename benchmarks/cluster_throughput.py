"""The same load sent by local drivers and by Ray shards (``--cluster``), on this machine.

    python benchmarks/cluster_throughput.py [--rounds 3] [--seconds 5] [--users 20]

Starts a local Ray cluster of two nodes (``ray.cluster_utils.Cluster``, a CPU each), then runs
``fastapi-harness run`` on sample_app's /health, alternately with two local drivers and with
``--cluster`` (one driver per node: the same two shards of the same users), --rounds times each,
and prints every round's req/s and p99, their medians, and the ratio Ray/local. Each run boots
the app afresh; the app, the drivers and Ray share this machine's cores, so the figures are
CPU-bound by the machine and the ratio is the measurement. Load goes to 127.0.0.1 only,
bounded by 2 × --rounds × --seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_run(users: int, seconds: int, cluster: str | None) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        flags = ["--cluster", cluster, "--drivers", "1"] if cluster else ["--drivers", "2"]
        subprocess.run([sys.executable, "-m", "harness", "run", "--app", "sample_app.main:app", "--app-dir", str(ROOT),
                        "--get", "/health", "--users", str(users), "--duration", f"{seconds}s", "--out", tmp,
                        "--quiet", *flags], cwd=ROOT, check=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        summary = json.loads((Path(tmp) / "summary.json").read_text())
    return summary["throughput_rps"], summary["latency_ms"]["p99"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--users", type=int, default=20)
    args = ap.parse_args()
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        got: dict[str, list[tuple[float, float]]] = {"local": [], "ray": []}
        for i in range(args.rounds):
            for kind in ("local", "ray"):
                rps, p99 = one_run(args.users, args.seconds, cluster.address if kind == "ray" else None)
                got[kind].append((rps, p99))
                print(f"round {i + 1} {kind:5}: {rps:8,.0f} req/s  p99 {p99:7.2f} ms", flush=True)
    finally:
        cluster.shutdown()
    med = {k: (statistics.median(r for r, _ in v), statistics.median(p for _, p in v)) for k, v in got.items()}
    for k, (rps, p99) in med.items():
        print(f"median {k:5}: {rps:8,.0f} req/s  p99 {p99:7.2f} ms")
    (rps_ray, p99_ray), (rps_local, p99_local) = med["ray"], med["local"]
    print(f"ratio ray/local: throughput {rps_ray / rps_local:.3f}, p99 {p99_ray / p99_local:.3f}")


if __name__ == "__main__":
    main()
