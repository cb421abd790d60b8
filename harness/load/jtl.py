"""JMeter's CSV result format (JTL), written by a driver process, one line per request.

The hot path only appends a tuple; lines are formatted once a second, off the per-request
path, with the csv module. The manager concatenates the drivers' parts under one header.
"""

from __future__ import annotations

import time
from http import HTTPStatus
from typing import IO, Any

HEADER = ("timeStamp,elapsed,label,responseCode,responseMessage,threadName,dataType,success,failureMessage,"
          "bytes,sentBytes,grpThreads,allThreads,URL,Latency,IdleTime,Connect")
NON_HTTP = {  # how JMeter reports failures that have no HTTP status
    "timeout": ("Non HTTP response code: java.net.SocketTimeoutException", "Read timed out"),
    "connect-refused": ("Non HTTP response code: java.net.ConnectException", "Connection refused"),
    "connection-reset": ("Non HTTP response code: java.net.SocketException", "Connection reset"),
    "other": ("Non HTTP response code: org.apache.http.ProtocolException", "Invalid response"),
}


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class JtlPart:
    """Buffers (start, elapsed µs, request, status or failure kind, thread) and writes JTL lines."""

    def __init__(self, path: str, labels: list[str], urls: list[str], sent_bytes: list[int], driver: int):
        self.file: IO[str] = open(path, "w", newline="")
        self.rows: list[tuple[float, int, int, Any, int]] = []
        self.labels, self.urls, self.sent_bytes, self.driver = labels, urls, sent_bytes, driver
        self.epoch_ms = (time.time() - time.perf_counter()) * 1000  # perf_counter seconds → epoch ms
        self.parts: dict[tuple[int, Any], tuple[str, str]] = {}

    def _parts(self, ri: int, status: Any) -> tuple[str, str]:
        """The fixed text around a line's variable fields, per (request, outcome), CSV-quoted once."""
        if isinstance(status, int):
            code, message = str(status), _reason(status)
            ok, failure = status < 400, "" if status < 400 else f"HTTP {status}"
        else:
            code, message = NON_HTTP.get(status, NON_HTTP["other"])
            ok, failure = False, message
        q = _quote
        head = f"{q(self.labels[ri])},{q(code)},{q(message)},driver {self.driver}-"
        tail = f",text,{'true' if ok else 'false'},{q(failure)},0,{self.sent_bytes[ri]},"
        return self.parts.setdefault((ri, status), (head, tail + "{a},{a}," + q(self.urls[ri]) + ","))

    def flush(self, active: int) -> None:
        if self.file.closed:
            return
        rows, self.rows = self.rows, []
        epoch = self.epoch_ms
        texts: dict[tuple[int, Any], tuple[str, str]] = {}  # this flush's (head, tail) with the thread counts filled in
        out = []
        for start, us, ri, status, thread in rows:
            key = (ri, status)
            text = texts.get(key)
            if text is None:
                head, tail = self.parts.get(key) or self._parts(ri, status)
                text = texts[key] = (head, tail.format(a=active))
            ms = us // 1000
            out.append(f"{int(epoch + start * 1000)},{ms},{text[0]}{thread}{text[1]}{ms},0,0\n")
        self.file.write("".join(out))
        self.file.flush()

    def close(self, active: int) -> None:
        self.flush(active)
        self.file.close()


def _quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n\r') else text


def join_parts(parts: list[str], dest: str) -> int:
    """Write the header and every part's lines to ``dest``; return the number of lines."""
    n = 0
    with open(dest, "w", newline="") as out:
        out.write(HEADER + "\n")
        for part in parts:
            with open(part, newline="") as f:
                for line in f:
                    out.write(line)
                    n += 1
    return n
