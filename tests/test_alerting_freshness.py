"""Alerts beyond the order rules: a stale source or carrier feed."""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa
from helpers import (
    GROUPS,
    NOW,
    TZ,
    D,
    H,
    M,
    S,
    add_rows,
    ledger_row,
    make_config,
    outbox,
    publish_rows,
    resolved,
    sources_company,
    tick,
)

from order_pipeline.alerts.dispatch import Dispatcher, build_channels
from order_pipeline.alerts.evaluation import Alerting
from order_pipeline.alerts.freshness import source_ages
from order_pipeline.alerts.settings import CARRIER, SourceSla
from order_pipeline.contract.config import Secret, SourceConfig
from order_pipeline.contract.schema import BATCH, raw_tracking
from order_pipeline.pipeline.loading import load_source
from order_pipeline.pipeline.unify import unify
from order_pipeline.warehouse.state import set_state

# --- freshness ----------------------------------------------------------------------------------------------


def test_a_stale_source_alerts_the_data_owner_and_resolves_when_fresh(tmp_path, engine):
    config_sources = {"inventory": SourceConfig("inventory", Secret(value="sqlite://"), "inv", None, {}, TZ)}
    config = make_config(tmp_path, str(engine.url), **GROUPS)
    config = type(config)(**{**config.__dict__, "sources": config_sources})
    alerting = Alerting(config, engine)
    dispatcher = Dispatcher(engine, build_channels(alerting.settings, engine))
    publish_rows(engine, [])
    with engine.begin() as conn:
        set_state(conn, "watermark:inventory", (NOW - 30 * M).isoformat(), NOW)
    ev, _ = tick(alerting, dispatcher, NOW)  # exactly 30 minutes: still fresh
    assert [a.stale for a in ev.sources if a.source == "inventory"] == [False]
    assert outbox(engine).empty
    ev, _ = tick(alerting, dispatcher, NOW + S)
    sent = outbox(engine)
    assert sent["channel"].tolist() == ["data_box"]
    assert "inventory" in sent["title"].iloc[0] and "30分钟" in sent["body"].iloc[0]
    assert ledger_row(engine, "source_freshness", "raw_inventory")["scope"] == "source"
    with engine.begin() as conn:
        set_state(conn, "watermark:inventory", (NOW + M).isoformat(), NOW + M)
    tick(alerting, dispatcher, NOW + 2 * M)
    assert ledger_row(engine, "source_freshness", "raw_inventory")["resolved_at"] is not None
    resolved_note = outbox(engine).iloc[-1]
    assert resolved_note["title"] == "【已恢复】数据源不新鲜 inventory"
    assert "又有新数据了（最新 11-25 10:01）" in resolved_note["body"]  # what recovered, in business time
    assert "没有新数据" not in resolved_note["body"]  # not the stale alert's words


def test_the_carrier_feed_is_stale_only_while_a_parcel_waits_for_an_answer(engine):
    sla = SourceSla(CARRIER, 2 * H, ("data",))

    def carrier():
        with engine.connect() as conn:
            [age] = source_ages(conn, [sla], NOW)
        return age.stale, age.newest

    def shipment(order_no, waybill_no):
        return {
            "order_no": order_no,
            "waybill_no": waybill_no,
            "carrier_code": "shunfeng",
            "shipped_at": NOW - 5 * H,
            "updated_at": NOW - 5 * H,
        }

    def an_order(order_no, status):
        return {
            "order_no": order_no,
            "customer_name": "李四",
            "customer_phone": "13900000000",
            "ship_address": "上海",
            "amount": 10.0,
            "ordered_at": NOW - D,
            "status": status,
            "updated_at": NOW - H,
        }

    assert carrier() == (False, None)  # no parcel: nothing to wait for
    add_rows(engine, "shipments", [shipment("SO-1", "SF1")])
    assert carrier() == (False, None)  # a parcel of an order the ERP does not have waits for nothing
    add_rows(engine, "orders", [an_order("SO-1", "open")])
    assert carrier() == (True, None)  # shipped, never answered
    with engine.begin() as conn:
        conn.execute(
            raw_tracking.insert().values(waybill_no="SF1", is_signed=False, polled_at=NOW - 2 * H, **{BATCH: 1})
        )
    assert carrier() == (False, NOW - 2 * H)  # answered exactly the SLA ago
    with engine.begin() as conn:
        conn.execute(raw_tracking.update().values(polled_at=NOW - 2 * H - S))
    assert carrier() == (True, NOW - 2 * H - S)
    with engine.begin() as conn:
        conn.execute(raw_tracking.update().values(state=3))  # Kuaidi100's "signed", before `ischeck` says so
    assert carrier() == (False, NOW - 2 * H - S)
    add_rows(engine, "shipments", [shipment("SO-2", "SF2")])
    add_rows(engine, "orders", [an_order("SO-2", "cancelled")])
    assert carrier()[0] is False  # a cancelled order's parcel waits for nothing


def test_a_rejected_row_is_not_the_newest_data_of_its_source(tmp_path):
    """An orphan parcel (its order unknown) and a negative payment, both a minute old, over good rows 10 min old."""
    config, warehouse = sources_company(tmp_path)
    rows = {
        "orders": [
            "INSERT INTO orders (order_no, customer_name, customer_phone, ship_address, amount, ordered_at, status,"
            " updated_at) VALUES ('SO-1', '张三', '13800000000', '上海', 10, '2026-11-25 08:00:00', 'open',"
            " '2026-11-25 09:50:00')",
        ],
        "shipments": [
            "INSERT INTO shipments (order_no, waybill_no, carrier_code, shipped_at, updated_at) VALUES"
            " ('SO-1', 'SF1', 'shunfeng', '2026-11-25 09:50:00', '2026-11-25 09:50:00'),"
            " ('SO-GONE', 'SF9', 'shunfeng', '2026-11-25 09:59:00', '2026-11-25 09:59:00')",
        ],
        "payments": [
            "INSERT INTO payments (payment_id, order_no, amount, paid_at, status, updated_at) VALUES"
            " ('P1', 'SO-1', 10, '2026-11-25 09:50:00', 'paid', '2026-11-25 09:50:00'),"
            " ('P2', 'SO-1', -10, '2026-11-25 09:59:00', 'paid', '2026-11-25 09:59:00')",
        ],
    }
    for name, inserts in rows.items():
        with sqlite3.connect(tmp_path / f"{name}.db") as conn:
            for insert in inserts:
                conn.execute(insert)
        sc = config.sources[name]
        load_source(warehouse, sa.create_engine(resolved(sc.url)), sc, NOW)
    assert unify(warehouse, NOW).orphans == 1
    slas = [SourceSla(name, 5 * M, ("data",)) for name in ("shipments", "payments")]
    with warehouse.connect() as conn:
        ages = {a.source: (a.newest, a.stale) for a in source_ages(conn, slas, NOW)}
    assert ages == {"shipments": (NOW - 10 * M, True), "payments": (NOW - 10 * M, True)}
    with sqlite3.connect(tmp_path / "shipments.db") as conn:  # the parcel's order arrives: its row counts again
        conn.execute(
            "UPDATE shipments SET order_no = 'SO-1', updated_at = '2026-11-25 09:59:30' WHERE waybill_no = 'SF9'"
        )
    sc = config.sources["shipments"]
    load_source(warehouse, sa.create_engine(resolved(sc.url)), sc, NOW)
    unify(warehouse, NOW)
    with warehouse.connect() as conn:
        [age] = source_ages(conn, slas[:1], NOW)
    assert (age.newest, age.stale) == (NOW - 30 * S, False)
