from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
APPS = Path(__file__).resolve().parent / "apps"


def harness_cmd(*args: str) -> list[str]:
    """The CLI as a user runs it, with this checkout's interpreter."""
    return [sys.executable, "-m", "harness", *args]


@contextlib.contextmanager
def cli_in_background(env: dict[str, str], *args: str) -> Iterator[subprocess.Popen]:
    """The CLI running in the background; killed on the way out if the test did not end it."""
    proc = subprocess.Popen(harness_cmd(*args), env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_until(proc: subprocess.Popen, ready: Callable[[], bool], timeout_s: float = 60) -> None:
    """Poll ``ready()`` while ``proc`` runs; fail with its output if it exits or time runs out first."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)


LEFTOVER_MARKS = ("harness.load.worker", "uvicorn", "gunicorn", "sample_app", "tests/apps", "postgres")


def _suspects() -> dict[int, psutil.Process]:
    """Our descendants, plus any process that looks like a server or driver (orphans escape the tree)."""
    me = psutil.Process()
    found = {p.pid: p for p in me.children(recursive=True)}
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or ())
        if p.pid != me.pid and any(mark in cmd for mark in LEFTOVER_MARKS):
            found[p.pid] = p
    return found


SESSION_PIDS: set[int] = set()  # long-lived helpers owned by session fixtures (the PostgreSQL cluster)


def _session_owned(p: psutil.Process) -> bool:
    try:
        return any(a.pid in SESSION_PIDS for a in [p, *p.parents()])
    except psutil.Error:
        return False


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Every process a test (or the harness it runs) starts must be gone when it ends."""
    before = set(_suspects())
    yield
    deadline = time.monotonic() + 10
    while True:
        left = [p for pid, p in _suspects().items() if pid not in before and _alive(p) and not _session_owned(p)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for p in left:
        p.kill()
    assert not left, f"processes left behind: {[(p.pid, _cmd(p)) for p in left]}"


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmd(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())[:120]
    except psutil.Error:
        return "?"


@pytest.fixture
def env() -> dict[str, str]:
    """Environment for CLI subprocesses: this checkout importable, no colour codes."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}


@pytest.fixture
def data_copy(tmp_path):
    """A writable copy of a committed recording under tests/data/."""

    def copy(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(DATA / name, dst)
        return dst

    return copy


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster on a free loopback port; its URL."""
    from tests.postgres import Cluster

    cluster = Cluster().start()
    SESSION_PIDS.add(cluster.postmaster_pid)
    try:
        yield cluster.url
    finally:
        cluster.stop()
        SESSION_PIDS.discard(cluster.postmaster_pid)
