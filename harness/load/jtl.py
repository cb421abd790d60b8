"""JMeter's CSV result format (JTL): one line per request, recorded by the driver processes.

A driver's hot path only appends a tuple per request. Every 100 ms the driver dumps the
rows since to its part file with ``marshal`` (formatting the text in the driver costs more:
benchmarks/driver_throughput.md), and when the run ends the manager formats every part's
rows as JTL lines under one header. A part is a sequence of
length-prefixed marshal records: a header dict, then ``(active threads, rows)`` per flush; a
torn last record (a killed driver) ends the part, the rows before it are kept.
"""

from __future__ import annotations

import marshal
import time
from http import HTTPStatus
from typing import IO, Any, Iterator

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
    """Driver side: buffers (start, elapsed µs, request, status or failure kind, thread) per request."""

    def __init__(self, path: str, labels: list[str], urls: list[str], sent_bytes: list[int], driver: int):
        self.file: IO[bytes] = open(path, "wb")
        self.rows: list[tuple[float, int, int, Any, int]] = []
        self._dump({"driver": driver, "labels": labels, "urls": urls, "sent_bytes": sent_bytes,
                    "epoch_ms": (time.time() - time.perf_counter()) * 1000})  # perf_counter s → epoch ms

    def flush(self, active: int) -> None:
        """Dump the buffered rows; ``active`` (the running threads) fills grpThreads and allThreads."""
        if self.file.closed or not self.rows:
            return
        self._dump((active, self.rows))
        self.rows.clear()
        self.file.flush()

    def _dump(self, record: Any) -> None:
        data = marshal.dumps(record)
        self.file.write(len(data).to_bytes(4, "little"))
        self.file.write(data)

    def close(self, active: int) -> None:
        self.flush(active)
        self.file.close()


def _part_lines(path: str) -> Iterator[list[str]]:
    """A part's JTL lines, one list per flush the driver made."""
    records = _records(path)
    head = next(records, None)
    for active, rows in records:
        epoch, texts = head["epoch_ms"], _Texts(head, active)
        yield [f"{int(epoch + start * 1000)},{(ms := us // 1000)},{(text := texts[ri, status])[0]}{thread}"
               f"{text[1]}{ms},0,0\n" for start, us, ri, status, thread in rows]


def _records(path: str) -> Iterator[Any]:
    with open(path, "rb") as f:
        while len(size := f.read(4)) == 4:
            n = int.from_bytes(size, "little")
            data = f.read(n)
            if len(data) < n:
                return  # torn by a killed driver
            yield marshal.loads(data)


def join_parts(parts: list[str], dest: str) -> int:
    """Write the header and every part's lines to ``dest``; return the number of lines."""
    n = 0
    with open(dest, "w", newline="") as out:
        out.write(HEADER + "\n")
        for part in parts:
            for lines in _part_lines(part):
                out.write("".join(lines))
                n += len(lines)
    return n


class _Texts(dict):
    """(request, status or failure kind) → the line's fixed text before and after the thread
    number, CSV-quoted, built on first use (a second of rows has only a few distinct keys)."""

    def __init__(self, head: dict[str, Any], active: int):
        super().__init__()
        self.head, self.active = head, active

    def __missing__(self, key: tuple[int, Any]) -> tuple[str, str]:
        ri, status = key
        head, q = self.head, _quote
        if isinstance(status, int):
            code, message = str(status), _reason(status)
            ok, failure = status < 400, "" if status < 400 else f"HTTP {status}"
        else:
            code, message = NON_HTTP.get(status, NON_HTTP["other"])
            ok, failure = False, message
        text = self[key] = (f"{q(head['labels'][ri])},{q(code)},{q(message)},driver {head['driver']}-",
                            f",text,{'true' if ok else 'false'},{q(failure)},0,{head['sent_bytes'][ri]},"
                            f"{self.active},{self.active},{q(head['urls'][ri])},")
        return text


def _quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n\r') else text
