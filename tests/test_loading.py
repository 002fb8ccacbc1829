"""Landing a source by high-water mark: same-instant updates, garbled marks, re-reads."""

from __future__ import annotations

import logging
import sqlite3

import pandas as pd
import pytest
import sqlalchemy as sa
from helpers import NOW, resolved, sources_company

from order_pipeline.contract.schema import BATCH, RAW_TABLES, pipeline_rejects
from order_pipeline.pipeline.loading import load_source
from order_pipeline.pipeline.reconcile import reconcile_source


@pytest.fixture
def setup(tmp_path):
    config, warehouse = sources_company(tmp_path)
    sc = config.sources["inventory"]
    return warehouse, sa.create_engine(resolved(sc.url)), sc, tmp_path / "inventory.db"


def stock(db, *rows):
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT OR REPLACE INTO inventory (sku, on_hand, reserved, safety_stock, updated_at) "
            "VALUES (?, ?, 0, 5, ?)",
            rows,
        )


def raw(engine) -> dict:
    t = RAW_TABLES["inventory"]
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(t.c.sku, t.c.on_hand)).all())


def test_an_update_at_the_same_instant_as_the_last_read_is_not_lost(setup):
    engine, src, sc, db = setup
    stock(db, ("A", 10, "2026-11-25 10:00:00"))
    load_source(engine, src, sc, NOW)
    with sqlite3.connect(db) as conn:  # same second, new value
        conn.execute("UPDATE inventory SET on_hand = 3 WHERE sku = 'A'")
    result = load_source(engine, src, sc, NOW)
    assert raw(engine) == {"A": 3.0} and result.loaded == 1


def test_rows_re_read_at_the_mark_unchanged_are_not_changes(setup):
    engine, src, sc, db = setup
    stock(db, ("A", 10, "2026-11-25 10:00:00"), ("B", 4, "2026-11-25 09:00:00"))
    load_source(engine, src, sc, NOW)
    result = load_source(engine, src, sc, NOW)
    assert result.read == 1 and result.loaded == 0


def test_a_garbled_timestamp_does_not_become_the_mark(setup):
    engine, src, sc, db = setup
    stock(db, ("A", 10, "2026-11-25 10:00:00"), ("BAD", 1, "2026-13-45 99:00"))
    first = load_source(engine, src, sc, NOW)
    assert first.rejected == 1
    stock(db, ("C", 7, "2026-11-25 10:05:00"))
    load_source(engine, src, sc, NOW)
    assert raw(engine) == {"A": 10.0, "C": 7.0}
    with engine.connect() as conn:
        reasons = conn.execute(sa.select(pipeline_rejects.c.record_key, pipeline_rejects.c.reason)).all()
    assert reasons == [("BAD", "unparseable updated_at")]


def test_newer_rows_only_after_the_first_load(setup):
    engine, src, sc, db = setup
    stock(db, ("A", 10, "2026-11-25 10:00:00"))
    load_source(engine, src, sc, NOW)
    stock(db, ("B", 2, "2026-11-25 10:01:00"))
    result = load_source(engine, src, sc, NOW)
    assert (result.read, result.loaded) == (2, 1)  # A at the mark re-read, unchanged; B new
    assert raw(engine) == {"A": 10.0, "B": 2.0}
    assert result.newest is not None
    assert pd.Timestamp(result.newest) == pd.Timestamp("2026-11-25 02:01:00", tz="UTC")


def rejects(engine) -> list[tuple[str, str]]:
    r = pipeline_rejects
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.select(r.c.record_key, r.c.reason).order_by(r.c.record_key))]


def keyless(db, on_hand: int, updated_at: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO inventory (sku, on_hand, reserved, safety_stock, updated_at) VALUES (NULL, ?, 0, 5, ?)",
            (on_hand, updated_at),
        )


def edit(db, sql: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(sql)


def test_a_keyless_row_touched_again_stays_one_reject(setup):
    engine, src, sc, db = setup
    keyless(db, 9, "2026-11-25 10:00:00")
    load_source(engine, src, sc, NOW)
    edit(db, "UPDATE inventory SET updated_at = '2026-11-25 11:00:00' WHERE sku IS NULL")
    load_source(engine, src, sc, NOW)
    assert [reason for _, reason in rejects(engine)] == ["missing sku"]


def test_a_keyless_row_once_its_key_is_filled_in_loses_its_reject(setup):
    engine, src, sc, db = setup
    keyless(db, 9, "2026-11-25 10:00:00")
    stock(db, ("A", 10, "2026-11-25 10:00:00"))
    load_source(engine, src, sc, NOW)
    assert len(rejects(engine)) == 1
    edit(db, "UPDATE inventory SET sku = 'K1', updated_at = '2026-11-25 11:00:00' WHERE sku IS NULL")
    load_source(engine, src, sc, NOW)  # incremental: reads the fixed row, and A at the mark
    assert rejects(engine) == []
    assert raw(engine) == {"A": 10.0, "K1": 9.0}


def test_a_full_load_settles_the_rejects_of_keyless_rows_no_longer_there(setup):
    """Rows edited while still keyless, or deleted: only a full read can tell they are gone."""
    engine, src, sc, db = setup
    keyless(db, 9, "2026-11-25 10:00:00")
    keyless(db, 4, "2026-11-25 10:00:00")
    load_source(engine, src, sc, NOW)
    edit(db, "UPDATE inventory SET on_hand = 8, updated_at = '2026-11-25 11:00:00' WHERE on_hand = 9")
    edit(db, "DELETE FROM inventory WHERE on_hand = 4")
    load_source(engine, src, sc, NOW)
    # An incremental read sees neither the deleted row nor the old version of the edited one go.
    assert len(rejects(engine)) == 3
    load_source(engine, src, sc, NOW, full=True)
    assert len(rejects(engine)) == 1  # the edited row, still keyless: one reject


def test_a_row_changed_with_an_older_updated_at_is_found_and_reloaded_by_reconciliation(setup, caplog):
    engine, src, sc, db = setup
    stock(db, ("A", 10, "2026-11-25 10:00:00"), ("B", 4, "2026-11-25 09:00:00"), ("C", 1, "2026-11-25 09:10:00"))
    load_source(engine, src, sc, NOW)
    with sqlite3.connect(db) as conn:  # B's count corrected by a job that kept a time before the last mark
        conn.execute("UPDATE inventory SET on_hand = 7, updated_at = '2026-11-25 09:30:00' WHERE sku = 'B'")
    load_source(engine, src, sc, NOW)
    assert raw(engine)["B"] == 4.0  # the incremental read cannot see it

    with caplog.at_level(logging.INFO, logger="order_pipeline"):
        result = reconcile_source(engine, src, sc, NOW)
    assert raw(engine) == {"A": 10.0, "B": 7.0, "C": 1.0}
    assert (result.compared, result.reloaded, result.only_in_warehouse) == (3, 1, 0)
    assert result.metadata["reconciled_rows"] == 1
    assert "reconciled inventory: 1 of 3 rows differed" in caplog.text
    t = RAW_TABLES["inventory"]
    with engine.connect() as conn:
        batches = dict(conn.execute(sa.select(t.c.sku, t.c[BATCH])).all())
    assert batches["B"] == result.batch and batches["A"] < batches["B"]  # only B is written again

    again = reconcile_source(engine, src, sc, NOW)
    assert (again.reloaded, again.buckets, again.batch) == (0, 0, None)
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM inventory WHERE sku = 'C'")
    gone = reconcile_source(engine, src, sc, NOW)
    assert (gone.reloaded, gone.only_in_warehouse) == (0, 1) and "C" in raw(engine)


def test_stored_values_of_every_kind_fingerprint_like_the_validated_source_rows(tmp_path, engine):
    """Times, dates, missing values and numbers as either warehouse gives them back hash as the source's do."""
    config, _ = sources_company(tmp_path)
    sc = config.sources["orders"]
    with sqlite3.connect(tmp_path / "orders.db") as conn:
        conn.executemany(
            "INSERT INTO orders (order_no, customer_name, customer_phone, customer_id_no, ship_address, amount,"
            " currency, ordered_at, promised_date, status, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    "SO1",
                    "张三",
                    "138",
                    None,
                    "上海",
                    "12.50",
                    "CNY",
                    "2026-11-24 09:00:00.123456",
                    "2026-11-30",
                    "open",
                    "2026-11-25 09:00:00",
                ),
                (
                    "SO2",
                    "李四",
                    "139",
                    "ID",
                    "北京",
                    0,
                    None,
                    "2026-11-24T10:00:00+08:00",
                    None,
                    "Cancelled",
                    "2026-11-25 09:05:00",
                ),
            ],
        )
    src = sa.create_engine(resolved(sc.url))
    load_source(engine, src, sc, NOW)
    assert reconcile_source(engine, src, sc, NOW).reloaded == 0


def test_an_order_line_changed_without_its_order_is_reloaded_by_reconciliation(tmp_path):
    config, engine = sources_company(tmp_path)
    sc = config.sources["order_lines"]
    with sqlite3.connect(tmp_path / "order_lines.db") as conn:
        conn.executemany("INSERT INTO order_lines VALUES (?, ?, ?, ?)", [("SO1", "K1", 1, 9.5), ("SO1", "K2", 2, 3)])
    src = sa.create_engine(resolved(sc.url))
    load_source(engine, src, sc, NOW)
    with sqlite3.connect(tmp_path / "order_lines.db") as conn:
        conn.execute("UPDATE order_lines SET qty = 5 WHERE sku = 'K2'")
    assert reconcile_source(engine, src, sc, NOW).reloaded == 1
    t = RAW_TABLES["order_lines"]
    with engine.connect() as conn:
        assert dict(conn.execute(sa.select(t.c.sku, t.c.qty)).all()) == {"K1": 1.0, "K2": 5.0}
