"""The warehouse: one SQLAlchemy engine, the schema, and fast bulk paths.

Everything here runs unchanged on SQLite and PostgreSQL. Timestamps are UTC;
SQLite stores them as ISO text (the format SQLAlchemy itself uses), PostgreSQL as
`timestamptz`. Bulk writes go through the driver's fast path (sqlite3
`executemany`, psycopg2 `COPY`), because row-by-row ORM-style inserts would
dominate a full rebuild.
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event

from order_pipeline.contract.config import driver_url
from order_pipeline.contract.schema import metadata

SORT_THREADS = min(os.cpu_count() or 1, 4)


class WarehouseUnreachable(RuntimeError):
    """The warehouse cannot be connected to: one message naming where its URL is set."""

    def __init__(self, url: str, entry: str, error: Exception):
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        shown = sa.make_url(driver_url(url)).render_as_string() if url else "(no URL)"
        super().__init__(
            f"the warehouse {shown} cannot be reached: {reason}. Fix: start that database, or correct {entry}"
        )


def create_engine(url: str) -> sa.Engine:
    url = driver_url(url)
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)  # the default lives under data_dir
        engine = sa.create_engine(url)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _):
            # WAL lets the tracking page read while a run publishes.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            # A full load of millions of rows holds the write lock for a while; the loads the
            # multiprocess executor runs beside it wait for it rather than fail.
            cur.execute("PRAGMA busy_timeout=120000")
            # Debian builds SQLite with secure_delete on: every freed page is zero-filled and
            # written, which made emptying the 10M-row timeline for a rebuild take 4-8 s instead
            # of 0.7 s. FAST still clears deleted content on every page it writes anyway.
            cur.execute("PRAGMA secure_delete=FAST")
            # Helper threads for the sorts behind CREATE INDEX: building the timeline's index after
            # a rebuild took 9-10 s instead of 13-17 s at 1M orders on two cores.
            cur.execute(f"PRAGMA threads={SORT_THREADS}")
            cur.close()

        return engine
    # Naive timestamps written by COPY are UTC, like everything in the warehouse.
    return sa.create_engine(url, pool_pre_ping=True, connect_args={"options": "-c timezone=UTC"})


class Warehouse:
    """The target database: an engine and its schema. The functions below take a connection."""

    def __init__(self, url: str):
        self.url = url
        self.engine = create_engine(url)

    def create_schema(self) -> None:
        metadata.create_all(self.engine)
        add_missing_columns(self.engine)
        rebuild_changed_indexes(self.engine)


def add_missing_columns(engine: sa.Engine) -> list[str]:
    """Add the nullable columns a table of an earlier version lacks: create_all leaves existing tables alone.

    New columns are nullable by design, so the rows already there stay valid and the next run fills them.
    """
    inspector = sa.inspect(engine)
    added = []
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            if not inspector.has_table(table.name):
                continue
            existing = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in existing and column.nullable:
                    kind = column.type.compile(dialect=conn.dialect)
                    conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')
                    added.append(f"{table.name}.{column.name}")
    return added


def rebuild_changed_indexes(engine: sa.Engine) -> list[str]:
    """Rebuild each index whose columns differ from the schema's: create_all only adds what is missing.

    A warehouse created by an earlier version keeps working either way; this brings it the
    current indexes once, at the next start.
    """
    inspector = sa.inspect(engine)
    rebuilt = []
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            existing = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes(table.name)}
            for index in table.indexes:
                if index.name in existing and existing[index.name] != [c.name for c in index.columns]:
                    index.drop(conn)
                    index.create(conn)
                    rebuilt.append(index.name)
    return rebuilt


def prefer_index_lookups(conn: sa.Connection) -> None:
    """PostgreSQL, for the rest of the transaction: plan random page reads at SSD cost, not disk.

    An incremental run reads the rows of a few thousand orders out of millions. Planned with
    the default `random_page_cost` of 4 (spinning disks), PostgreSQL reads whole raw tables and
    hashes them instead of following their order_no indexes: the reservations of 10,000
    orders took 0.36 s instead of 0.07 s at 1M orders. SET LOCAL ends with the transaction,
    so a full rebuild, which does read whole tables, plans as before.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL random_page_cost = 1.1")


def temporary_orders(conn: sa.Connection, name: str, query: sa.Select | sa.CompoundSelect) -> sa.Table:
    """The order numbers `query` selects, kept in a temporary table for the rest of the transaction."""
    table = sa.Table(name, sa.MetaData(), sa.Column("order_no", sa.Text, primary_key=True), prefixes=["TEMPORARY"])
    table.create(conn)
    conn.execute(table.insert().from_select(["order_no"], query))
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"ANALYZE {name}")  # temporary tables get no autovacuum statistics
    return table
