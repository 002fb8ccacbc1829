"""Frames in and out of the warehouse: reads, bulk inserts, upserts and deletes by key."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

IN_CHUNK = 500  # keys per IN (...) list


WRITE_CHUNK = 100_000  # rows handed to the driver at a time


def read_frame(conn: sa.Connection, query: sa.Executable, datetime_cols: Iterable[str] = ()) -> pd.DataFrame:
    """Run a SELECT and read its rows straight from the driver cursor; parse timestamps vectorized.

    Skipping SQLAlchemy's per-row result processing is what keeps a 10M-row read in
    seconds rather than minutes.
    """
    result = conn.execute(query)  # SQLAlchemy binds the parameters the way it stores values
    names = list(result.keys())
    assert result.cursor is not None  # a SELECT always has a cursor to fetch from
    frame = pd.DataFrame.from_records(result.cursor.fetchall(), columns=names, coerce_float=True)
    result.close()
    for col in datetime_cols:
        frame[col] = pd.to_datetime(frame[col], utc=True, format="ISO8601")
    return frame


def read_keyed(
    conn: sa.Connection,
    query: sa.Select,
    column: sa.ColumnElement,
    keys: Sequence,
    datetime_cols: Iterable[str] = (),
) -> pd.DataFrame:
    """`query`'s rows whose `column` is one of `keys`, asked IN_CHUNK keys at a time (SQLite caps the
    bound parameters of a statement); no keys, no query: an empty frame with the query's columns."""
    parts = [
        read_frame(conn, query.where(column.in_(keys[i : i + IN_CHUNK])), datetime_cols)
        for i in range(0, len(keys), IN_CHUNK)
    ]
    if not parts:
        return pd.DataFrame(columns=[c.name for c in query.selected_columns])
    return pd.concat(parts, ignore_index=True)


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


def _driver_cursor(conn: sa.Connection):
    """The DB-API cursor under `conn`, for the bulk paths SQLAlchemy's row processing would slow down."""
    driver = conn.connection.driver_connection
    assert driver is not None  # an open connection always has its driver's
    return driver.cursor()


def insert_prepared(conn: sa.Connection, table: sa.Table, rows: PreparedRows) -> int:
    """Append prepared rows to `table`, or to a table with the same columns (a rebuild's fresh copy)."""
    if not rows.count:
        return 0
    cols = ", ".join(rows.columns)
    cur = _driver_cursor(conn)
    if isinstance(rows.payload, pd.DataFrame):  # SQLite: tuples from the frame
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
    cur = _driver_cursor(conn)
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
    return list(zip(*columns, strict=True))


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
            fields = [NULL if m else v for v, m in zip(data, missing, strict=True)]
        elif isinstance(kind, sa.Float):
            fields = [NULL if m else repr(float(v)) for v, m in zip(data, missing, strict=True)]
        elif isinstance(kind, (sa.Integer, sa.BigInteger)):
            fields = [NULL if m else str(v) for v, m in zip(data, missing, strict=True)]
        elif isinstance(kind, sa.Boolean):
            fields = [NULL if m else ("true" if v else "false") for v, m in zip(data, missing, strict=True)]
        else:
            fields = [
                # The class test is the fast path for text; pyright cannot narrow through it.
                NULL if m else '"' + (v if v.__class__ is str else str(v)).replace('"', '""') + '"'  # pyright: ignore[reportAttributeAccessIssue]
                for v, m in zip(data, missing, strict=True)
            ]
        columns.append(fields)
    return "\n".join(map(",".join, zip(*columns, strict=True))) + "\n"
