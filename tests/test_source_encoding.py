"""A source row holding bytes that are not UTF-8: that row rejected with its bytes shown, the rest loaded."""

from __future__ import annotations

import sqlite3
from datetime import timedelta

import dagster as dg
import pytest
import sqlalchemy as sa
from helpers import NOW, local, materialization_metadata, published, resolved, run_at, sources_company, warehouse_of

from order_pipeline.contract.config import load_config
from order_pipeline.contract.schema import RAW_TABLES, pipeline_rejects
from order_pipeline.pipeline.loading import load_source
from order_pipeline.sources import engines

BAD = "SO-BAD"


@pytest.fixture
def erp(tmp_path):
    """A warehouse, the ERP orders source through the pipeline's own source engine, and the source's file."""
    config, warehouse = sources_company(tmp_path)
    sc = config.sources["orders"]
    yield warehouse, engines.source_engine(resolved(sc.url)), sc, tmp_path / "orders.db"
    engines.dispose_all()
    warehouse.dispose()


def put_orders(db, version: int, numbers: range) -> None:
    """Orders `numbers` at `version` of their amount and update time (the source table has no key: replaced here)."""
    with sqlite3.connect(db) as conn:
        conn.executemany("DELETE FROM orders WHERE order_no = ?", [(f"SO-{n}",) for n in numbers])
        conn.executemany(
            "INSERT INTO orders (order_no, customer_name, customer_phone, ship_address, amount,"
            " ordered_at, status, updated_at) VALUES (?, ?, '13800000000', 'Road 1', ?, '2026-11-20 09:00:00',"
            " 'open', ?)",
            [(f"SO-{n}", f"Customer {n}", 100 + version, f"2026-11-2{version} 10:00:00") for n in numbers],
        )


def put_name(db, name: bytes | str, updated_at: str) -> None:
    """The order `BAD` with `name` as its customer: bytes land as TEXT, whatever they are."""
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM orders WHERE order_no = ?", (BAD,))
        conn.execute(
            "INSERT INTO orders (order_no, customer_name, customer_phone, ship_address, amount,"
            " ordered_at, status, updated_at) VALUES (?, CAST(? AS TEXT), '13800000000', 'Road 1', 5,"
            " '2026-11-20 09:00:00', 'open', ?)",
            (BAD, name, updated_at),
        )


def amounts(engine) -> dict:
    t = RAW_TABLES["orders"]
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(t.c.order_no, t.c.amount)).all())


def rejects(engine) -> list:
    r = pipeline_rejects
    with engine.connect() as conn:
        return conn.execute(sa.select(r.c.source, r.c.record_key, r.c.reason, r.c.raw_row, r.c.first_seen)).all()


@pytest.fixture
def changed_with_bad_byte(erp):
    """20 orders loaded, then all 20 changed and one more order whose customer name has bytes b'\\xff\\xfe'."""
    engine, src, sc, db = erp
    put_orders(db, 1, range(20))
    assert load_source(engine, src, sc, NOW).loaded == 20
    put_orders(db, 2, range(20))
    put_name(db, b"Bad\xff\xfe", "2026-11-22 10:00:00")
    return erp


def test_the_row_is_not_utf8_to_a_plain_sqlite_read(changed_with_bad_byte):
    *_, db = changed_with_bad_byte
    with sqlite3.connect(db) as conn, pytest.raises(sqlite3.OperationalError, match="Could not decode to UTF-8"):
        conn.execute("SELECT customer_name FROM orders").fetchall()


def test_a_row_with_bytes_not_utf8_is_rejected_and_the_rest_loads(changed_with_bad_byte):
    engine, src, sc, _ = changed_with_bad_byte
    result = load_source(engine, src, sc, NOW)
    assert (result.read, result.loaded, result.rejected) == (21, 20, 1)
    assert amounts(engine) == {f"SO-{n}": 102.0 for n in range(20)}
    [(source, key, reason, raw_row, _)] = rejects(engine)
    assert (source, key) == ("orders", BAD)
    assert reason == r"customer_name is not valid UTF-8: Bad\xff\xfe"
    assert r'"customer_name": "Bad\\xff\\xfe"' in raw_row


def test_an_unchanged_bad_row_stays_one_reject(changed_with_bad_byte):
    engine, src, sc, _ = changed_with_bad_byte
    load_source(engine, src, sc, NOW)
    first = rejects(engine)
    again = load_source(engine, src, sc, NOW.replace(hour=NOW.hour + 1))
    assert again.loaded == 0
    assert [r[:4] for r in rejects(engine)] == [r[:4] for r in first] and rejects(engine)[0][4] == first[0][4]


def test_fixing_the_row_clears_its_reject(changed_with_bad_byte):
    engine, src, sc, db = changed_with_bad_byte
    load_source(engine, src, sc, NOW)
    put_name(db, "Good Name", "2026-11-23 10:00:00")
    result = load_source(engine, src, sc, NOW)
    assert (result.loaded, result.rejected) == (1, 0)
    assert rejects(engine) == [] and amounts(engine)[BAD] == 5.0


def test_text_without_bad_bytes_reads_as_before(erp):
    engine, src, sc, db = erp
    put_orders(db, 1, range(3))
    put_name(db, "Zhāng 张三", "2026-11-21 10:00:00")
    assert load_source(engine, src, sc, NOW).loaded == 4
    with engine.connect() as conn:
        t = RAW_TABLES["orders"]
        assert conn.execute(sa.select(t.c.customer_name).where(t.c.order_no == BAD)).scalar() == "Zhāng 张三"


def test_the_pipeline_runs_past_a_bad_byte_and_publishes_none(materialized_company):
    """Through the whole run: raw_orders lands the changed orders, and no table but the rejects' raw row
    holds the bytes (escaped there)."""
    config = load_config(materialized_company / "order_pipeline.yaml")
    later = NOW + timedelta(hours=1)
    engine = sa.create_engine(warehouse_of(config))
    with engine.connect() as conn:  # orders that loaded well before
        t = RAW_TABLES["orders"]
        numbers = list(conn.execute(sa.select(t.c.order_no).order_by(t.c.order_no).limit(21)).scalars())
    with sqlite3.connect(materialized_company / "erp.db") as conn:
        bad, changed = numbers[0], numbers[1:]
        conn.executemany(
            "UPDATE T_SAL_ORDER SET FAddress = FAddress || ' 2', FModifyDate = ? WHERE FBillNo = ?",
            [(local(later - timedelta(minutes=5)), n) for n in changed],
        )
        conn.execute(
            "UPDATE T_SAL_ORDER SET FCustName = CAST(? AS TEXT), FModifyDate = ? WHERE FBillNo = ?",
            (b"Bad\xff\xfe", local(later - timedelta(minutes=5)), bad),
        )
    instance = dg.DagsterInstance.ephemeral()
    run_at(config, later, instance=instance)
    try:
        assert materialization_metadata(instance, "raw_orders")["rows_loaded"] == 20
        [(key, reason, raw_row)] = [r[1:4] for r in rejects(engine) if "UTF-8" in r[2]]
        assert (key, reason) == (bad, r"customer_name is not valid UTF-8: Bad\xff\xfe")
        assert r'"FCustName": "Bad\\xff\\xfe"' in raw_row
        t = RAW_TABLES["orders"]
        with engine.connect() as conn:
            addresses = dict(
                conn.execute(sa.select(t.c.order_no, t.c.ship_address).where(t.c.order_no.in_(changed))).all()
            )
        assert len(addresses) == 20 and all(a.endswith(" 2") for a in addresses.values())
        for name, frame in published(engine).items():
            text = frame.select_dtypes(exclude="number").astype(str)
            assert not text.apply(lambda c: c.str.contains("[\udc80-\udcff]|Bad", regex=True)).any().any(), name
    finally:
        engine.dispose()
