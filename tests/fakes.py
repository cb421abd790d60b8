"""A fake target: a tiny HTTP/1.1 server on loopback in a thread, behind the ``Target`` interface.

It lets the session, the knee search and compare run with real drivers and a real recording
without booting uvicorn. ``capacity`` (requests per second, 0 = unbounded) makes it queue like a
server with one worker, so a knee search finds a knee.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from harness.target import HOST, Target


class _Answer(asyncio.Protocol):
    def __init__(self, target: FakeTarget):
        self.target = target

    def connection_made(self, transport: Any) -> None:
        self.transport, self.buf = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            _, self.buf = self.buf.split(b"\r\n\r\n", 1)
            self.target.served += 1
            delay = self.target.next_slot()
            reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            if delay > 0:
                asyncio.get_running_loop().call_later(delay, self._reply, reply)
            else:
                self._reply(reply)

    def _reply(self, reply: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(reply)


class FakeTarget(Target):
    """Answers every request 200 ``ok``; serves at most ``capacity`` requests a second, queueing the rest."""

    def __init__(self, capacity: float = 0.0):
        self.capacity = capacity
        self.port = 0
        self.served = 0
        self.free_at = 0.0
        self.started = self.stopped = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        return HOST, self.port

    def next_slot(self) -> float:
        """Seconds until this request is answered, one at a time at ``capacity`` per second."""
        if not self.capacity:
            return 0.0
        now = time.monotonic()
        self.free_at = max(self.free_at, now) + 1.0 / self.capacity
        return self.free_at - now

    def start(self) -> None:
        self._loop = asyncio.new_event_loop()
        server = self._loop.run_until_complete(self._loop.create_server(lambda: _Answer(self), HOST, 0))
        self.port = server.sockets[0].getsockname()[1]
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-target", daemon=True)
        self._thread.start()
        self.started = True

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and not self.stopped:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self.stopped = True

    def describe(self) -> dict[str, Any]:
        return {"kind": "fake", "url": self.url}
