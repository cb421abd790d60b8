"""CPU samples of the workers from outside, with py-spy, during a profile window.

A signal-based sampler inside the process sees the frame where Python runs the handler, which
leans towards safe points; py-spy reads the stacks from outside (ptrace: root has it; in a
container, ``--cap-add SYS_PTRACE``), so the hotspot and its call site come from these samples
when they exist. Idle threads are left out (``--idle`` is not given): what remains is CPU.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from harness.processes import spawn, stderr_tail, stop_group
from harness.records import CpuProfile

RATE_HZ = 100
TOP_STACKS = 300  # distinct stacks kept per worker (the rest are counted in ``samples`` only)
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*):(?P<line>\d+)\)$")
INSTALL_HINT = "py-spy is not installed: `pip install py-spy` (it needs ptrace: root, or --cap-add SYS_PTRACE)"


def py_spy() -> str | None:
    """The py-spy executable: next to this interpreter (a virtualenv's bin), else on the PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


class PySpyWindow:
    """py-spy recording every worker for ``seconds``; ``finish`` waits for them and returns the profiles."""

    def __init__(self, pids: list[int], t_start: float, seconds: float, out_dir: Path, window: int):
        self.t_start, self.seconds = t_start, seconds
        self.runs: list[tuple[int, Path, subprocess.Popen | None, str]] = []
        exe = py_spy()
        for pid in pids:
            raw = out_dir / f"pyspy-{pid}-{window}.txt"
            if exe is None:
                self.runs.append((pid, raw, None, INSTALL_HINT))
                continue
            log = out_dir / f"pyspy-{pid}-{window}.log"
            with open(log, "wb") as err:
                proc = spawn([exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
                              "--rate", str(RATE_HZ), "--nonblocking", "--full-filenames", "--format", "raw",
                              "--output", str(raw)], stdout=err, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            self.runs.append((pid, raw, proc, ""))

    @property
    def pids(self) -> list[int]:
        """The py-spy processes still running (the sampler counts them as the run's own)."""
        return [proc.pid for _, _, proc, _ in self.runs if proc is not None and proc.poll() is None]

    def stop(self) -> None:
        """End every py-spy still running (on any exit path)."""
        for _, _, proc, _ in self.runs:
            if proc is not None:
                stop_group(proc, grace_s=1.0)

    def finish(self, grace_s: float = 10.0) -> list[CpuProfile]:
        """Wait for every py-spy (bounded), end any still running, and read what each wrote."""
        out = []
        for pid, raw, proc, error in self.runs:
            if proc is not None:
                try:
                    proc.wait(timeout=self.seconds + grace_s)
                except subprocess.TimeoutExpired:
                    error = "py-spy did not finish in time"
                stop_group(proc, grace_s=1.0)
                if not error and (proc.returncode or not raw.is_file()):
                    log = raw.with_suffix(".log")
                    error = f"py-spy failed (exit {proc.returncode}): {stderr_tail(log, 2).strip()}"
            stacks, samples = parse_raw(raw) if raw.is_file() else ((), 0)
            out.append(CpuProfile(pid, round(self.t_start, 3), self.seconds, RATE_HZ, "py-spy", samples, stacks,
                                  error))
        return out


def parse_raw(path: Path) -> tuple[tuple[tuple[tuple[tuple[str, int, str], ...], int], ...], int]:
    """py-spy's raw (collapsed) output: (stacks innermost frame first with their counts, total samples)."""
    counts: Counter[tuple[tuple[str, int, str], ...]] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        body, _, n = line.rpartition(" ")
        if not body or not n.isdigit():
            continue
        frames = []
        for part in body.split(";"):
            m = _FRAME.match(part)
            if m:
                frames.append((m["file"], int(m["line"]), m["func"].rpartition(".")[2]))
        counts[tuple(reversed(frames))] += int(n)
    return tuple(counts.most_common(TOP_STACKS)), sum(counts.values())
