"""Scenario schema: TOML (plus command-line overrides) → a frozen, validated ``Scenario``.

Every error names the file, the field and the fix. Nothing here touches processes or sockets.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.errors import ConfigError, RecordError

SERVERS = ("uvicorn", "gunicorn")
LOOPS = ("auto", "uvloop", "asyncio")
MODELS = ("closed", "open")
PROXIES = ("none", "nginx")
BALANCES = ("round_robin", "least_conn")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class Readiness:
    path: str = "/"
    timeout_s: float = 30.0


@dataclass(frozen=True)
class AppConfig:
    target: str = "sample_app.main:app"
    app_dir: str = "."
    python: str = ""
    factory: bool = False
    server: str = "uvicorn"
    workers: int = 1
    instances: int = 1  # independent servers, each with its own workers and port (behind [proxy])
    loop: str = "auto"
    port: int = 0
    backlog: int = 0  # the listening socket's accept queue (0: the server's default, 2048)
    access_log: bool = False
    agent: bool = True
    fd_limit: int = 0
    env: dict[str, str] = field(default_factory=dict)
    readiness: Readiness = Readiness()


@dataclass(frozen=True)
class LoadStep:
    duration_s: float
    rate: float


@dataclass(frozen=True)
class LoadConfig:
    model: str = "closed"
    users: int = 10
    ramp_up_s: float = 0.0
    loops: int = 0
    duration_s: float = 0.0
    think_time_s: float = 0.0
    rate: float = 0.0
    ramp_s: float = 0.0
    stages: tuple[LoadStep, ...] = ()
    drivers: int = 0
    connections: int = 0
    timeout_s: float = 10.0
    cluster: str = ""  # a Ray cluster's address ("auto", "ray://head:10001"): the drivers run on its nodes
    nodes: int = 0  # with cluster: how many of its nodes send load (0: all); drivers is then per node


@dataclass(frozen=True)
class RequestSpec:
    path: str
    method: str = "GET"
    name: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    weight: int = 1

    @property
    def label(self) -> str:
        return self.name or f"{self.method} {self.path}"


@dataclass(frozen=True)
class Slo:
    p99_ms: float = 0.0
    p95_ms: float = 0.0
    error_rate: float = 0.0


@dataclass(frozen=True)
class SamplingConfig:
    interval_s: float = 0.1


@dataclass(frozen=True)
class AgentConfig:
    stall_threshold_ms: float = 25.0
    hotspot_hz: float = 50.0
    profile_at_s: float = 0.0
    profile_for_s: float = 5.0
    tracemalloc: bool = False  # the profile window also diffs two tracemalloc snapshots (slows allocation meanwhile)
    sink: str = ""  # with a target already running (url): "[HOST:]PORT" the harness listens on for its agents
    sink_wait_s: float = 60.0  # how long the harness waits for the first agent to connect


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = ""  # a PostgreSQL DSN the sampler watches (pg_stat_activity), or any DB URL with a port

    @property
    def is_postgres(self) -> bool:
        return self.url.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


@dataclass(frozen=True)
class ProxyConfig:
    kind: str = "none"  # "nginx": the harness runs nginx in front of [app] instances and loads it
    balance: str = "round_robin"
    workers: int = 1
    worker_connections: int = 1024
    binary: str = "nginx"  # a name on the PATH (or in /usr/sbin) or a path


@dataclass(frozen=True)
class RedisConfig:
    start: bool = False  # the harness runs redis-server on a free loopback port for the run
    url: str = ""  # or one already running, e.g. redis://127.0.0.1:6379/0
    env: str = "REDIS_URL"  # the environment variable the app reads the Redis URL from
    binary: str = "redis-server"  # with start: a name on the PATH (or in /usr/bin, /usr/sbin) or a path

    @property
    def enabled(self) -> bool:
        return self.start or bool(self.url)


@dataclass(frozen=True)
class Scenario:
    name: str
    app: AppConfig
    load: LoadConfig
    requests: tuple[RequestSpec, ...]
    slo: Slo = Slo()
    sampling: SamplingConfig = SamplingConfig()
    agent: AgentConfig = AgentConfig()
    database: DatabaseConfig = DatabaseConfig()
    proxy: ProxyConfig = ProxyConfig()
    redis: RedisConfig = RedisConfig()
    url: str = ""  # an already-running target; empty means "boot app"
    pid: int = 0  # that target's process, sampled when given
    source: str = ""

    @property
    def planned_duration_s(self) -> float | None:
        """Seconds of load this scenario plans, or None when it ends by loop count."""
        load = self.load
        if load.model == "open":
            return sum(s.duration_s for s in load.stages) if load.stages else load.duration_s
        return load.duration_s or None

    @property
    def planned_requests(self) -> int | None:
        """Requests a closed, loop-bounded scenario sends, or None."""
        if self.load.model == "closed" and self.load.loops and not self.load.duration_s:
            return self.load.users * self.load.loops
        return None

    def to_dict(self) -> dict[str, Any]:
        """The resolved scenario as plain JSON-able data (``from_dict`` reads it back)."""
        return dataclasses.asdict(self)

    def fields(self) -> dict[str, Any]:
        """Every field as a dotted path ("app.workers", "requests.0.path") and its value."""
        def flat(value: Any, prefix: str) -> dict[str, Any]:
            if isinstance(value, dict) and value:
                return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}{key}.").items()}
            if isinstance(value, (list, tuple)) and value and isinstance(value[0], dict):
                return {k: v for i, item in enumerate(value) for k, v in flat(item, f"{prefix}{i}.").items()}
            return {prefix.rstrip("."): value}

        return flat(self.to_dict(), "")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scenario:
        """The scenario ``to_dict`` wrote (as run.json keeps it); fields it lacks take their defaults."""
        def build(kind: type, data: dict[str, Any] | None, **nested: Any) -> Any:
            data = dict(data or {})
            known = {f.name for f in dataclasses.fields(kind)}
            unknown = set(data) - known
            if unknown:
                raise RecordError(
                    f"run.json scenario: unknown field(s) {', '.join(sorted(unknown))} in {kind.__name__}"
                )
            return kind(**{**data, **nested})

        app = d.get("app") or {}
        load = d.get("load") or {}
        return build(cls, d, **{
            "app": build(AppConfig, app, readiness=build(Readiness, app.get("readiness"))),
            "load": build(LoadConfig, load, stages=tuple(build(LoadStep, s) for s in load.get("stages", ()))),
            "requests": tuple(build(RequestSpec, r) for r in d.get("requests", ())),
            "slo": build(Slo, d.get("slo")), "sampling": build(SamplingConfig, d.get("sampling")),
            "agent": build(AgentConfig, d.get("agent")), "database": build(DatabaseConfig, d.get("database")),
            "proxy": build(ProxyConfig, d.get("proxy")), "redis": build(RedisConfig, d.get("redis")),
        })


# --------------------------------------------------------------------------- values

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds for ``"30s"``, ``"250ms"``, ``"2m"``, ``"1h"`` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like \"30s\" or \"250ms\"")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNIT[m.group(2)]
    raise ValueError(f"expected a duration like \"30s\" or \"250ms\", got {value!r}")


class _Field:
    """One scenario field: how to read it, and what it becomes in the dataclass."""

    def __init__(self, attr: str, read: Callable[[Any], Any], example: str):
        self.attr, self.read, self.example = attr, read, example


def _int(lo: int) -> Callable[[Any], int]:
    def read(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, str) and v.strip().lstrip("-").isdigit():
                v = int(v)
            else:
                raise ValueError(f"expected a whole number, got {v!r}")
        if v < lo:
            raise ValueError(f"must be ≥ {lo}, got {v}")
        return v

    return read


def _number(lo: float, strict: bool = False) -> Callable[[Any], float]:
    def read(v: Any) -> float:
        if isinstance(v, bool):
            raise ValueError(f"expected a number, got {v!r}")
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {v!r}") from None
        if not math.isfinite(x) or x < lo or (strict and x == lo):
            raise ValueError(f"must be {'>' if strict else '≥'} {lo:g}, got {v!r}")
        return x

    return read


def _duration(positive: bool) -> Callable[[Any], float]:
    def read(v: Any) -> float:
        x = parse_duration(v)
        if x < 0 or (positive and x == 0):
            raise ValueError(f"must be {'> 0' if positive else '≥ 0'}, got {v!r}")
        return x

    return read


def _ms(v: Any) -> float:
    return _duration(False)(v) * 1000.0


def _choice(options: tuple[str, ...], upper: bool = False) -> Callable[[Any], str]:
    def read(v: Any) -> str:
        s = str(v).upper() if upper else str(v)
        if s not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {v!r}")
        return s

    return read


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {v!r}")
    return v


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false", "1", "0", "yes", "no"):
        return v.lower() in ("true", "1", "yes")
    raise ValueError(f"expected true or false, got {v!r}")


def _str_table(v: Any) -> dict[str, str]:
    if not isinstance(v, dict):
        raise ValueError(f"expected a table of strings, got {v!r}")
    return {str(k): str(x) for k, x in v.items()}


RAND = re.compile(r"\{rand:(\d+)-(\d+)\}")  # in a request path: a random whole number in [lo, hi] per request


def _path(v: Any) -> str:
    s = _str(v)
    if not s.startswith("/"):
        raise ValueError(f"must start with '/', got {v!r}")
    for m in RAND.finditer(s):
        if int(m[1]) > int(m[2]):
            raise ValueError(f"{m[0]}: the range's low end is above its high end")
    if "{" in RAND.sub("", s):
        raise ValueError(f"{s!r}: the only template a path takes is {{rand:LO-HI}}, e.g. /items/{{rand:1-10000}}")
    return s


APP_FIELDS = {
    "target": _Field("target", _str, 'target = "main:app"'),
    "app_dir": _Field("app_dir", _str, 'app_dir = "."'),
    "python": _Field("python", _str, 'python = ".venv/bin/python"'),
    "factory": _Field("factory", _bool, "factory = true"),
    "server": _Field("server", _choice(SERVERS), 'server = "uvicorn"'),
    "workers": _Field("workers", _int(1), "workers = 2"),
    "instances": _Field("instances", _int(1), "instances = 2"),
    "loop": _Field("loop", _choice(LOOPS), 'loop = "uvloop"'),
    "port": _Field("port", _int(0), "port = 8000"),
    "backlog": _Field("backlog", _int(0), "backlog = 2048"),
    "access_log": _Field("access_log", _bool, "access_log = false"),
    "agent": _Field("agent", _bool, "agent = false"),
    "fd_limit": _Field("fd_limit", _int(16), "fd_limit = 256"),
    "env": _Field("env", _str_table, 'env = { LOG_LEVEL = "info" }'),
}
READINESS_FIELDS = {
    "path": _Field("path", _path, 'path = "/health"'),
    "timeout": _Field("timeout_s", _duration(True), 'timeout = "30s"'),
}
LOAD_FIELDS = {
    "model": _Field("model", _choice(MODELS), 'model = "closed"'),
    "users": _Field("users", _int(1), "users = 50"),
    "ramp_up": _Field("ramp_up_s", _duration(False), 'ramp_up = "10s"'),
    "loops": _Field("loops", _int(1), "loops = 100"),
    "duration": _Field("duration_s", _duration(True), 'duration = "30s"'),
    "think_time": _Field("think_time_s", _duration(False), 'think_time = "100ms"'),
    "rate": _Field("rate", _number(0, strict=True), "rate = 200"),
    "ramp": _Field("ramp_s", _duration(False), 'ramp = "10s"'),
    "drivers": _Field("drivers", _int(1), "drivers = 2"),
    "connections": _Field("connections", _int(1), "connections = 500"),
    "timeout": _Field("timeout_s", _duration(True), 'timeout = "10s"'),
    "cluster": _Field("cluster", _str, 'cluster = "auto"'),
    "nodes": _Field("nodes", _int(1), "nodes = 2"),
}
STAGE_FIELDS = {
    "duration": _Field("duration_s", _duration(True), 'duration = "10s"'),
    "rate": _Field("rate", _number(0), "rate = 100"),
}
REQUEST_FIELDS = {
    "path": _Field("path", _path, 'path = "/health"'),
    "method": _Field("method", _choice(METHODS, upper=True), 'method = "GET"'),
    "name": _Field("name", _str, 'name = "health"'),
    "headers": _Field("headers", _str_table, 'headers = { Accept = "application/json" }'),
    "body": _Field("body", _str, 'body = "..."'),
    "json": _Field("body", lambda v: json.dumps(v, separators=(",", ":")), 'json = { id = 1 }'),
    "weight": _Field("weight", _int(1), "weight = 3"),
}
SLO_FIELDS = {
    "p99": _Field("p99_ms", _ms, 'p99 = "200ms"'),
    "p95": _Field("p95_ms", _ms, 'p95 = "100ms"'),
    "error_rate": _Field("error_rate", _number(0), "error_rate = 0.01"),
}
SAMPLING_FIELDS = {
    "interval": _Field("interval_s", _duration(True), 'interval = "100ms"'),
}
AGENT_FIELDS = {
    "stall_threshold": _Field("stall_threshold_ms", lambda v: _duration(True)(v) * 1000.0, 'stall_threshold = "25ms"'),
    "hotspot_hz": _Field("hotspot_hz", _number(0), "hotspot_hz = 50"),
    "profile_at": _Field("profile_at_s", _duration(False), 'profile_at = "5s"'),
    "profile_for": _Field("profile_for_s", _duration(True), 'profile_for = "5s"'),
    "tracemalloc": _Field("tracemalloc", _bool, "tracemalloc = true"),
    "sink": _Field("sink", _str, 'sink = "127.0.0.1:9100"'),
    "sink_wait": _Field("sink_wait_s", _duration(True), 'sink_wait = "60s"'),
}
DATABASE_FIELDS = {
    "url": _Field("url", _str, 'url = "postgresql://user@127.0.0.1:5432/app"'),
}
PROXY_FIELDS = {
    "kind": _Field("kind", _choice(PROXIES), 'kind = "nginx"'),
    "balance": _Field("balance", _choice(BALANCES), 'balance = "least_conn"'),
    "workers": _Field("workers", _int(1), "workers = 1"),
    "worker_connections": _Field("worker_connections", _int(16), "worker_connections = 1024"),
    "binary": _Field("binary", _str, 'binary = "/usr/sbin/nginx"'),
}
REDIS_FIELDS = {
    "start": _Field("start", _bool, "start = true"),
    "url": _Field("url", _str, 'url = "redis://127.0.0.1:6379/0"'),
    "env": _Field("env", _str, 'env = "REDIS_URL"'),
    "binary": _Field("binary", _str, 'binary = "/usr/bin/redis-server"'),
}
TOP_FIELDS = {"name", "app", "load", "requests", "slo", "sampling", "agent", "database", "proxy", "redis"}

# What `fastapi-harness run` does with no scenario: scenarios/smoke.toml, embedded (a test keeps them equal).
DEFAULT_SCENARIO: dict[str, Any] = {
    "name": "smoke",
    "app": {"target": "sample_app.main:app", "workers": 2, "readiness": {"path": "/health", "timeout": "30s"}},
    "load": {"model": "closed", "users": 20, "ramp_up": "1s", "duration": "5s", "timeout": "5s"},
    "requests": [{"path": "/health", "weight": 3}, {"path": "/fast", "weight": 1}],
    "slo": {"p99": "200ms", "error_rate": 0.01},
}


# --------------------------------------------------------------------------- command-line overrides

CLOSED_ONLY = ("users", "loops", "ramp_up", "think_time")  # [load] keys of one model, dropped on switching
OPEN_ONLY = ("rate", "ramp", "stages")
FLAG_PATHS = {"workers": "app.workers", "server": "app.server", "python": "app.python", "users": "load.users",
              "loops": "load.loops", "rate": "load.rate", "duration": "load.duration", "drivers": "load.drivers",
              "slo_p99": "slo.p99", "cluster": "load.cluster", "nodes": "load.nodes"}


def flag_overrides(raw: dict[str, Any], flags: dict[str, Any], env: list[str] | tuple[str, ...] = (),
                   sets: list[str] | tuple[str, ...] = (), agent: bool = True) -> dict[str, Any]:
    """Dotted-path overrides for command-line flags (``FLAG_PATHS``' names; None = not given),
    ``--env KEY=VALUE`` and ``--set PATH=VALUE``. A rate switches a closed scenario to the open
    model and users/loops an open one to closed: the other model's keys are dropped from ``raw``."""
    o: dict[str, Any] = {FLAG_PATHS[flag]: value for flag, value in flags.items() if value is not None}
    if not agent:
        o["app.agent"] = False
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env {item!r}: expected KEY=VALUE, e.g. --env LOG_LEVEL=debug")
        o[f"app.env.{key}"] = value
    for item in sets:
        path, sep, value = item.partition("=")
        if not sep or not path:
            raise ConfigError(f"--set {item!r}: expected PATH=VALUE, e.g. --set load.users=50")
        o[path] = value
    load = raw.setdefault("load", {})
    if flags.get("rate") is not None and load.get("model", "closed") == "closed":
        o["load.model"] = "open"
        for key in CLOSED_ONLY:
            load.pop(key, None)
    if (flags.get("users") is not None or flags.get("loops") is not None) and load.get("model") == "open":
        o["load.model"] = "closed"
        for key in OPEN_ONLY:
            load.pop(key, None)
    return o


# --------------------------------------------------------------------------- parsing


class _Reader:
    """Reads tables against field specs, raising ConfigError that names source and key."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where}: {message}")

    def table(self, raw: Any, where: str, fields: dict[str, _Field], extra: tuple[str, ...] = ()) -> dict:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.fail(where, f"expected a table, got {raw!r}")
        out: dict[str, Any] = {}
        for key, value in raw.items():
            if key in extra:
                continue
            spec = fields.get(key)
            if spec is None:
                close = difflib.get_close_matches(key, list(fields) + list(extra), n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(fields))}"
                raise self.fail(f"{where}.{key}", f"unknown key; {hint}")
            try:
                out[spec.attr] = spec.read(value)
            except ValueError as e:
                raise self.fail(f"{where}.{key}", f"{e}; write it like `{spec.example}`") from None
        return out


def read_scenario_file(path: str | os.PathLike) -> dict[str, Any]:
    """The raw tables of a scenario file (name defaults to the file's stem)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such scenario file; pass the path of a .toml file (see scenarios/)")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML ({e}); fix the syntax at that line") from None
    raw.setdefault("name", p.stem)
    return raw


def load_scenario(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> Scenario:
    """The validated scenario in the TOML file at ``path``, with dotted-path overrides applied."""
    return build_scenario(read_scenario_file(path), source=str(path), base_dir=Path(path).parent, overrides=overrides)


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``raw`` with ``{"load.users": 5, ...}`` set (``requests`` replaced whole)."""
    out = json.loads(json.dumps(raw))
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {dotted}: '{part}' is not a table; use a path like load.users")
        node[leaf] = value
    return out


def build_scenario(
    raw: dict[str, Any],
    source: str = "command line",
    base_dir: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Scenario:
    """A validated Scenario from plain data (a parsed TOML document)."""
    if overrides:
        raw = apply_overrides(raw, overrides)
    r = _Reader(source)
    for key in raw:
        if key not in TOP_FIELDS and key not in ("url", "pid"):
            close = difflib.get_close_matches(key, TOP_FIELDS, n=1)
            hint = f"did you mean [{close[0]}]?" if close else f"known tables: {', '.join(sorted(TOP_FIELDS))}"
            raise r.fail(key, f"unknown key; {hint}")

    app_raw = dict(raw.get("app") or {})
    app_kw = r.table(app_raw, "[app]", APP_FIELDS, extra=("readiness",))
    app_kw["readiness"] = Readiness(**r.table(app_raw.get("readiness"), "[app.readiness]", READINESS_FIELDS))
    # Relative paths in a file are relative to that file, so a scenario runs from any directory.
    base = base_dir or Path.cwd()
    app_kw["app_dir"] = str((base / app_kw.get("app_dir", ".")).resolve())
    if "/" in app_kw.get("python", "") and not os.path.isabs(app_kw["python"]):
        app_kw["python"] = str((base / app_kw["python"]).resolve())
    app = AppConfig(**app_kw)
    if ":" not in app.target:
        raise r.fail(
            "[app].target", f"expected 'module:attribute', got {app.target!r}; write it like `target = \"main:app\"`"
        )

    load_raw = dict(raw.get("load") or {})
    load_kw = r.table(load_raw, "[load]", LOAD_FIELDS, extra=("stages",))
    stages_raw = load_raw.get("stages") or []
    if not isinstance(stages_raw, list):
        raise r.fail("[load].stages", "expected an array of tables; write [[load.stages]] blocks")
    load_kw["stages"] = tuple(
        LoadStep(
            **_require(
                r, r.table(s, f"[[load.stages]] #{i + 1}", STAGE_FIELDS), f"[[load.stages]] #{i + 1}", STAGE_FIELDS
            )
        )
        for i, s in enumerate(stages_raw)
    )
    load = LoadConfig(**load_kw)
    _check_load(r, load, load_kw)

    reqs_raw = raw.get("requests")
    if not reqs_raw:
        raise r.fail("[[requests]]", 'no requests; add one like [[requests]] path = "/health"')
    if not isinstance(reqs_raw, list):
        raise r.fail("[[requests]]", "expected an array of tables; write [[requests]] blocks")
    requests = []
    for i, q in enumerate(reqs_raw):
        where = f"[[requests]] #{i + 1}"
        if isinstance(q, dict) and "body" in q and "json" in q:
            raise r.fail(where, "give either body or json, not both")
        kw = _require(r, r.table(q, where, REQUEST_FIELDS), where, {"path": REQUEST_FIELDS["path"]})
        if "json" in q:
            kw["headers"] = {"Content-Type": "application/json", **kw.get("headers", {})}
        requests.append(RequestSpec(**kw))

    proxy = ProxyConfig(**r.table(raw.get("proxy"), "[proxy]", PROXY_FIELDS))
    redis = RedisConfig(**r.table(raw.get("redis"), "[redis]", REDIS_FIELDS))
    url = str(raw.get("url") or "")
    _check_topology(r, app, proxy, redis, url)
    agent = AgentConfig(**r.table(raw.get("agent"), "[agent]", AGENT_FIELDS))
    if agent.sink:
        if not url:
            raise r.fail("[agent].sink", "the sink is for the agents of an app the harness did not boot: it goes with "
                                         "--url (an app the harness boots streams to the run directory)")
        sink_address(agent.sink)  # the form, checked now
    return Scenario(
        name=str(raw.get("name") or "run"),
        app=app,
        load=load,
        requests=tuple(requests),
        slo=Slo(**r.table(raw.get("slo"), "[slo]", SLO_FIELDS)),
        sampling=SamplingConfig(**r.table(raw.get("sampling"), "[sampling]", SAMPLING_FIELDS)),
        agent=agent,
        database=DatabaseConfig(**r.table(raw.get("database"), "[database]", DATABASE_FIELDS)),
        proxy=proxy,
        redis=redis,
        url=url,
        pid=int(raw.get("pid") or 0),
        source=source,
    )


def _check_topology(r: _Reader, app: AppConfig, proxy: ProxyConfig, redis: RedisConfig, url: str) -> None:
    if app.instances > 1 and proxy.kind == "none":
        raise r.fail("[app].instances", f"{app.instances} instances need a proxy in front of them to share the load; "
                                        'add [proxy] kind = "nginx" or set instances = 1')
    if url and (proxy.kind != "none" or app.instances > 1 or redis.start):
        raise r.fail("[proxy]" if proxy.kind != "none" else "[app].instances" if app.instances > 1 else "[redis].start",
                     "a target already running (--url) is loaded as it is; the harness boots instances, a proxy or "
                     "Redis only for an app it boots itself: drop --url or the field")
    if app.port and (app.instances > 1 or proxy.kind != "none"):
        raise r.fail("[app].port", "with a proxy the harness picks each instance's port; remove port")
    if redis.start and redis.url:
        raise r.fail("[redis]", "give either start = true (the harness runs redis-server) or url (one already "
                                "running), not both")
    if redis.url and not redis.url.startswith(("redis://", "rediss://")):
        raise r.fail("[redis].url", f"expected redis://HOST:PORT/DB, got {redis.url!r}")
    if redis.enabled and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", redis.env):
        raise r.fail("[redis].env", f"expected an environment variable name, got {redis.env!r}")


def sink_address(sink: str) -> tuple[str, int]:
    """(host, port) of ``[agent] sink`` ("PORT" or "HOST:PORT"; port 0: any free one)."""
    host, _, port = sink.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--agent-sink {sink!r}: expected [HOST:]PORT, e.g. 9100 or 127.0.0.1:9100 "
                          "(0: any free port)")
    return host or "127.0.0.1", int(port)


def _require(r: _Reader, kw: dict, where: str, fields: dict[str, _Field]) -> dict:
    for key, spec in fields.items():
        if spec.attr not in kw:
            raise r.fail(f"{where}.{key}", f"missing; write it like `{spec.example}`")
    return kw


def _check_load(r: _Reader, load: LoadConfig, given: dict[str, Any]) -> None:
    if load.model == "closed":
        for attr, key in (("rate", "rate"), ("ramp_s", "ramp"), ("stages", "stages")):
            if given.get(attr):
                raise r.fail(f"[load].{key}", 'belongs to the open model; set model = "open" or remove it')
        if not load.loops and not load.duration_s:
            raise r.fail("[load]", 'a closed model needs loops or duration; write `loops = 100` or `duration = "30s"`')
    else:
        for attr, key in (
            ("users", "users"),
            ("loops", "loops"),
            ("ramp_up_s", "ramp_up"),
            ("think_time_s", "think_time"),
        ):
            if attr in given:
                raise r.fail(f"[load].{key}", 'belongs to the closed model; set model = "closed" or remove it')
        if load.stages:
            if "rate" in given or "duration_s" in given or "ramp_s" in given:
                raise r.fail("[load]", "give either [[load.stages]] or rate/ramp/duration, not both")
        else:
            if not load.rate:
                raise r.fail("[load].rate", "an open model needs an arrival rate; write `rate = 200` (req/s)")
            if not load.duration_s:
                raise r.fail("[load].duration", 'an open model needs a duration; write `duration = "30s"`')
            if load.ramp_s > load.duration_s:
                raise r.fail("[load].ramp", f"ramp ({load.ramp_s:g} s) is longer than duration ({load.duration_s:g} s)")
