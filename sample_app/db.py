"""The sample app's database: SQLAlchemy 2 async, SQLite (aiosqlite) by default, PostgreSQL (asyncpg) on request.

Environment:
    SAMPLE_APP_DATABASE_URL   e.g. postgresql+asyncpg://user@127.0.0.1:5432/app
                              (default: a SQLite file in the run directory, or in the system's temp dir)
    SAMPLE_APP_POOL_SIZE      pool size (default 5)
    SAMPLE_APP_MAX_OVERFLOW   connections allowed beyond the pool (default 0)
    SAMPLE_APP_POOL_TIMEOUT   seconds to wait for a connection before failing (default 30)

The same settings make a second, synchronous engine (sqlite3 or psycopg) for the ``def`` endpoints.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sqlalchemy import Engine, Integer, String, create_engine, func, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SEED_ROWS = 100
EVENT_ROWS = 50_000


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))


class Event(Base):
    """A table searched by a column without an index: every such query reads all of it."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    payload: Mapped[str] = mapped_column(String(64))


def database_url() -> str:
    url = os.environ.get("SAMPLE_APP_DATABASE_URL")
    if url:
        return url
    folder = Path(os.environ.get("FASTAPI_HARNESS_RUN_DIR") or tempfile.gettempdir())
    return f"sqlite+aiosqlite:///{(folder / 'sample_app.db').resolve()}"


def _pool_settings(url: str) -> dict:
    kwargs: dict = {
        "pool_size": int(os.environ.get("SAMPLE_APP_POOL_SIZE", "5")),
        "max_overflow": int(os.environ.get("SAMPLE_APP_MAX_OVERFLOW", "0")),
        "pool_timeout": float(os.environ.get("SAMPLE_APP_POOL_TIMEOUT", "30")),
    }
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    return kwargs


def make_engine() -> AsyncEngine:
    url = database_url()
    return create_async_engine(url, **_pool_settings(url))


def make_sync_engine() -> Engine:
    """The same database through a synchronous driver (for ``def`` endpoints and dependencies)."""
    url = database_url().replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")
    return create_engine(url, **_pool_settings(url))


async def create_schema(engine: AsyncEngine) -> None:
    """Create and seed the items table once (several workers may race here)."""
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: Base.metadata.create_all(c, checkfirst=True))
    except (OperationalError, ProgrammingError) as e:
        if "already exists" not in str(e):
            raise
        # another worker created it between the check and the CREATE
    try:
        async with engine.begin() as conn:
            if not (await conn.execute(select(func.count()).select_from(Item))).scalar_one():
                await conn.execute(insert(Item), [{"id": i, "name": f"item-{i}"} for i in range(1, SEED_ROWS + 1)])
            if not (await conn.execute(select(func.count()).select_from(Event))).scalar_one():
                await conn.execute(insert(Event), [{"id": i, "kind": ("click", "view", "buy")[i % 3],
                                                    "payload": f"user-{i % 9973}-session-{i}"}
                                                   for i in range(1, EVENT_ROWS + 1)])
    except IntegrityError:
        pass  # another worker seeded it first (the same rows, by primary key)
