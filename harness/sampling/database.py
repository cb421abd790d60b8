"""The database server beside the app: reachability, and PostgreSQL's pg_stat_activity once a second."""

from __future__ import annotations

from typing import Any, Callable
from urllib.parse import urlsplit

from harness.errors import DatabaseError
from harness.records import DbSample
from harness.sampling.services import Watcher

STATES_SQL = (
    "SELECT coalesce(state, 'background'), CASE WHEN state = 'active' THEN coalesce(wait_event_type, 'CPU') END, "
    "count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() GROUP BY 1, 2"
)


def plain_dsn(url: str) -> str:
    """A libpq DSN from an SQLAlchemy URL (drops ``+asyncpg`` and the like)."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.split("+", 1)[0]
    return ("postgresql" if scheme == "postgres" else scheme) + sep + rest


def local_server(port: int) -> Callable[[], list[int]]:
    """A function listing the database server on this host that listens on ``port``: its main
    process and its children (PostgreSQL forks a backend per connection), re-listed on each call;
    empty when it listens elsewhere. The listener is looked up once (that reads every socket)."""
    import psutil

    try:
        owners = sorted({c.pid for c in psutil.net_connections(kind="tcp")
                         if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid})
    except psutil.Error:
        owners = []

    def pids() -> list[int]:
        out: list[int] = []
        for pid in owners:
            try:
                out += [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
            except psutil.Error:
                continue
        return out

    return pids


def db_port(url: str) -> int | None:
    """The TCP port of a database URL, if it has one (SQLite has none)."""
    try:
        parts = urlsplit(plain_dsn(url))
        return parts.port or ({"postgresql": 5432, "mysql": 3306}.get(parts.scheme))
    except ValueError:
        return None


def _connect(url: str) -> Any:  # a psycopg.Connection (psycopg is imported lazily)
    try:
        import psycopg
    except ImportError:
        raise DatabaseError("watching PostgreSQL needs psycopg: pip install 'fastapi-harness[postgres]'") from None
    try:
        return psycopg.connect(plain_dsn(url), connect_timeout=3, autocommit=True)
    except psycopg.Error as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatabaseError(
            f"cannot reach PostgreSQL at {url} ({first}); start it (e.g. `pg_ctlcluster 15 main start`, or "
            "`initdb -D DIR && pg_ctl -D DIR -o '-p PORT' start` as a non-root user) or fix [database] url"
        ) from None


def check_postgres(url: str) -> int:
    """Connect once; return max_connections. Raises DatabaseError naming the DSN when unreachable."""
    with _connect(url) as conn:
        return int(conn.execute("SHOW max_connections").fetchone()[0])


class PgWatcher(Watcher):
    """Once a second: connections by state for the app's database, against max_connections."""

    def __init__(self, url: str, t0: float, on_record: Callable[[DbSample], None]):
        super().__init__("PostgreSQL", t0)
        self.url, self.on_record = url, on_record
        self._conn: Any = None
        self._max = 0

    def poll(self, t: float) -> None:
        if self._conn is None:
            self._conn = _connect(self.url)
            self._max = int(self._conn.execute("SHOW max_connections").fetchone()[0])
        states: dict[str, int] = {}
        waits: dict[str, int] = {}
        for state, wait, n in self._conn.execute(STATES_SQL).fetchall():
            states[str(state)] = states.get(str(state), 0) + int(n)
            if wait is not None:
                waits[str(wait)] = int(n)
        self.on_record(DbSample(t, "postgres", states, sum(states.values()), self._max, waits))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
