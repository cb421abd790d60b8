"""Typed records: everything that crosses a process or a file, one frozen dataclass each.

Streams of a run directory and who writes them::

    driver.jsonl     DriverSecond | DriverDone | DriverFault   the driver processes (harness/load/driver.py)
    samples.jsonl    Sample (of ProcessSample)                 the sampler (harness/sampling/sampler.py)
    events.jsonl     Event                                     the session and the sampler
    db.jsonl         DbSample                                  the PostgreSQL watcher
    agent-PID.jsonl  AgentHello | AgentTick | AgentStall | AgentGap | AgentProfile
                                                               the in-process agent (stdlib only: it writes
                                                               plain JSON; ``agent_record`` reads it)

and ``ShardPlan``, the one message a driver process reads. Every record has ``to_json()`` and
``from_json()``; string keys appear here and nowhere else. Reading is strict: an unknown field
is a ``RecordError``, so a writer and this reader cannot drift apart silently. ``FORMAT`` is
written into run.json; the previous format is read by dropping the fields it retired.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union

from harness.errors import RecordError
from harness.histogram import Histogram

FORMAT = 2
# format 1 recorded these and nothing read them: they are dropped when a format-1 run is read
RETIRED_V1: dict[str, frozenset[str]] = {
    "DriverSecond": frozenset({"pending", "labels", "bytes_in"}),
    "Sample": frozenset({"load"}),
    "ProcessSample": frozenset({"threads", "ctx_vol", "ctx_invol"}),
    "AgentStall": frozenset({"cpu_share"}),
}

Json = dict[str, Any]


def _check(name: str, data: Mapping[str, Any], known: frozenset[str], retired: frozenset[str] = frozenset()) -> None:
    unknown = set(data) - known - retired - {"type"}
    if unknown:
        raise RecordError(f"{name}: unknown field(s) {', '.join(sorted(unknown))}; "
                          "was this run written by a newer fastapi-harness?")


def _keys(*names: str) -> frozenset[str]:
    return frozenset(names)


def _hist(data: Mapping[str, Any] | None) -> Histogram:
    return Histogram.from_json(data)


# ---------------------------------------------------------------------------- driver


@dataclass(frozen=True)
class RequestWire:
    """One request of a shard, as it goes on the wire."""

    label: str
    wire: str  # the HTTP/1.1 request, latin-1 text
    url: str

    def to_json(self) -> Json:
        return {"label": self.label, "bytes": self.wire, "url": self.url}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RequestWire:
        _check("request", d, _keys("label", "bytes", "url"))
        return cls(d["label"], d["bytes"], d["url"])


@dataclass(frozen=True)
class ShardPlan:
    """A driver process's share of the load: the only message the manager sends it."""

    driver: int
    drivers: int  # shards in the fleet (user numbers interleave across them)
    host: str
    port: int
    t0: float  # epoch instant every driver counts its seconds from
    start_s: float  # the shard's load begins this long after t0
    model: str  # "closed" | "open"
    timeout_s: float
    requests: tuple[RequestWire, ...]
    cycle: tuple[int, ...]  # request indices in weighted round-robin order
    loops: int = 0
    duration_s: float = 0.0
    think_time_s: float = 0.0
    user_offsets: tuple[float, ...] = ()  # closed: when each of this shard's users starts
    points: tuple[tuple[float, float], ...] = ()  # open: (t, req/s) corners of this shard's rate
    connections: int = 0  # open: this shard's connection cap
    phase: float = 0.0  # open: staggers the shards so their arrivals interleave
    jtl: str = ""  # write a JTL part file here when set

    def to_json(self) -> Json:
        return {
            "driver": self.driver,
            "drivers": self.drivers,
            "host": self.host,
            "port": self.port,
            "t0": self.t0,
            "start_s": self.start_s,
            "model": self.model,
            "timeout_s": self.timeout_s,
            "requests": [r.to_json() for r in self.requests],
            "cycle": list(self.cycle),
            "loops": self.loops,
            "duration_s": self.duration_s,
            "think_time_s": self.think_time_s,
            "user_offsets": list(self.user_offsets),
            "points": [list(p) for p in self.points],
            "connections": self.connections,
            "phase": self.phase,
            "jtl": self.jtl,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ShardPlan:
        _check("shard plan", d, _keys(*cls.__dataclass_fields__))
        return cls(
            driver=int(d["driver"]), drivers=int(d["drivers"]), host=d["host"], port=int(d["port"]), t0=float(d["t0"]),
            start_s=float(d["start_s"]), model=d["model"], timeout_s=float(d["timeout_s"]),
            requests=tuple(RequestWire.from_json(r) for r in d["requests"]), cycle=tuple(d["cycle"]),
            loops=int(d.get("loops", 0)), duration_s=float(d.get("duration_s", 0.0)),
            think_time_s=float(d.get("think_time_s", 0.0)), user_offsets=tuple(d.get("user_offsets", ())),
            points=tuple((float(t), float(r)) for t, r in d.get("points", ())),
            connections=int(d.get("connections", 0)), phase=float(d.get("phase", 0.0)), jtl=d.get("jtl", ""),
        )


@dataclass(frozen=True)
class DriverSecond:
    """What one driver saw in one second since t0 (the last one may be shorter: ``span``)."""

    driver: int
    t: int
    span: float
    sent: int
    outcomes: Mapping[str, int]
    hist: Histogram = field(default_factory=Histogram)
    lag_max_ms: float = 0.0  # how far behind schedule the driver's loop ran
    late: int = 0  # open model: sends > 10 ms behind schedule
    dropped: int = 0  # open model: never sent (no connection within the timeout)
    conns: int = 0
    inflight: int = 0
    users: int = 0
    cpu: float = 0.0  # of its core

    def to_json(self) -> Json:
        return {"type": "second", "driver": self.driver, "t": self.t, "span": self.span, "sent": self.sent,
                "outcomes": dict(self.outcomes), "hist": self.hist.to_json(), "lag_max_ms": self.lag_max_ms,
                "late": self.late, "dropped": self.dropped, "conns": self.conns, "inflight": self.inflight,
                "users": self.users, "cpu": self.cpu}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], retired: frozenset[str] = frozenset()) -> DriverSecond:
        _check("driver second", d, _keys(*cls.__dataclass_fields__), retired)
        return cls(
            driver=int(d["driver"]), t=int(d["t"]), span=float(d.get("span", 1.0)), sent=int(d["sent"]),
            outcomes={k: int(n) for k, n in d.get("outcomes", {}).items()}, hist=_hist(d.get("hist")),
            lag_max_ms=float(d.get("lag_max_ms", 0.0)), late=int(d.get("late", 0)), dropped=int(d.get("dropped", 0)),
            conns=int(d.get("conns", 0)), inflight=int(d.get("inflight", 0)), users=int(d.get("users", 0)),
            cpu=float(d.get("cpu", 0.0)),
        )


@dataclass(frozen=True)
class DriverDone:
    """A driver's totals, once, when its shard ends."""

    driver: int
    sent: int
    aborted: int
    outcomes: Mapping[str, int]
    hot_path: str = ""  # "c" | "python"; empty for results read from another tool
    statuses: Sequence[tuple[str, int, int]] = ()  # (request label, status ≥ 400, responses)

    def to_json(self) -> Json:
        return {"type": "done", "driver": self.driver, "sent": self.sent, "aborted": self.aborted,
                "outcomes": dict(self.outcomes), "hot_path": self.hot_path,
                "statuses": [list(s) for s in self.statuses]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DriverDone:
        _check("driver done", d, _keys(*cls.__dataclass_fields__))
        return cls(int(d["driver"]), int(d["sent"]), int(d.get("aborted", 0)),
                   {k: int(n) for k, n in d.get("outcomes", {}).items()}, d.get("hot_path", ""),
                   tuple((str(label), int(status), int(n)) for label, status, n in d.get("statuses", ())))


@dataclass(frozen=True)
class DriverFault:
    """A driver that could not run its shard, and why."""

    message: str
    driver: int = -1

    def to_json(self) -> Json:
        return {"type": "error", "driver": self.driver, "message": self.message}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DriverFault:
        _check("driver error", d, _keys("message", "driver"))
        return cls(str(d["message"]), int(d.get("driver", -1)))


DriverRecord = Union[DriverSecond, DriverDone, DriverFault]


def driver_record(d: Mapping[str, Any], fmt: int = FORMAT) -> DriverRecord:
    """The typed record of one driver.jsonl line."""
    kind = d.get("type")
    if kind == "second":
        return DriverSecond.from_json(d, RETIRED_V1["DriverSecond"] if fmt < FORMAT else frozenset())
    if kind == "done":
        return DriverDone.from_json(d)
    if kind == "error":
        return DriverFault.from_json(d)
    raise RecordError(f"driver record: unknown type {kind!r}")


# ---------------------------------------------------------------------------- sampler, events, database


@dataclass(frozen=True)
class ProcessSample:
    """One process at one sampling tick."""

    pid: int
    role: str  # master | worker | driver
    cpu: float  # cores (1.0 = one core)
    rss_mb: float
    fds: int
    fd_limit: int | None = None
    tcp: Mapping[str, int] | None = None  # TCP connections by state, once a second
    db_conns: int | None = None  # connections to the database's port, once a second
    runq: float | None = None  # seconds its threads waited runnable for a CPU, per second (/proc/PID/schedstat)
    main_cpu: float | None = None  # cores used by its main thread (a worker's loop), once a second

    def to_json(self) -> Json:
        d: Json = {"pid": self.pid, "role": self.role, "cpu": self.cpu, "rss_mb": self.rss_mb, "fds": self.fds}
        for key in ("fd_limit", "tcp", "db_conns", "runq", "main_cpu"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any], retired: frozenset[str] = frozenset()) -> ProcessSample:
        _check("process sample", d, _keys(*cls.__dataclass_fields__), retired)
        return cls(int(d["pid"]), d["role"], float(d["cpu"]), float(d["rss_mb"]), int(d["fds"]),
                   d.get("fd_limit"), d.get("tcp"), d.get("db_conns"), d.get("runq"), d.get("main_cpu"))


@dataclass(frozen=True)
class ForeignProcess:
    """A process outside the run that used the host's CPU (cores)."""

    pid: int
    name: str
    cpu: float


@dataclass(frozen=True)
class Sample:
    """One sampling tick: every process of the run, the host's CPU per core (0..1), and, once a second
    while the host is busy, the processes outside the run that used the most CPU."""

    t: float
    procs: tuple[ProcessSample, ...]
    host_cpu: tuple[float, ...] = ()
    foreign: tuple[ForeignProcess, ...] | None = None
    # once a second: connections full accept queues turned away since the last reading (host-wide:
    # "overflows", "drops"), and the longest accept queue of the server's listening sockets now ("queued")
    listen: Mapping[str, int] | None = None
    steal: float | None = None  # once a second: cores the hypervisor gave to other machines (steal time)

    def to_json(self) -> Json:
        d: Json = {"t": self.t, "procs": [p.to_json() for p in self.procs], "host_cpu": list(self.host_cpu)}
        if self.foreign is not None:
            d["foreign"] = [vars(f) for f in self.foreign]
        if self.listen is not None:
            d["listen"] = dict(self.listen)
        if self.steal is not None:
            d["steal"] = self.steal
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any], fmt: int = FORMAT) -> Sample:
        old = fmt < FORMAT
        _check("sample", d, _keys("t", "procs", "host_cpu", "foreign", "listen", "steal"),
               RETIRED_V1["Sample"] if old else frozenset())
        retired = RETIRED_V1["ProcessSample"] if old else frozenset()
        foreign = d.get("foreign")
        return cls(float(d["t"]), tuple(ProcessSample.from_json(p, retired) for p in d["procs"]),
                   tuple(d.get("host_cpu", ())),
                   tuple(ForeignProcess(int(f["pid"]), f["name"], float(f["cpu"])) for f in foreign)
                   if foreign is not None else None, d.get("listen"), d.get("steal"))


EVENT_KINDS = ("worker-started", "worker-exited", "target-died", "stopped", "profile-requested", "stage",
               "search-ended", "capacity", "watcher-stopped", "node-lost")


@dataclass(frozen=True)
class Event:
    """Something that happened at ``t`` (seconds since t0); the fields beside ``kind`` depend on it."""

    t: float | None
    kind: str
    pid: int | None = None  # worker-started, worker-exited
    why: str | None = None  # stopped: the exception's name; search-ended: knee | max-time | max-rate | ... | collapse
    # watcher-stopped: "Service: error" (Redis, nginx, PostgreSQL stopped answering)
    id: int | None = None  # profile-requested
    seconds: float | None = None  # profile-requested
    phase: str | None = None  # stage: calibrate | step | refine | hold
    t_start: float | None = None  # stage
    t_end: float | None = None  # stage
    offered_rps: float | None = None  # stage, search-ended, capacity (the level held): open model
    users: int | None = None  # stage, search-ended, capacity (the level held): closed model
    achieved_rps: float | None = None  # capacity: the most req/s answered ok at a level refining held
    broke_at: float | None = None  # capacity: the lowest level found past the knee (req/s or users)
    node: int | None = None  # node-lost: the load node (run.json's cluster) that stopped answering
    host: str | None = None  # node-lost

    def to_json(self) -> Json:
        return {k: v for k, v in vars(self).items() if v is not None or k == "t"}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Event:
        _check("event", d, _keys(*cls.__dataclass_fields__))
        if d.get("kind") not in EVENT_KINDS:
            raise RecordError(f"event: unknown kind {d.get('kind')!r}")
        return cls(**d)


@dataclass(frozen=True)
class DbSample:
    """The database server once a second (PostgreSQL: pg_stat_activity's connections by state)."""

    t: float
    kind: str
    states: Mapping[str, int]
    total: int
    max_connections: int
    waits: Mapping[str, int] = field(default_factory=dict)  # active connections by wait_event_type ("CPU": none)

    def to_json(self) -> Json:
        return {"t": self.t, "kind": self.kind, "states": dict(self.states), "total": self.total,
                "max_connections": self.max_connections, "waits": dict(self.waits)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DbSample:
        _check("db sample", d, _keys(*cls.__dataclass_fields__))
        return cls(float(d["t"]), d["kind"], d["states"], int(d["total"]), int(d["max_connections"]),
                   d.get("waits", {}))


@dataclass(frozen=True)
class ProxySample:
    """The proxy in front of the instances once a second (nginx: ``stub_status`` and its error log)."""

    t: float
    kind: str  # nginx
    active: int  # client connections open now (reading + writing + waiting)
    reading: int
    writing: int
    waiting: int  # idle keep-alive connections
    requests: int  # requests it handled this interval
    dropped: int  # connections accepted but not handled this interval (worker_connections reached)
    errors: Mapping[str, int] = field(default_factory=dict)  # error log lines this interval, by kind

    def to_json(self) -> Json:
        return {**vars(self), "errors": dict(self.errors)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ProxySample:
        _check("proxy sample", d, _keys(*cls.__dataclass_fields__))
        return cls(float(d["t"]), str(d["kind"]), *(int(d[k]) for k in (
            "active", "reading", "writing", "waiting", "requests", "dropped")), d.get("errors", {}))


@dataclass(frozen=True)
class CacheSample:
    """The cache server once a second (Redis: ``INFO``); counters are this interval's."""

    t: float
    kind: str  # redis
    clients: int
    blocked: int
    commands: int
    hits: int
    misses: int
    used_mb: float
    evicted: int
    rejected: int  # connections refused at maxclients
    cpu: float  # cores its server used (Redis runs commands on one thread)

    @property
    def hit_rate(self) -> float | None:
        return self.hits / (self.hits + self.misses) if self.hits + self.misses else None

    def to_json(self) -> Json:
        return vars(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CacheSample:
        _check("cache sample", d, _keys(*cls.__dataclass_fields__))
        return cls(float(d["t"]), str(d["kind"]), *(int(d[k]) for k in (
            "clients", "blocked", "commands", "hits", "misses")), float(d["used_mb"]), int(d["evicted"]),
                   int(d["rejected"]), float(d["cpu"]))


@dataclass(frozen=True)
class CpuProfile:
    """One worker's CPU samples taken from outside (py-spy) during a profile window: each distinct stack
    (innermost frame first) with how many samples it got; ``error`` says why there are none."""

    pid: int
    t_start: float  # seconds since t0
    seconds: float
    rate_hz: int
    source: str  # py-spy
    samples: int
    stacks: tuple[tuple[tuple[tuple[str, int, str], ...], int], ...] = ()
    error: str = ""

    def to_json(self) -> Json:
        return {"pid": self.pid, "t_start": self.t_start, "seconds": self.seconds, "rate_hz": self.rate_hz,
                "source": self.source, "samples": self.samples, "error": self.error,
                "stacks": [[[list(f) for f in frames], n] for frames, n in self.stacks]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CpuProfile:
        _check("cpu profile", d, _keys(*cls.__dataclass_fields__))
        stacks = tuple((tuple((f[0], int(f[1]), f[2]) for f in frames), int(n)) for frames, n in d.get("stacks", ()))
        return cls(int(d["pid"]), float(d["t_start"]), float(d["seconds"]), int(d["rate_hz"]), d["source"],
                   int(d["samples"]), stacks, d.get("error", ""))


# ---------------------------------------------------------------------------- agent (format: harness/agent/__init__.py)

Site = tuple[str, int, str]  # (file, line, function)


@dataclass(frozen=True)
class ThreadpoolGauge:
    total: int
    borrowed: int
    waiting: int


@dataclass(frozen=True)
class PoolTick:
    """One SQLAlchemy pool in one tick; gauges are None when the pool could not be read."""

    id: str
    acquire: Histogram
    hold_ms: float
    returns: int
    timeouts: int
    size: int | None = None
    checked_out: int | None = None
    overflow: int | None = None
    max_overflow: int | None = None
    timeout_s: float | None = None  # how long a checkout waits before it raises
    waiting: int | None = None  # checkouts waiting for a connection now
    # holder (route, else the app line that checked out) → (returns, ms held, ms its statements ran)
    holds: Mapping[str, tuple[int, float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class HttpPoolTick:
    """An outbound HTTP client's pool (httpcore's or an aiohttp connector) in one tick."""

    id: str
    kind: str  # httpcore | aiohttp
    site: str  # "file:line function" of the app's call that first waited on it
    limit: int
    in_use: int
    waiting: int


@dataclass(frozen=True)
class RedisPoolTick:
    """A redis-py asyncio connection pool in one tick."""

    id: str
    in_use: int | None
    max: int | None
    waiting: int  # acquires in progress now (waiting for a free connection, or connecting)
    acquire: Histogram  # acquires that ended this tick, µs
    errors: Mapping[str, int] = field(default_factory=dict)  # "too-many-connections" | error type → n


@dataclass(frozen=True)
class ExecutorTick:
    """A ThreadPoolExecutor in one tick ("asyncio" is the loop's default executor)."""

    name: str
    max_workers: int
    threads: int
    busy: int
    queued: int


@dataclass(frozen=True)
class StatementTick:
    """One normalized statement sent from one app line, over one tick."""

    sql: str
    site: str  # "file:line function" of the app's frame that sent it ("" when none was found)
    n: int
    ms: float
    hist: Histogram
    routes: Mapping[str, tuple[int, float]]  # route → (calls, ms)


@dataclass(frozen=True)
class FullCollection:
    """A generation-2 garbage collection."""

    t: float  # epoch seconds it started
    ms: float
    collected: int


@dataclass(frozen=True)
class RouteTick:
    n: int
    errors: int
    hist: Histogram


@dataclass(frozen=True)
class AgentHello:
    pid: int
    t: float
    python: str
    versions: Mapping[str, str]
    loop: str
    hotspots: str
    watchdog: str
    cpu_timer: str
    options: Mapping[str, Any]
    middleware: tuple[str, ...] = ()  # the app's BaseHTTPMiddleware subclasses
    signal_relay: bool = False  # the agent kept its signals out of the loop's self-pipe (cputimer.WakeupRelay)


@dataclass(frozen=True)
class AgentTick:
    """Ten times a second: gauges now, counters since the last tick."""

    t: float  # epoch seconds
    seq: int
    lag_ms: tuple[float, ...]
    threadpool: ThreadpoolGauge | None
    pools: tuple[PoolTick, ...]
    gc_pause_ms: float
    gc_collections: tuple[int, ...]
    hot_ms: Mapping[str, float]
    hot_frames_ms: Mapping[str, float]
    pool_ms: Mapping[str, float]
    pool_frames_ms: Mapping[str, float]
    inflight: int = 0
    routes: Mapping[str, RouteTick] = field(default_factory=dict)
    exceptions: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    waits_ms: Mapping[str, float] = field(default_factory=dict)  # "kind|file:line function" → in-flight ms
    http_pools: tuple[HttpPoolTick, ...] = ()
    executors: tuple[ExecutorTick, ...] = ()
    statements: tuple[StatementTick, ...] = ()
    gc_full: tuple[FullCollection, ...] = ()
    memory: Mapping[str, int] | None = None  # once a second: pymalloc "blocks", glibc "malloc" bytes in use
    db_errors: Mapping[str, int] = field(default_factory=dict)  # "too-many-connections" or a DBAPI error type → n
    redis_pools: tuple[RedisPoolTick, ...] = ()


@dataclass(frozen=True)
class AgentStall:
    t_start: float  # epoch seconds
    duration_ms: float
    kind: str  # app-code | blocking-wait | cpu-other | starved
    site: Site | None
    stack: tuple[Site, ...]
    samples: int


@dataclass(frozen=True)
class AgentGap:
    lost: int
    error: str


@dataclass(frozen=True)
class AgentProfile:
    id: int
    seconds: float
    files: tuple[str, ...]
    errors: tuple[str, ...]  # why a profiler gave nothing (one not installed in the app's interpreter, ...)
    grew: tuple[tuple[str, int, int, int], ...] = ()  # (file, line, bytes, blocks): tracemalloc's top growth
    grew_types: tuple[tuple[str, int], ...] = ()  # (module.Type, live objects gained) over the window


AgentRecord = Union[AgentHello, AgentTick, AgentStall, AgentGap, AgentProfile]


def _site(d: Mapping[str, Any] | None) -> Site | None:
    return (d["file"], int(d["line"] or 0), d["function"]) if d else None


def _hello(d: Mapping[str, Any], fmt: int) -> AgentHello:
    _check("agent hello", d, _keys(*AgentHello.__dataclass_fields__))
    return AgentHello(int(d["pid"]), float(d["t"]), d["python"], d.get("versions", {}), d.get("loop", ""),
                      d.get("hotspots", ""), d.get("watchdog", ""), d.get("cpu_timer", ""), d.get("options", {}),
                      tuple(d.get("middleware", ())), bool(d.get("signal_relay", False)))


def _pool(d: Mapping[str, Any]) -> PoolTick:
    _check("agent pool", d, _keys(*PoolTick.__dataclass_fields__))
    gauges = {k: int(d[k]) for k in ("size", "checked_out", "overflow", "max_overflow", "waiting") if k in d}
    return PoolTick(id=str(d["id"]), acquire=_hist(d.get("acquire")), hold_ms=float(d.get("hold_ms", 0.0)),
                    returns=int(d.get("returns", 0)), timeouts=int(d.get("timeouts", 0)),
                    timeout_s=float(d["timeout_s"]) if d.get("timeout_s") is not None else None,
                    holds={r: (int(n), float(ms), float(ran)) for r, (n, ms, ran) in d.get("holds", {}).items()},
                    **gauges)


def _statement(d: Mapping[str, Any]) -> StatementTick:
    _check("agent statement", d, _keys(*StatementTick.__dataclass_fields__))
    return StatementTick(str(d["sql"]), str(d.get("site", "")), int(d["n"]), float(d["ms"]), _hist(d.get("hist")),
                         {r: (int(n), float(ms)) for r, (n, ms) in d.get("routes", {}).items()})


def _tick(d: Mapping[str, Any], fmt: int) -> AgentTick:
    _check("agent tick", d, _keys("t", "seq", "lag_ms", "threadpool", "pools", "gc", "hot_ms", "hot_frames_ms",
                                   "pool_ms", "pool_frames_ms", "inflight", "routes", "exceptions", "waits_ms",
                                   "http_pools", "executors", "statements", "memory", "db_errors",
                                   "redis_pools"))
    tp, gc = d.get("threadpool"), d.get("gc") or {}
    routes = {k: RouteTick(int(r["n"]), int(r["errors"]), _hist(r.get("hist"))) for k, r in d.get("routes", {}).items()}
    return AgentTick(
        t=float(d["t"]),
        seq=int(d.get("seq", 0)),
        lag_ms=tuple(d.get("lag_ms", ())),
        threadpool=ThreadpoolGauge(int(tp["total"]), int(tp["borrowed"]), int(tp.get("waiting") or 0)) if tp else None,
        pools=tuple(_pool(p) for p in d.get("pools", ())),
        gc_pause_ms=float(gc.get("pause_ms", 0.0)),
        gc_collections=tuple(gc.get("collections", ())),
        gc_full=tuple(FullCollection(float(t), float(ms), int(n)) for t, ms, n in gc.get("full", ())),
        hot_ms=d.get("hot_ms", {}),
        hot_frames_ms=d.get("hot_frames_ms", {}),
        pool_ms=d.get("pool_ms", {}),
        pool_frames_ms=d.get("pool_frames_ms", {}),
        inflight=int(d.get("inflight", 0)),
        routes=routes,
        exceptions=d.get("exceptions", {}),
        waits_ms=d.get("waits_ms", {}),
        http_pools=tuple(HttpPoolTick(**p) for p in d.get("http_pools", ())),
        executors=tuple(ExecutorTick(**e) for e in d.get("executors", ())),
        statements=tuple(_statement(s) for s in d.get("statements", ())),
        memory=d.get("memory"),
        db_errors=d.get("db_errors", {}),
        redis_pools=tuple(RedisPoolTick(str(p["id"]), p.get("in_use"), p.get("max"), int(p.get("waiting", 0)),
                                        _hist(p.get("acquire")), p.get("errors", {}))
                          for p in d.get("redis_pools", ())),
    )


def _stall(d: Mapping[str, Any], fmt: int) -> AgentStall:
    _check("agent stall", d, _keys("t_start", "duration_ms", "class", "site", "stack", "samples"),
           RETIRED_V1["AgentStall"] if fmt < FORMAT else frozenset())
    return AgentStall(float(d["t_start"]), float(d["duration_ms"]), d.get("class", ""), _site(d.get("site")),
                      tuple((f[0], int(f[1] or 0), f[2]) for f in d.get("stack", ())), int(d.get("samples", 0)))


def _gap(d: Mapping[str, Any], fmt: int) -> AgentGap:
    _check("agent gap", d, _keys("lost", "error"))
    return AgentGap(int(d.get("lost", 0)), str(d.get("error", "")))


def _profile(d: Mapping[str, Any], fmt: int) -> AgentProfile:
    _check("agent profile", d, _keys("id", "seconds", "files", "errors", "grew", "grew_types"))
    return AgentProfile(int(d["id"]), float(d.get("seconds", 0.0)), tuple(d.get("files", ())),
                        tuple(str(e) for e in (d.get("errors") or ())),
                        tuple((str(f), int(line), int(size), int(n)) for f, line, size, n in d.get("grew", ())),
                        tuple((str(t), int(n)) for t, n in d.get("grew_types", ())))


_AGENT_READERS: dict[str, Callable[[Mapping[str, Any], int], AgentRecord]] = {
    "hello": _hello, "tick": _tick, "stall": _stall, "gap": _gap, "profile": _profile}


def agent_record(d: Mapping[str, Any], fmt: int = FORMAT) -> AgentRecord:
    """The typed record of one line an agent wrote (the agent, stdlib-only, writes plain JSON)."""
    reader = _AGENT_READERS.get(d.get("type", ""))
    if reader is None:
        raise RecordError(f"agent record: unknown type {d.get('type')!r}")
    return reader(d, fmt)


def agent_record_to_json(r: AgentRecord) -> Json:
    """The line the agent wrote for ``r`` (used to save a recording; the agent writes its own)."""
    if isinstance(r, AgentTick):
        d: Json = {"type": "tick", "t": r.t, "seq": r.seq, "lag_ms": list(r.lag_ms),
                   "threadpool": vars(r.threadpool) if r.threadpool else None,
                   "pools": [{**{k: v for k, v in vars(p).items() if v is not None}, "acquire": p.acquire.to_json(),
                              "holds": {k: list(v) for k, v in p.holds.items()}} for p in r.pools],
                   "gc": {"pause_ms": r.gc_pause_ms, "collections": list(r.gc_collections),
                          "full": [[c.t, c.ms, c.collected] for c in r.gc_full]},
                   "hot_ms": r.hot_ms, "hot_frames_ms": r.hot_frames_ms, "pool_ms": r.pool_ms,
                   "pool_frames_ms": r.pool_frames_ms, "inflight": r.inflight,
                   "routes": {k: {"n": v.n, "errors": v.errors, "hist": v.hist.to_json()} for k, v in r.routes.items()},
                   "exceptions": r.exceptions, "waits_ms": r.waits_ms, "http_pools": [vars(p) for p in r.http_pools],
                   "executors": [vars(e) for e in r.executors],
                   "statements": [{**vars(s), "hist": s.hist.to_json(), "routes": {k: list(v) for k, v in
                                                                                   s.routes.items()}}
                                  for s in r.statements],
                   "db_errors": dict(r.db_errors)}
        if r.memory is not None:
            d["memory"] = dict(r.memory)
        if r.redis_pools:
            d["redis_pools"] = [{**vars(p), "acquire": p.acquire.to_json(), "errors": dict(p.errors)}
                                for p in r.redis_pools]
        return d
    if isinstance(r, AgentStall):
        return {"type": "stall", "t_start": r.t_start, "duration_ms": r.duration_ms, "class": r.kind,
                "site": dict(zip(("file", "line", "function"), r.site)) if r.site else None,
                "stack": [list(f) for f in r.stack], "samples": r.samples}
    kind = {AgentHello: "hello", AgentGap: "gap", AgentProfile: "profile"}[type(r)]
    return {"type": kind, **{k: list(v) if isinstance(v, tuple) else v for k, v in vars(r).items()}}


# ---------------------------------------------------------------------------- the live run, for the progress line


@dataclass(frozen=True)
class Progress:
    """Where a live run stands, for the progress line (passed from the session to the CLI's printer)."""

    elapsed_s: float
    planned_s: float | None
    rps: float | None  # the newest second's, None before this step's first second
    p99_ms: float | None
    requests: int
    errors: int
    planned_requests: int | None
    step: str = ""  # diagnose: "step 3 · 54 req/s offered", "calibration · 20 users", ...
    step_elapsed_s: float = 0.0
    step_planned_s: float | None = None
    budget_s: float | None = None  # diagnose: --max-time
