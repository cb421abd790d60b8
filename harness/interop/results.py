"""Other load tools' result files → the recording's per-second driver records.

Read: JMeter JTL (CSV with its header, and XML), Locust's ``--csv`` stats history
(``*_stats_history.csv``), k6's ``--out json``. Every request (or, for Locust, every
second's aggregate) lands in the second of its completion, relative to the run's t0, with
the same outcome kinds and mergeable histograms the harness's own drivers write. Lines that
cannot be parsed are counted and reported, the rest kept.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from harness.errors import ConfigError
from harness.histogram import Histogram
from harness.interop import parse_xml
from harness.records import DriverDone, DriverRecord, DriverSecond

JTL_REQUIRED = ("timeStamp", "elapsed", "responseCode", "success")
LOCUST_QUANTILES = (("50%", 0.50), ("66%", 0.66), ("75%", 0.75), ("80%", 0.80), ("90%", 0.90), ("95%", 0.95),
                    ("98%", 0.98), ("99%", 0.99), ("99.9%", 0.999), ("99.99%", 0.9999), ("100%", 1.0))


@dataclass
class Results:
    """Per-second aggregates keyed by epoch second, plus what could not be read."""

    t0: float | None = None  # seconds are counted from here (the run's t0, or the first result)
    seconds: dict[int, dict[str, Any]] = field(default_factory=dict)
    problems: Counter = field(default_factory=Counter)
    fmt: str = ""
    first: float = float("inf")  # epoch of the earliest and latest completion
    last: float = 0.0

    def add(self, end_epoch: float, elapsed_ms: float | None, kind: str, n: int = 1) -> None:
        if self.t0 is None:
            self.t0 = float(int(end_epoch))
        self.first, self.last = min(self.first, end_epoch), max(self.last, end_epoch)
        key = math.floor(end_epoch - self.t0)
        sec = self.seconds.setdefault(key, {"sent": 0, "outcomes": Counter(), "hist": Histogram()})
        sec["sent"] += n
        sec["outcomes"][kind] += n
        if elapsed_ms is not None and kind in ("ok", "4xx", "5xx"):
            for _ in range(n):
                sec["hist"].record(int(elapsed_ms * 1000))

    def driver_records(self) -> list[DriverRecord]:
        """The records a driver would have written, seconds counted from ``t0``."""
        out: list[DriverRecord] = [
            DriverSecond(driver=0, t=sec, span=1.0, sent=s["sent"], outcomes=dict(s["outcomes"]), hist=s["hist"])
            for sec, s in sorted(self.seconds.items())]
        total: Counter[str] = Counter()
        for s in self.seconds.values():
            total.update(s["outcomes"])
        out.append(DriverDone(driver=0, sent=sum(total.values()), aborted=0, outcomes=dict(total)))
        return out


def kind_of(code: str, success: bool = True) -> str:
    """An outcome kind from an HTTP status, or from JMeter's / k6's words for failures without one."""
    if code.isdigit() and code != "0":
        status = int(code)
        if status >= 500:
            return "5xx"
        if status >= 400:
            return "4xx"
        return "ok" if success else "other"
    text = code.lower()
    if "timeout" in text:
        return "timeout"
    if "connect" in text and "refused" in text or "connectexception" in text:
        return "connect-refused"
    if "reset" in text or "socketexception" in text or "nohttpresponse" in text or code == "0":
        return "connection-reset"
    return "other"


def read_results(path: str | Path, t0: float | None = None) -> Results:
    """Parse a result file of a known format (recognised by its content), seconds counted from ``t0``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such result file; give the file the load tool wrote")
    with open(p, errors="replace") as f:
        head = f.read(4096)
    stripped = head.lstrip()
    first = head.splitlines()[0] if head else ""
    reader = (_jtl_xml if stripped.startswith("<") else _k6 if stripped.startswith("{") else
              _jtl_csv if "timeStamp" in first else _locust if "Timestamp" in first and "User Count" in first else None)
    if reader is not None:
        return reader(p, Results(t0=t0))
    raise ConfigError(f"{p}: not a result file fastapi-harness reads (JMeter JTL CSV/XML, Locust stats history CSV, "
                      "k6 JSON); check the format options of the tool that wrote it")


def _jtl_csv(p: Path, res: Results) -> Results:
    res.fmt = "jmeter-jtl-csv"
    with open(p, newline="", errors="replace") as f:
        reader = csv.DictReader(f)
        missing = [c for c in JTL_REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(
                f"{p}: the JTL lacks column(s) {', '.join(missing)}; save with JMeter's default CSV fields"
            )
        for row in reader:
            try:
                start, elapsed = int(row["timeStamp"]) / 1000, float(row["elapsed"])
            except (TypeError, ValueError):
                res.problems["unparsable line"] += 1
                continue
            ok = (row.get("success") or "").lower() == "true"
            res.add(start + elapsed / 1000, elapsed, kind_of(row.get("responseCode") or "", ok))
    return res


def _jtl_xml(p: Path, res: Results) -> Results:
    res.fmt = "jmeter-jtl-xml"
    for el in parse_xml(p, "result file"):
        if el.tag not in ("httpSample", "sample"):
            continue
        try:
            start, elapsed = int(el.get("ts", "")) / 1000, float(el.get("t", ""))
        except ValueError:
            res.problems["unparsable sample"] += 1
            continue
        res.add(start + elapsed / 1000, elapsed, kind_of(el.get("rc", ""), el.get("s", "true") == "true"))
    return res


def _k6(p: Path, res: Results) -> Results:
    res.fmt = "k6-json"
    for line in _lines(p):
        try:
            point = json.loads(line)
        except ValueError:
            res.problems["unparsable line"] += 1
            continue
        if point.get("type") != "Point" or point.get("metric") != "http_req_duration":
            continue
        data = point.get("data", {})
        try:
            end = datetime.fromisoformat(data["time"].replace("Z", "+00:00")).timestamp()
            value = float(data["value"])
        except (KeyError, ValueError, TypeError):
            res.problems["unparsable point"] += 1
            continue
        res.add(end, value, kind_of(str(data.get("tags", {}).get("status", "0"))))
    return res


def _locust(p: Path, res: Results) -> Results:
    """Locust writes one aggregate row per second: counts are cumulative, percentiles current."""
    res.fmt = "locust-stats-history"
    last_total, last_failed = 0, 0
    with open(p, newline="", errors="replace") as f:
        for row in csv.DictReader(f):
            if row.get("Name") != "Aggregated":
                continue
            try:
                ts = float(row["Timestamp"])
                total, failed = int(float(row["Total Request Count"])), int(float(row["Total Failure Count"]))
                points = [(q, float(row[col])) for col, q in LOCUST_QUANTILES if row.get(col) not in (None, "", "N/A")]
            except (KeyError, ValueError):
                res.problems["unparsable row"] += 1
                continue
            n, failures = total - last_total, failed - last_failed
            last_total, last_failed = total, failed
            if n <= 0:
                continue
            ok = n - failures
            done = 0
            # spread the second's successes over its percentiles: an approximation Locust's CSV forces
            for q, ms in points:
                k = round(ok * q) - done
                if k > 0:
                    res.add(ts, ms, "ok", k)
                    done += k
            if ok - done > 0:
                res.add(ts, points[-1][1] if points else None, "ok", ok - done)
            if failures:
                res.add(ts, None, "other", failures)
    return res


def _lines(p: Path) -> Iterable[str]:
    with open(p, errors="replace") as f:
        for line in f:
            if line.strip():
                yield line
