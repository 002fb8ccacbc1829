"""The warehouse connection of the web app: a small pool, Core only.

Built on the pipeline's own engine settings (`order_pipeline.warehouse.engine`): the
psycopg2 driver for a bare `postgresql://` URL, sessions in UTC on PostgreSQL,
WAL on SQLite. Pages read in a read-only transaction of their own and leave
their audit row to the access-log writer (`audit.AccessLog`), so a long publish
never holds up a page view (see `reading`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from order_pipeline.warehouse import engine as warehouse

POOL_SIZE = 4
MAX_OVERFLOW = 4
# The warehouse's convention: naive timestamps (COPY) are UTC, so every session runs in UTC.
PG_SESSION_OPTIONS = "-c timezone=UTC"
# How long a write of the web app (an audit row, a carrier push) waits for the pipeline's
# SQLite write lock before giving up; reads never wait for it (WAL).
SQLITE_BUSY_TIMEOUT = 5.0


def make_engine(url: str, *, busy_timeout: float = SQLITE_BUSY_TIMEOUT) -> Engine:
    url = warehouse.driver_url(url)
    if sa.engine.make_url(url).get_backend_name() == "sqlite":
        engine = warehouse.create_engine(url)  # WAL, synchronous=NORMAL

        @event.listens_for(engine, "connect")
        def _busy_timeout(dbapi_conn, _):  # runs after the warehouse's own pragmas
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            cur.close()

        return engine
    return sa.create_engine(
        url,
        pool_size=POOL_SIZE,
        max_overflow=MAX_OVERFLOW,
        pool_timeout=10,
        pool_recycle=1800,
        pool_pre_ping=True,
        connect_args={"options": PG_SESSION_OPTIONS},
    )


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction: one consistent view of the published tables, no write lock taken.

    It is rolled back at the end; anything to record goes in a transaction of its own.
    """
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(postgresql_readonly=True)
        elif conn.dialect.name == "sqlite":
            # A deferred BEGIN: the selects share one snapshot; under WAL a writer never blocks it.
            conn.exec_driver_sql("BEGIN")
        try:
            yield conn
        finally:
            conn.rollback()
