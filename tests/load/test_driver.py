"""The driver process against a loopback server that misbehaves on purpose: every outcome
class is counted where it belongs, per request, and in the JTL."""

from __future__ import annotations

import asyncio
import csv
import socket
import struct
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest

from harness.config import build_scenario
from harness.load.jtl import _part_lines, join_parts
from harness.load.manager import DriverFleet, shard_plans
from harness.records import DriverDone, DriverRecord, DriverSecond

pytestmark = pytest.mark.e2e  # starts real processes (drivers, children)

BEHAVIOURS = ["ok", "missing", "boom", "hang", "reset", "garbage", "close"]
EXPECTED = {"ok": 4, "4xx": 2, "5xx": 2, "timeout": 2, "connection-reset": 2, "other": 2}  # 14 requests, 2 of each


class Misbehaving(asyncio.Protocol):
    """Answers by path: /ok 200, /missing 404, /boom 500, /hang never, /reset RST, /garbage
    bytes that are not HTTP, /close 200 with ``Connection: close`` and a close."""

    def connection_made(self, transport: Any) -> None:
        self.t, self.buf = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            path = head.split(b" ")[1].decode()
            if path == "/reset":
                self.t.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.t.abort()
            elif path == "/garbage":
                self.t.write(b"SPDY/9 what\r\n\r\n")
            elif path != "/hang":
                status = {"/ok": "200 OK", "/missing": "404 Not Found", "/boom": "500 Internal Server Error"}.get(
                    path, "200 OK"
                )
                close = path == "/close"
                extra = "Connection: close\r\n" if close else ""
                self.t.write(f"HTTP/1.1 {status}\r\nContent-Length: 2\r\n{extra}\r\nhi".encode())
                if close:
                    self.t.close()


@pytest.fixture
def server_port() -> Iterator[int]:
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(Misbehaving, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        server.close()
        loop.close()


CLOSED = {"users": 2, "loops": 7, "timeout": "500ms"}
OPEN = {"model": "open", "rate": 20, "duration": "700ms", "timeout": "500ms"}  # 14 arrivals


@pytest.fixture(params=["c", "python"])
def hot_path(request, monkeypatch) -> str:
    """Each load runs through the C hot path and through its pure-Python twin."""
    if request.param == "python":
        monkeypatch.setenv("FASTAPI_HARNESS_PURE_PYTHON", "1")
    return request.param


def drive(port: int, tmp_path: Path, jtl: bool = False, load: dict[str, Any] = CLOSED) -> list[dict[str, Any]]:
    scenario = build_scenario({"load": load, "requests": [{"path": f"/{b}"} for b in BEHAVIOURS]})
    plans = shard_plans(scenario, "127.0.0.1", port, time.time() + 0.2, 1, jtl_dir=tmp_path if jtl else None)
    records: list[DriverRecord] = []
    with DriverFleet(plans, records.append, tmp_path) as fleet:
        deadline = time.monotonic() + 30
        while not fleet.finished():
            assert time.monotonic() < deadline, records
            time.sleep(0.05)
    return records


@pytest.mark.parametrize("load", [CLOSED, OPEN], ids=["closed", "open"])
def test_every_outcome_class_is_counted_where_it_belongs(server_port, tmp_path, load, hot_path):
    records = drive(server_port, tmp_path, load=load)
    done = [r for r in records if isinstance(r, DriverDone)]
    seconds = [r for r in records if isinstance(r, DriverSecond)]
    assert done[0].hot_path == hot_path, "the C hot path is not built: pip install -e . with a C compiler at hand"
    assert len(done) == 1 and done[0].outcomes == EXPECTED and done[0].sent == 14
    per_second: Counter[str] = Counter()
    for r in seconds:
        per_second.update(r.outcomes)
    assert per_second == EXPECTED
    assert sum(r.hist.count for r in seconds) == 8  # a latency for every HTTP response
    assert not (tmp_path / "driver-0.stderr.log").read_text()  # the unparsable response is counted, not logged


def test_a_refused_connection_is_its_own_outcome(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once the socket is closed
    done = [r for r in drive(port, tmp_path) if isinstance(r, DriverDone)]
    assert done[0].outcomes == {"connect-refused": 14}


def test_jtl_lines_carry_each_outcome(server_port, tmp_path, hot_path):
    done = [r for r in drive(server_port, tmp_path, jtl=True) if isinstance(r, DriverDone)]
    assert done[0].hot_path == hot_path
    parts = sorted(str(p) for p in tmp_path.glob("driver-*.jtl.part"))
    assert join_parts(parts, str(tmp_path / "results.jtl")) == 14
    with open(tmp_path / "results.jtl", newline="") as f:
        rows = list(csv.DictReader(f))
    codes = Counter((r["label"], r["responseCode"], r["success"]) for r in rows)
    assert codes == {
        ("GET /ok", "200", "true"): 2, ("GET /close", "200", "true"): 2,
        ("GET /missing", "404", "false"): 2, ("GET /boom", "500", "false"): 2,
        ("GET /hang", "Non HTTP response code: java.net.SocketTimeoutException", "false"): 2,
        ("GET /reset", "Non HTTP response code: java.net.SocketException", "false"): 2,
        ("GET /garbage", "Non HTTP response code: org.apache.http.ProtocolException", "false"): 2,
    }
    assert all(500 <= int(r["elapsed"]) < 1500 for r in rows if r["label"] == "GET /hang")
    # a part torn by a killed driver keeps the rows before the tear
    torn = tmp_path / "torn.part"
    torn.write_bytes(Path(parts[0]).read_bytes()[:-3])
    flushes = [len(lines) for lines in _part_lines(parts[0])]
    assert join_parts([str(torn)], str(tmp_path / "torn.jtl")) == sum(flushes[:-1]) < 14
