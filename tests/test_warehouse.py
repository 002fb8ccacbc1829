"""The warehouse engine: the bulk write paths (sqlite3 executemany, PostgreSQL COPY) keep every value as it was,
concurrent loads get their batch numbers in commit order, and an index whose columns changed is rebuilt."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from helpers import NOW

from order_pipeline.contract.schema import BATCH, raw_tracking
from order_pipeline.warehouse.engine import Warehouse, add_missing_columns, create_engine, rebuild_changed_indexes
from order_pipeline.warehouse.frames import insert_frame, read_frame
from order_pipeline.warehouse.state import next_batch

TEXTS = ['a "quoted", comma', "line\nbreak\r\n", "\\N", "back\\slash", "", None, "中文，地址", "  spaced  "]

values = sa.Table(
    "bulk_values",
    sa.MetaData(),
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("text", sa.Text),
    sa.Column("amount", sa.Float),
    sa.Column("count", sa.Integer),
    sa.Column("flag", sa.Boolean),
    sa.Column("at", sa.DateTime(timezone=True)),
    sa.Column("day", sa.Date),
)


def _frame() -> pd.DataFrame:
    n = len(TEXTS)
    return pd.DataFrame(
        {
            "id": range(n),
            "text": pd.Series(TEXTS, dtype=object),
            "amount": [np.nan, 1e20, 0.1, -2.5, 0.0, 3.0, 123456.789, np.nan],
            "count": pd.array([1, None, 3, 0, -7, 2**31 - 1, None, 5], dtype="Int64"),
            "flag": pd.array([True, False, None, True, False, True, None, False], dtype="boolean"),
            # pandas-stubs leave None out of the lists to_datetime takes; pandas reads it as NaT
            "at": pd.to_datetime(  # pyright: ignore[reportCallIssue]
                [  # pyright: ignore[reportArgumentType]
                    "2026-11-25 02:00:00.123456",
                    None,
                    "1999-12-31 23:59:59",
                    "2026-02-28 00:00:00",
                    "2026-11-25 02:00:00.000001",
                    None,
                    "2030-01-01 12:00:00",
                    "2026-11-25 10:00:00",
                ],
                utc=True,
                format="ISO8601",
            ),
            "day": pd.to_datetime(  # pyright: ignore[reportCallIssue]
                [  # pyright: ignore[reportArgumentType]
                    "2026-11-25",
                    None,
                    "2026-12-31",
                    "2026-02-28",
                    None,
                    "2026-01-01",
                    "2027-06-30",
                    "2026-11-26",
                ]
            ),
        }
    )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request, tmp_path):
    url = (
        f"sqlite:///{tmp_path / 'warehouse.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_database")()
    )
    engine = create_engine(url)
    values.create(engine)
    yield engine
    engine.dispose()


def test_bulk_insert_keeps_text_numbers_flags_and_times_exactly(engine):
    frame = _frame()
    with engine.begin() as conn:
        assert insert_frame(conn, values, frame) == len(frame)
    with engine.connect() as conn:
        back = read_frame(conn, sa.select(values).order_by(values.c.id), ["at"])
    # '\N' stays text, '' stays empty, None stays missing
    assert [None if pd.isna(v) else v for v in back["text"]] == TEXTS
    np.testing.assert_array_equal(back["amount"].to_numpy(dtype=float), frame["amount"].to_numpy(dtype=float))
    assert [None if pd.isna(v) else int(v) for v in back["count"]] == [
        None if pd.isna(v) else int(v) for v in frame["count"]
    ]
    assert [None if pd.isna(v) else bool(v) for v in back["flag"]] == [
        None if pd.isna(v) else bool(v) for v in frame["flag"]
    ]
    pd.testing.assert_series_equal(back["at"], frame["at"], check_dtype=False)
    days = [None if pd.isna(v) else pd.Timestamp(v).date() for v in back["day"]]
    assert days == [None if pd.isna(v) else v.date() for v in frame["day"]]


@pytest.mark.parametrize("earlier", [0, 1], ids=["first loads ever", "later loads"])
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_concurrent_loads_get_distinct_batches_in_commit_order(backend, earlier, tmp_path, request):
    """Two loads racing for a batch number: the second waits for the first to commit."""
    url = f"sqlite:///{tmp_path / 'wh.db'}" if backend == "sqlite" else request.getfixturevalue("pg_database")()
    wh = Warehouse(url)
    wh.create_schema()
    for _ in range(earlier):
        _take_batch(wh.engine)
    first = wh.engine.connect()
    first.begin()
    assert next_batch(first, NOW) == earlier + 1
    got = []
    second = threading.Thread(target=lambda: got.append(_take_batch(wh.engine)))
    second.start()
    second.join(timeout=0.5)
    assert second.is_alive()  # blocked behind the first load's open transaction
    first.commit()
    first.close()
    second.join(timeout=30)
    assert got == [earlier + 2]
    wh.engine.dispose()


def _take_batch(engine) -> int:
    with engine.begin() as conn:
        return next_batch(conn, NOW)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_an_index_whose_columns_changed_is_rebuilt_at_start(backend, tmp_path, request):
    """A warehouse from when the timeline's index covered every column gets the current index."""
    url = f"sqlite:///{tmp_path / 'wh.db'}" if backend == "sqlite" else request.getfixturevalue("pg_database")()
    wh = Warehouse(url)
    wh.create_schema()
    with wh.engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_events_order_time")
        conn.exec_driver_sql(
            "CREATE INDEX ix_events_order_time ON order_tracking_events "
            "(order_no, event_at, kind, stage, waybill_no, context, area)"
        )

    wh.create_schema()
    indexes = {ix["name"]: ix["column_names"] for ix in sa.inspect(wh.engine).get_indexes("order_tracking_events")}
    assert indexes["ix_events_order_time"] == ["order_no", "event_at"]
    assert rebuild_changed_indexes(wh.engine) == []  # once is enough
    wh.engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_column_added_since_the_warehouse_was_created_is_added_at_start(backend, tmp_path, request):
    """A warehouse from before the carrier's predicted arrival was stored keeps its rows and gains the column."""
    url = f"sqlite:///{tmp_path / 'wh.db'}" if backend == "sqlite" else request.getfixturevalue("pg_database")()
    wh = Warehouse(url)
    wh.create_schema()
    with wh.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE raw_tracking DROP COLUMN predicted_arrival")
        conn.exec_driver_sql(f"INSERT INTO raw_tracking (waybill_no, is_signed, {BATCH}) VALUES ('SF1', false, 1)")

    wh.create_schema()
    with wh.engine.connect() as conn:
        row = conn.execute(sa.select(raw_tracking.c.waybill_no, raw_tracking.c.predicted_arrival)).one()
    assert tuple(row) == ("SF1", None)
    assert add_missing_columns(wh.engine) == []  # once is enough
    wh.engine.dispose()
