"""The warehouse: one SQLAlchemy engine, the schema, and fast bulk paths.

Everything here runs unchanged on SQLite and PostgreSQL. Timestamps are UTC;
SQLite stores them as ISO text (the format SQLAlchemy itself uses), PostgreSQL as
`timestamptz`. Bulk writes go through the driver's fast path (sqlite3
`executemany`, psycopg2 `COPY`), because row-by-row ORM-style inserts would
dominate a full rebuild.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from order_pipeline.contract.schema import metadata, pipeline_rejects, pipeline_state

IN_CHUNK = 500  # keys per IN (...) list
WRITE_CHUNK = 100_000  # rows handed to the driver at a time


def driver_url(url: str) -> str:
    """SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the installed driver is psycopg2."""
    return (
        "postgresql+psycopg2://" + url.split("://", 1)[1] if url.startswith(("postgresql://", "postgres://")) else url
    )


SORT_THREADS = min(os.cpu_count() or 1, 4)


def create_engine(url: str) -> sa.Engine:
    url = driver_url(url)
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)  # the default lives under data_dir
        engine = sa.create_engine(url)

        @sa.event.listens_for(engine, "connect")
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
        rebuild_changed_indexes(self.engine)


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


# -- state: watermarks and the batch counter ---------------------------------------------


def get_state(conn: sa.Connection, key: str, default: str | None = None) -> str | None:
    value = conn.execute(sa.select(pipeline_state.c.value).where(pipeline_state.c.key == key)).scalar()
    return default if value is None else value


def set_state(conn: sa.Connection, key: str, value: str, now: datetime) -> None:
    conn.execute(pipeline_state.delete().where(pipeline_state.c.key == key))
    conn.execute(pipeline_state.insert().values(key=key, value=value, updated_at=now))


def next_batch(conn: sa.Connection, now: datetime) -> int:
    """A new load batch number, taken inside the transaction that writes the batch.

    One UPDATE takes the counter's row lock (SQLite: the write lock) until the caller
    commits, so concurrent loads get distinct numbers and commit in number order:
    `unified_orders` never sees batch N+1 before batch N. The counter row is created
    first if missing, with ON CONFLICT DO NOTHING: two first loads racing on PostgreSQL
    would otherwise both insert it, and one would fail.
    """
    s = pipeline_state
    dialect_insert = sqlite_insert if conn.dialect.name == "sqlite" else postgresql_insert
    conn.execute(dialect_insert(s).values(key="batch", value="0", updated_at=now).on_conflict_do_nothing())
    bumped = (
        s.update()
        .where(s.c.key == "batch")
        .values(value=sa.cast(sa.cast(s.c.value, sa.Integer) + 1, sa.Text), updated_at=now)
        .returning(s.c.value)
    )
    return int(conn.execute(bumped).scalar_one())


def current_batch(conn: sa.Connection) -> int:
    return int(get_state(conn, "batch", "0"))


# -- reading -----------------------------------------------------------------------------


def read_frame(conn: sa.Connection, query: sa.Executable, datetime_cols: Iterable[str] = ()) -> pd.DataFrame:
    """Run a SELECT and read its rows straight from the driver cursor; parse timestamps vectorized.

    Skipping SQLAlchemy's per-row result processing is what keeps a 10M-row read in
    seconds rather than minutes.
    """
    result = conn.execute(query)  # SQLAlchemy binds the parameters the way it stores values
    names = list(result.keys())
    frame = pd.DataFrame.from_records(result.cursor.fetchall(), columns=names, coerce_float=True)
    result.close()
    for col in datetime_cols:
        frame[col] = pd.to_datetime(frame[col], utc=True, format="ISO8601")
    return frame


# -- writing -----------------------------------------------------------------------------


@contextmanager
def rebuilding(conn: sa.Connection, *tables: sa.Table) -> Iterator[None]:
    """Empty tables for a full rebuild inside the caller's transaction; readers keep the old rows until commit.

    On SQLite the secondary indexes are dropped while rows go in and built once after,
    which beats updating them row by row; WAL readers are not disturbed. PostgreSQL keeps
    them (DROP INDEX would lock readers out for the whole rebuild) and gets fresh
    statistics instead: planned on an empty table's, the next incremental run's
    IN (subquery) joins go quadratic long before autovacuum notices.
    """
    sqlite = conn.dialect.name == "sqlite"
    for table in tables:
        conn.execute(table.delete())
        if sqlite:
            for index in table.indexes:
                index.drop(conn)
    yield
    for table in tables:
        if sqlite:
            for index in table.indexes:
                index.create(conn)
        else:
            conn.exec_driver_sql(f"ANALYZE {table.name}")


@contextmanager
def replacing(conn: sa.Connection, *tables: sa.Table) -> Iterator[dict[sa.Table, sa.Table]]:
    """Rebuild tables from scratch inside the caller's transaction; yields the table to fill for each.

    SQLite fills the tables themselves, as `rebuilding` empties them. PostgreSQL fills a
    fresh table without indexes for each and swaps it in at the end: rows go in without
    index upkeep, each index is then built in one sort, and the old rows leave with the
    old table instead of staying behind as dead rows. Readers keep reading the old table
    until the swap, and wait only for the swap itself. A table that a view or foreign key
    depends on, or that another role owns, is rebuilt in place instead.
    """
    fresh = {}
    if conn.dialect.name == "postgresql":
        fresh = {t: _fresh_copy(t) for t in tables if _swappable(conn, t)}
        for table in fresh.values():
            table.create(conn)
    with rebuilding(conn, *(t for t in tables if t not in fresh)):
        yield {t: fresh.get(t, t) for t in tables}
    if fresh:
        conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '256MB'")  # index sorts in memory
    for table, new in fresh.items():
        _swap_in(conn, table, new)


NEXT = "__next"  # suffix of a table (and its indexes) being rebuilt, until the swap


def _fresh_copy(table: sa.Table) -> sa.Table:
    return sa.Table(
        table.name + NEXT, sa.MetaData(), *(sa.Column(c.name, c.type, nullable=c.nullable) for c in table.columns)
    )


def _swappable(conn: sa.Connection, table: sa.Table) -> bool:
    """PostgreSQL: this role owns the table and nothing outside it depends on it (deptype 'n':
    a view's rule, another table's foreign key), so it may be dropped."""
    return bool(
        conn.execute(
            sa.text(
                "SELECT pg_get_userbyid(c.relowner) = current_user AND NOT EXISTS ("
                " SELECT 1 FROM pg_depend d WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = c.oid"
                " AND d.deptype = 'n') FROM pg_class c WHERE c.oid = to_regclass(:name)"
            ),
            {"name": table.name},
        ).scalar()
    )


def _swap_in(conn: sa.Connection, table: sa.Table, new: sa.Table) -> None:
    """Index the filled copy, give it the old table's grants, then drop the old table and take its names."""
    quote = conn.dialect.identifier_preparer.quote
    key = [c.name for c in table.primary_key.columns]
    if key:
        conn.exec_driver_sql(f"ALTER TABLE {new.name} ADD CONSTRAINT {new.name}_pkey PRIMARY KEY ({', '.join(key)})")
    for index in table.indexes:
        sa.Index(index.name + NEXT, *(new.c[c.name] for c in index.columns), unique=index.unique).create(conn)
    grants = conn.execute(
        sa.text(  # grantee 0 is PUBLIC
            "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END, a.privilege_type"
            " FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = to_regclass(:name) AND a.grantee <> c.relowner"
        ),
        {"name": table.name},
    ).all()
    for grantee, privilege in grants:
        conn.exec_driver_sql(f"GRANT {privilege} ON {new.name} TO {grantee if grantee == 'PUBLIC' else quote(grantee)}")
    conn.exec_driver_sql(f"DROP TABLE {table.name}")
    conn.exec_driver_sql(f"ALTER TABLE {new.name} RENAME TO {table.name}")
    if key:
        conn.exec_driver_sql(f"ALTER TABLE {table.name} RENAME CONSTRAINT {new.name}_pkey TO {table.name}_pkey")
    for index in table.indexes:
        conn.exec_driver_sql(f"ALTER INDEX {index.name + NEXT} RENAME TO {index.name}")
    conn.exec_driver_sql(f"ANALYZE {table.name}")


def insert_frame(conn: sa.Connection, table: sa.Table, frame: pd.DataFrame) -> int:
    """Append a DataFrame (columns named as the table's) through the driver's bulk path."""
    for part in _chunks(frame):
        insert_prepared(conn, table, prepare_rows(conn.dialect.name, table, part))
    return len(frame)


@dataclass(frozen=True)
class PreparedRows:
    """Rows made ready for the driver's bulk path, possibly in another process than the write.

    For PostgreSQL that is the COPY text: one string, cheap to pass between processes, and
    building it is most of the cost of a write. SQLite's driver takes Python tuples, which
    cost as much to pass between processes as to build, so the frame itself is kept.
    """

    columns: tuple[str, ...]
    payload: str | pd.DataFrame
    count: int


def prepare_rows(dialect: str, table: sa.Table, frame: pd.DataFrame) -> PreparedRows:
    cols = [c.name for c in table.columns if c.name in frame.columns]
    payload = _csv_rows(frame[cols], table) if dialect == "postgresql" and len(frame) else frame[cols]
    return PreparedRows(tuple(cols), payload, len(frame))


def insert_prepared(conn: sa.Connection, table: sa.Table, rows: PreparedRows) -> int:
    """Append prepared rows to `table`, or to a table with the same columns (a rebuild's fresh copy)."""
    if not rows.count:
        return 0
    cols = ", ".join(rows.columns)
    cur = conn.connection.driver_connection.cursor()
    if conn.dialect.name == "sqlite":
        cur.executemany(
            f"INSERT INTO {table.name} ({cols}) VALUES ({', '.join('?' * len(rows.columns))})",
            _sqlite_rows(rows.payload, table),
        )
    else:
        cur.copy_expert(
            f"COPY {table.name} ({cols}) FROM STDIN WITH (FORMAT csv, NULL '{NULL}')", io.StringIO(rows.payload)
        )
    cur.close()
    return rows.count


def _chunks(frame: pd.DataFrame) -> Iterator[pd.DataFrame]:
    """The frame WRITE_CHUNK rows at a time: the driver's copy of the rows (tuples, CSV text) stays
    that size, where converting 2M rows at once doubled a load's peak memory."""
    for start in range(0, len(frame), WRITE_CHUNK):
        yield frame.iloc[start : start + WRITE_CHUNK]


def replace_keys(conn: sa.Connection, table: sa.Table, frame: pd.DataFrame, key: Sequence[str]) -> int:
    """Upsert by key: each row of `frame` replaces the stored row with its key, or is added.

    Rows are updated in place (SQLite: one executemany; PostgreSQL: COPY into a temporary
    table, then one INSERT ... ON CONFLICT), not deleted and inserted again: a delete
    dirties a page of the table and of every index for each row, and at a few thousand
    rows spread over a million-row table those pages are the whole cost. `key` must be
    the table's primary key, and each key appears once in `frame`.
    """
    if frame.empty:
        return 0
    if frame.duplicated(list(key)).any():  # SQLite would keep the last silently, PostgreSQL refuse
        raise ValueError(f"replace_keys: duplicate {'/'.join(key)} in the rows for {table.name}")
    cols = [c.name for c in table.columns if c.name in frame.columns]
    if conn.dialect.name != "sqlite":
        staged = sa.Table(
            f"tmp_upsert_{table.name}",
            sa.MetaData(),
            *(sa.Column(c.name, c.type) for c in table.columns if c.name in cols),
            prefixes=["TEMPORARY"],
        )
        staged.create(conn)
        insert_frame(conn, staged, frame)
        upsert_select(conn, table, sa.select(*staged.c), key)
        staged.drop(conn)
        return len(frame)
    rest = [c for c in cols if c not in key]
    update = "DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in rest) if rest else "DO NOTHING"
    sql = (
        f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
        f"ON CONFLICT ({', '.join(key)}) {update}"
    )
    cur = conn.connection.driver_connection.cursor()
    for part in _chunks(frame[cols]):
        cur.executemany(sql, _sqlite_rows(part, table))
    cur.close()
    return len(frame)


def upsert_select(
    conn: sa.Connection, table: sa.Table, query: sa.Select, key: Sequence[str], skip_unchanged: bool = False
) -> int:
    """INSERT ... SELECT ... ON CONFLICT (key) DO UPDATE, which SQLite and PostgreSQL spell alike.

    Updating a row in place leaves the indexes of unchanged columns alone, where delete
    and insert rewrites every index entry. With `skip_unchanged`, a row equal to what is
    stored is not written at all. Returns the rows inserted or updated.
    """
    dialect_insert = sqlite_insert if conn.dialect.name == "sqlite" else postgresql_insert
    names = [c.name for c in query.selected_columns]
    # SQLite needs a WHERE in the SELECT of an upsert to parse it; `true` is dropped when one exists.
    stmt = dialect_insert(table).from_select(names, query.where(sa.true()))
    rest = [c for c in names if c not in key]
    if not rest:
        return conn.execute(stmt.on_conflict_do_nothing(index_elements=list(key))).rowcount
    changed = sa.or_(*(table.c[c].is_distinct_from(stmt.excluded[c]) for c in rest)) if skip_unchanged else None
    stmt = stmt.on_conflict_do_update(index_elements=list(key), set_={c: stmt.excluded[c] for c in rest}, where=changed)
    return conn.execute(stmt).rowcount


def delete_keys(conn: sa.Connection, table: sa.Table, keys: pd.DataFrame, key: Sequence[str]) -> None:
    """Delete the rows of `table` whose `key` columns match a row of `keys`.

    The keys go into a temporary table that one DELETE joins against, so a
    100k-key delete is one statement, not 100k.
    """
    if keys.empty:
        return
    tmp = f"tmp_keys_{table.name}"
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {tmp}")
    conn.exec_driver_sql(f"CREATE TEMPORARY TABLE {tmp} ({', '.join(f'{k} TEXT' for k in key)})")
    keys_table = sa.Table(tmp, sa.MetaData(), *(sa.Column(k, sa.Text) for k in key))
    insert_frame(conn, keys_table, keys[list(key)].astype(str))
    # A row-value IN lets both SQLite and PostgreSQL drive the delete from the (small) key set
    # through the table's primary key, instead of probing the key set once per table row.
    cols = ", ".join(key)
    conn.exec_driver_sql(f"DELETE FROM {table.name} WHERE ({cols}) IN (SELECT {cols} FROM {tmp})")
    conn.exec_driver_sql(f"DROP TABLE {tmp}")


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


def temporary_orders(conn: sa.Connection, name: str, query: sa.Select) -> sa.Table:
    """The order numbers `query` selects, kept in a temporary table for the rest of the transaction."""
    table = sa.Table(name, sa.MetaData(), sa.Column("order_no", sa.Text, primary_key=True), prefixes=["TEMPORARY"])
    table.create(conn)
    conn.execute(table.insert().from_select(["order_no"], query))
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"ANALYZE {name}")  # temporary tables get no autovacuum statistics
    return table


def record_rejects(conn: sa.Connection, source: str, rejects: pd.DataFrame, now: datetime) -> int:
    """Upsert rejects by (source, key, reason): a row that stays bad is one reject, with first and last seen."""
    if rejects.empty:
        return 0
    frame = rejects[["record_key", "reason", "raw_row"]].drop_duplicates(["record_key", "reason"]).copy()
    r = pipeline_rejects
    keys = frame["record_key"].unique().tolist()
    existing = pd.concat(
        [
            read_frame(  # in chunks: SQLite caps the number of bound parameters
                conn,
                sa.select(r.c.record_key, r.c.reason, r.c.first_seen)
                .where(r.c.source == source)
                .where(r.c.record_key.in_(keys[i : i + IN_CHUNK])),
                ["first_seen"],
            )
            for i in range(0, max(len(keys), 1), IN_CHUNK)
        ],
        ignore_index=True,
    )
    frame = frame.merge(existing, on=["record_key", "reason"], how="left")
    frame["first_seen"] = frame["first_seen"].fillna(pd.Timestamp(now))
    frame["last_seen"] = pd.Timestamp(now)
    frame["source"] = source
    replace_keys(conn, pipeline_rejects, frame, ["source", "record_key", "reason"])
    return len(frame)


def open_rejects(conn: sa.Connection, sources: Sequence[str]) -> dict[str, set[str]]:
    """The record keys each source has rejects open for."""
    r = pipeline_rejects
    rows = conn.execute(sa.select(r.c.source, r.c.record_key).where(r.c.source.in_(list(sources))))
    keys: dict[str, set[str]] = {source: set() for source in sources}
    for source, key in rows:
        keys[source].add(key)
    return keys


def clear_rejects(conn: sa.Connection, source: str, good_keys: pd.Series) -> None:
    """Rows that now arrive in good shape are no longer rejected.

    Only the source's open rejects are looked at, so a 2M-row load does not
    become a 2M-key delete.
    """
    open_keys = open_rejects(conn, [source])[source]
    settled = good_keys[good_keys.isin(open_keys)] if open_keys else good_keys.iloc[:0]
    if len(settled):
        keys = pd.DataFrame({"source": source, "record_key": settled.astype(str).to_numpy()}).drop_duplicates()
        delete_keys(conn, pipeline_rejects, keys, ["source", "record_key"])


def _timestamp_strings(col: pd.Series) -> pd.Series:
    """UTC timestamps as text in SQLAlchemy's SQLite format, 'YYYY-MM-DD HH:MM:SS.ffffff' (COPY reads it too)."""
    values = pd.to_datetime(col, utc=True).dt.tz_localize(None)
    text = np.datetime_as_string(values.to_numpy(dtype="datetime64[us]"), unit="us")
    # ISO 'T' to ' ' in place, on the fixed-width characters: no Python call per value.
    if len(text):
        text.view(np.uint32).reshape(len(text), -1)[:, 10] = ord(" ")
    return pd.Series(text, index=col.index, dtype=object).where(values.notna(), None)


def _date_strings(col: pd.Series) -> pd.Series:
    """Dates as 'YYYY-MM-DD' text, None where missing."""
    values = pd.to_datetime(col)
    if values.dt.tz is not None:
        values = values.dt.tz_localize(None)
    text = np.datetime_as_string(values.to_numpy(dtype="datetime64[D]"), unit="D")
    return pd.Series(text, index=col.index, dtype=object).where(values.notna(), None)


def _sqlite_rows(frame: pd.DataFrame, table: sa.Table) -> list[tuple]:
    """Rows as tuples of plain Python values (None for missing), built column by column."""
    columns = []
    for col in frame.columns:
        kind = table.c[col].type
        values = frame[col]
        if isinstance(kind, sa.DateTime):
            values = _timestamp_strings(values)
        elif isinstance(kind, sa.Date):
            values = _date_strings(values)
        missing = values.isna().to_numpy()
        data = values.to_numpy(dtype=object, copy=True)
        if missing.any():
            data[missing] = None
        columns.append(data.tolist())
    return list(zip(*columns))


NULL = "\\N"  # COPY's NULL marker; text is always quoted, so no text value reads as NULL


def _csv_rows(frame: pd.DataFrame, table: sa.Table) -> str:
    """The rows as COPY CSV text, built column by column with one Python pass per column.

    A fifth faster than pandas' to_csv on a typed copy of the frame, and every text value
    is quoted, so that none reads as the NULL marker: to_csv left a text '\\N' bare.
    """
    columns = []
    for col in frame.columns:
        kind = table.c[col].type
        values = frame[col]
        if isinstance(kind, sa.DateTime):
            values = _timestamp_strings(values)
        elif isinstance(kind, sa.Date):
            values = _date_strings(values)
        elif isinstance(kind, (sa.Integer, sa.BigInteger)):
            values = values.astype("Int64")  # 3.0 from a float column is written 3
        missing = values.isna().to_numpy().tolist()
        data = values.to_numpy(dtype=object).tolist()
        if isinstance(kind, (sa.DateTime, sa.Date)):  # digits and separators: nothing to quote
            fields = [NULL if m else v for v, m in zip(data, missing)]
        elif isinstance(kind, sa.Float):
            fields = [NULL if m else repr(float(v)) for v, m in zip(data, missing)]
        elif isinstance(kind, (sa.Integer, sa.BigInteger)):
            fields = [NULL if m else str(v) for v, m in zip(data, missing)]
        elif isinstance(kind, sa.Boolean):
            fields = [NULL if m else ("true" if v else "false") for v, m in zip(data, missing)]
        else:
            fields = [
                NULL if m else '"' + (v if v.__class__ is str else str(v)).replace('"', '""') + '"'
                for v, m in zip(data, missing)
            ]
        columns.append(fields)
    return "\n".join(map(",".join, zip(*columns))) + "\n"
