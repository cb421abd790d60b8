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

from harness.analysis.verdict import INVALID_WHY

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
APPS = Path(__file__).resolve().parent / "apps"


def harness_cmd(*args: str) -> list[str]:
    """The CLI as a user runs it, with this checkout's interpreter."""
    return [sys.executable, "-m", "harness", *args]


HOST_TAKEN = INVALID_WHY["host-contended"]


def cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, to its end. A run the harness itself calls invalid because processes
    outside it took the CPU (exit 3) is measured once more, as a user would after reading that verdict:
    the CI host is shared; its first directory is kept beside the second as ``<out>.contended``."""
    def once() -> subprocess.CompletedProcess:
        return subprocess.run(harness_cmd(*args), env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)

    p = once()
    if p.returncode == 3 and HOST_TAKEN in p.stderr:
        if "--out" in args:
            out = Path(args[args.index("--out") + 1])
            out.rename(out.with_name(out.name + ".contended"))
        p = once()
    return p


@contextlib.contextmanager
def cli_in_background(env: dict[str, str], *args: str) -> Iterator[subprocess.Popen]:
    """The CLI running in the background; killed on the way out if the test did not end it."""
    proc = subprocess.Popen(
        harness_cmd(*args), env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
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


SESSION_MARK = f"fastapi-harness-tests-{os.getpid()}"  # in the environment of everything this test session starts


def _suspects() -> dict[int, psutil.Process]:
    """Our descendants, plus orphans that carry this session's mark (they escaped the tree); not the
    processes of the session's Ray cluster (its GCS, raylets and their pooled workers), which the
    ``ray_cluster`` fixture ends at the session's end."""
    me = psutil.Process()
    found = {p.pid: p for p in me.children(recursive=True) if not _of_ray(p)}
    for p in psutil.process_iter():
        if p.pid == me.pid or p.pid in found:
            continue
        try:
            if p.environ().get("FASTAPI_HARNESS_TEST_SESSION") == SESSION_MARK:
                found[p.pid] = p
        except psutil.Error:
            continue
    return found


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Every process a test (or the harness it runs) starts must be gone when it ends."""
    before = set(_suspects())
    yield
    deadline = time.monotonic() + 10
    while True:
        left = [p for pid, p in _suspects().items() if pid not in before and _alive(p)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for p in left:
        p.kill()
    assert not left, f"processes left behind: {[(p.pid, _cmd(p)) for p in left]}"


def _of_ray(p: psutil.Process) -> bool:
    cmd = _cmd(p)
    return cmd.startswith("ray::") or f"{os.sep}ray{os.sep}" in cmd


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
    return {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "FASTAPI_HARNESS_TEST_SESSION": SESSION_MARK}


@pytest.fixture
def data_copy(tmp_path):
    """A writable copy of a committed recording under tests/data/."""

    def copy(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(DATA / name, dst)
        return dst

    return copy


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster of two nodes (a head and one more, a CPU each), as ray.cluster_utils makes it
    for tests; (the cluster, its second node)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        node = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster, node
    finally:
        cluster.shutdown()


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster on a free loopback port; its URL."""
    from tests.postgres import Cluster

    cluster = Cluster().start()  # pg_ctl daemonizes it: not our descendant, so not a "leftover" either
    try:
        yield cluster.url
    finally:
        cluster.stop()
