"""Verdict stability: every sample case diagnosed N times; prints how often each got its known verdict.

    python benchmarks/verdict_stability.py                  # every case, 3 runs each (≈ 45 min on 2 cores)
    python benchmarks/verdict_stability.py --runs 1 lock upstream

Each run is `fastapi-harness diagnose scenarios/<case>.toml --max-time 50s` on loopback, one after
another (never two at once: they would share the cores and contend). A case agrees when the
verdict's kind is the known one; the table also shows the call site each run named.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KNOWN = {
    "blocking": "event-loop-blocked",
    "cpu_json": "cpu-saturated",
    "log": "cpu-saturated",
    "db": "db-pool-exhausted",
    "sync_sleep": "threadpool-exhausted",
    "leak_fd": "fd-exhausted",
    "leak_memory": "memory-growth",
    "fast": "cpu-saturated",
    "upstream": "http-client-pool-exhausted",
    "lock": "lock-contention",
    "executor": "threadpool-exhausted",
    "db_slow": "db-slow-queries",
    "db_n_plus_one": "cpu-saturated",
    "db_stream": "db-pool-exhausted",
    "sync_db": "threadpool-exhausted",
    "gc": "gc-pauses",
    "middleware": "cpu-saturated",
}


def diagnose(case: str, out: Path) -> dict:
    """One diagnose run of ``case``; its verdict (bottleneck "error" with the tail when it failed)."""
    cmd = [sys.executable, "-m", "harness", "diagnose", str(ROOT / "scenarios" / f"{case}.toml"), "--max-time", "50s",
           "--out", str(out), "--quiet"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    try:
        return json.loads((out / "summary.json").read_text())["verdict"]
    except (OSError, ValueError, KeyError):
        return {"bottleneck": "error", "summary": p.stderr.strip()[-200:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", help=f"cases to run (default: all of {', '.join(KNOWN)})")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    cases = args.cases or list(KNOWN)
    unknown = [c for c in cases if c not in KNOWN]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {', '.join(KNOWN)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="verdict-stability-") as tmp:
        for case in cases:
            got = []
            for n in range(args.runs):
                v = diagnose(case, Path(tmp) / f"{case}-{n}")
                site = v.get("call_site") or {}
                got.append((v["bottleneck"], f"{Path(site['file']).name}:{site['line']}" if site else "—"))
                print(f"{case} run {n + 1}: {got[-1][0]} {got[-1][1]}", file=sys.stderr, flush=True)
            agree = sum(1 for kind, _ in got if kind == KNOWN[case])
            sites = Counter(s for _, s in got)
            rows.append((case, KNOWN[case], f"{agree}/{len(got)}", ", ".join(k for k, _ in got),
                         ", ".join(f"{s} ×{n}" for s, n in sites.items())))
    print("| case | known verdict | agreement | verdicts | call sites |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0 if all(r[2].split("/")[0] == r[2].split("/")[1] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
