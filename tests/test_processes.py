"""No process outlives the harness, even when the harness itself is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from harness.processes import spawn, stop_group
from tests.conftest import ROOT, cli_in_background, wait_until

pytestmark = pytest.mark.e2e  # starts real processes (drivers, children)


def _lines(path) -> int:
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def test_a_harness_killed_with_sigkill_leaves_nothing_running(tmp_path, env):
    out = tmp_path / "run"
    smoke = str(ROOT / "scenarios" / "smoke.toml")
    with cli_in_background(env, "run", smoke, "--duration", "60s", "--out", str(out), "--quiet") as proc:
        wait_until(proc, lambda: _lines(out / "driver.jsonl") >= 2)  # server, workers and drivers all up
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        assert len(children) >= 4  # uvicorn's master, two workers, a driver
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 20  # the master's graceful stop of its workers, bounded
        while _alive(children) and time.monotonic() < deadline:
            time.sleep(0.2)
    assert not _alive(children), [psutil.Process(p).cmdline() for p in _alive(children)]


def test_stop_group_ends_a_child_that_ignores_sigterm():
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    proc = spawn([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "up\n"
    started = time.monotonic()
    stop_group(proc, grace_s=0.5)
    assert proc.returncode == -signal.SIGKILL and time.monotonic() - started < 5
    stop_group(proc)  # a second stop of a reaped process is harmless
    proc.stdout.close()


def test_a_spawned_child_gets_its_death_signal_when_its_parent_dies():
    # a parent that spawns a sleeper and exits at once: the sleeper must not survive it
    code = ("import subprocess, sys, signal; from harness.processes import spawn; "
            "p = spawn([sys.executable, '-c', 'import time; time.sleep(60)'], death_signal=signal.SIGKILL); "
            "print(p.pid, flush=True)")
    parent = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    pid = int(parent.stdout.strip())
    deadline = time.monotonic() + 10
    while _alive([pid]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive([pid])
