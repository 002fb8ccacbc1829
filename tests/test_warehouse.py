"""The warehouse's bulk write paths (sqlite3 executemany, PostgreSQL COPY) keep every value as it was."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from order_pipeline.warehouse.engine import create_engine, insert_frame, read_frame

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
            "at": pd.to_datetime(
                [
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
            "day": pd.to_datetime(
                ["2026-11-25", None, "2026-12-31", "2026-02-28", None, "2026-01-01", "2027-06-30", "2026-11-26"]
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
