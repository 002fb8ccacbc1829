"""Landing a source by high-water mark: same-instant updates, garbled marks, re-reads."""

from __future__ import annotations

import sqlite3

import pandas as pd
import pytest
import sqlalchemy as sa
from helpers import NOW, resolved, sources_company

from order_pipeline.contract.schema import RAW_TABLES, pipeline_rejects
from order_pipeline.pipeline.loading import load_source


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
