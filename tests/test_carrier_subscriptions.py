"""Subscription state per waybill in the warehouse: who is due, what an answer or a push leaves behind."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
import sqlalchemy as sa
from helpers import NOW, SALT, D, H, M, add_rows, answer_payload, md5_upper

from order_pipeline.carrier.protocol import PushUpdate
from order_pipeline.carrier.store import due_waybills
from order_pipeline.carrier.subscription import SubscribeAnswer, parse_subscribe_answer, verified_push
from order_pipeline.carrier.subscriptions import (
    SubscribeResult,
    due_subscriptions,
    month_of,
    record_push,
    record_subscribe_results,
)
from order_pipeline.contract.schema import BATCH, carrier_subscriptions, metadata, pipeline_rejects, raw_tracking
from order_pipeline.warehouse.engine import Warehouse


def erp_order(order_no: str, status: str = "open") -> dict:
    return {
        "order_no": order_no,
        "customer_name": "张三",
        "customer_phone": "13912345678",
        "ship_address": "上海市浦东新区张江路1号",
        "amount": 10.0,
        "ordered_at": NOW - 3 * D,
        "status": status,
        "updated_at": NOW - 3 * D,
    }


def shipment(order_no: str, waybill_no: str, carrier: str = "zhongtong", hours_ago: float = 5) -> dict:
    return {
        "order_no": order_no,
        "waybill_no": waybill_no,
        "carrier_code": carrier,
        "shipped_at": NOW - hours_ago * H,
        "updated_at": NOW - hours_ago * H,
    }


def answer(code: str, message: str = "") -> SubscribeAnswer:
    return parse_subscribe_answer({"result": code == "200", "returnCode": code, "message": message})


def record(engine: sa.Engine, now: datetime, *results: SubscribeResult):
    with engine.begin() as conn:
        return record_subscribe_results(conn, list(results), now)


def due(engine: sa.Engine, now: datetime = NOW, cap: int = 100) -> list[str]:
    with engine.connect() as conn:
        return due_subscriptions(conn, now, cap)["waybill_no"].tolist()


def row(engine: sa.Engine, waybill: str) -> dict:
    with engine.connect() as conn:
        found = conn.execute(sa.select(carrier_subscriptions).where(carrier_subscriptions.c.waybill_no == waybill))
        return dict(found.mappings().one())


def push(engine: sa.Engine, now: datetime, status: str, waybill: str = "ZT1", events=None, **body) -> str:
    events = [("2026-11-24 08:00:00", "已揽收")] if events is None else events
    last = answer_payload(data=[{"time": t, "context": c} for t, c in events]) | {"nu": waybill, "com": "zhongtong"}
    param = json.dumps({"status": status, "message": body.pop("message", ""), "lastResult": last, **body})
    update = verified_push({"param": param, "sign": md5_upper(param + SALT)}, SALT)
    with engine.begin() as conn:
        return record_push(conn, update, now)


@pytest.fixture
def shipped(engine: sa.Engine) -> sa.Engine:
    """Orders SO-1..SO-3 shipped as ZT1 (oldest), ZT2, ZT3."""
    add_rows(engine, "orders", [erp_order(f"SO-{i}") for i in (1, 2, 3)])
    add_rows(engine, "shipments", [shipment(f"SO-{i}", f"ZT{i}", hours_ago=10 - i) for i in (1, 2, 3)])
    return engine


def test_every_shipped_waybill_is_due_once_oldest_first_with_phone_and_destination(shipped):
    with shipped.connect() as conn:
        frame = due_subscriptions(conn, NOW, 2)
    assert frame["waybill_no"].tolist() == ["ZT1", "ZT2"]
    assert frame.iloc[0].to_dict() == {
        "waybill_no": "ZT1",
        "carrier_code": "zhongtong",
        "phone": "13912345678",
        "to": "上海市浦东新区张江路1号",
    }
    record(
        shipped,
        NOW,
        SubscribeResult("ZT1", "zhongtong", answer("200")),
        SubscribeResult("ZT2", "zhongtong", answer("501")),
    )
    assert due(shipped) == ["ZT3"]
    assert row(shipped, "ZT1")["state"] == "subscribed" and row(shipped, "ZT2")["state"] == "duplicate"


def test_orphan_rejected_cancelled_and_signed_waybills_are_neither_subscribed_nor_polled(shipped):
    add_rows(shipped, "shipments", [shipment("SO-404", "ZT404")])  # its order is not in the ERP
    add_rows(shipped, "orders", [erp_order("SO-9", status="cancelled")])
    add_rows(shipped, "shipments", [shipment("SO-9", "ZT9")])
    with shipped.begin() as conn:
        conn.execute(
            pipeline_rejects.insert().values(
                source="shipments",
                record_key="ZT3",
                reason="shipment for unknown order",
                raw_row="{}",
                first_seen=NOW,
                last_seen=NOW,
            )
        )
        conn.execute(raw_tracking.insert().values(waybill_no="ZT2", state=3, is_signed=False, **{BATCH: 1}))
    assert due(shipped) == ["ZT1"]
    with shipped.connect() as conn:
        assert due_waybills(conn, NOW, 2 * H, 10)["waybill_no"].tolist() == ["ZT1"]


def test_a_rejection_is_recorded_and_not_asked_again_until_the_carrier_code_changes(shipped):
    record(shipped, NOW, SubscribeResult("ZT1", "zhongtong", answer("700", "缺少手机号")))
    stored = row(shipped, "ZT1")
    assert stored["state"] == "rejected" and stored["return_code"] == "700"
    assert "缺少手机号" in stored["message"] and stored["attempts_this_month"] == 1
    assert "ZT1" not in due(shipped, NOW + 10 * D)
    with shipped.begin() as conn:
        conn.execute(sa.text("UPDATE raw_shipments SET carrier_code = 'yuantong' WHERE waybill_no = 'ZT1'"))
    assert "ZT1" in due(shipped, NOW + 1 * M)


def test_a_server_fault_backs_off_and_the_monthly_cap_ends_it(shipped):
    now, waits = NOW, []
    for _ in range(4):
        assert "ZT1" in due(shipped, now)
        record(shipped, now, SubscribeResult("ZT1", "zhongtong", answer("500", "服务器错误")))
        stored = row(shipped, "ZT1")
        assert stored["state"] == "pending" and "ZT1" not in due(shipped, now)
        wait = stored["next_attempt_at"].replace(tzinfo=now.tzinfo) - now
        waits.append(wait)
        now += wait
    assert waits == [30 * M, 60 * M, 120 * M, 240 * M]
    assert row(shipped, "ZT1")["attempts_this_month"] == 4
    assert "ZT1" not in due(shipped, now + 1 * D)  # the 5th this month would be refused
    next_month = datetime(2026, 11, 30, 16, 0, tzinfo=NOW.tzinfo)  # 1 December 00:00 in China
    assert month_of(next_month) == "2026-12" and month_of(next_month - 1 * M) == "2026-11"
    assert "ZT1" in due(shipped, next_month)
    record(shipped, next_month, SubscribeResult("ZT1", "zhongtong", answer("200")))
    assert row(shipped, "ZT1")["attempts_this_month"] == 1 and row(shipped, "ZT1")["month"] == "2026-12"


def test_no_answer_is_recorded_as_pending_with_its_reason(shipped):
    counts = record(shipped, NOW, SubscribeResult("ZT1", "zhongtong", None, "no answer within 10 s"))
    assert counts == {"error": 1}
    stored = row(shipped, "ZT1")
    assert stored["state"] == "pending" and stored["message"] == "no answer within 10 s"
    assert stored["return_code"] is None


def test_a_bad_key_leaves_the_waybill_as_it_was(shipped):
    counts = record(
        shipped,
        NOW,
        SubscribeResult("ZT1", "zhongtong", answer("600", "您不是合法的订阅者")),
        SubscribeResult("ZT2", "zhongtong", answer("601", "POLL:KEY已过期")),
    )
    assert counts == {"stop_key": 2}
    assert due(shipped) == ["ZT1", "ZT2", "ZT3"]


def test_an_abort_push_makes_the_waybill_due_again_after_30_minutes(shipped):
    record(shipped, NOW, SubscribeResult("ZT1", "zhongtong", answer("200")))
    assert push(shipped, NOW + 3 * D, "abort", events=[], message="3天查询无记录") == "aborted"
    stored = row(shipped, "ZT1")
    assert stored["message"] == "3天查询无记录" and stored["attempts_this_month"] == 1
    assert "ZT1" not in due(shipped, NOW + 3 * D + 29 * M)
    assert "ZT1" in due(shipped, NOW + 3 * D + 30 * M)


def test_pushes_track_shutdown_is_final_and_a_replay_changes_nothing(shipped):
    record(shipped, NOW, SubscribeResult("ZT1", "zhongtong", answer("200")))
    newer = [("2026-11-25 09:00:00", "派送中"), ("2026-11-24 08:00:00", "已揽收")]
    assert push(shipped, NOW + 1 * H, "polling", events=newer) == "subscribed"
    assert row(shipped, "ZT1")["last_push_at"].replace(tzinfo=NOW.tzinfo) == NOW + 1 * H
    # An older push delivered late: not news, and it must not move the state.
    assert push(shipped, NOW + 2 * H, "abort", events=[("2026-11-24 08:00:00", "已揽收")]) == "subscribed"
    assert row(shipped, "ZT1")["last_push_at"].replace(tzinfo=NOW.tzinfo) == NOW + 1 * H
    signed = [("2026-11-25 15:00:00", "已签收"), *newer]
    assert push(shipped, NOW + 5 * H, "shutdown", events=signed) == "finished"
    assert push(shipped, NOW + 6 * H, "updateall", events=signed) == "finished"
    assert "ZT1" not in due(shipped, NOW + 10 * D)


def test_a_corrected_carrier_code_is_adopted(shipped):
    record(shipped, NOW, SubscribeResult("ZT1", "zhongtong", answer("200")))
    # Kuaidi100 found the code wrong and subscribed the number under the right one itself.
    assert push(shipped, NOW + 3 * D, "abort", events=[], autoCheck="0", comOld="", comNew="yunda") == "subscribed"
    assert row(shipped, "ZT1")["carrier_code"] == "yunda"
    assert push(shipped, NOW + 4 * D, "polling", autoCheck="1", comOld="zhongtong", comNew="yunda") == "subscribed"
    assert row(shipped, "ZT1")["carrier_code"] == "yunda"


def test_a_push_for_a_waybill_never_subscribed_here_is_kept(shipped):
    update = PushUpdate("polling", "", None, waybill_no="ZT3", carrier_code="zhongtong")
    with shipped.begin() as conn:
        assert record_push(conn, update, NOW) == "subscribed"
    assert row(shipped, "ZT3")["attempts_this_month"] == 0 and "ZT3" not in due(shipped)


def test_an_existing_warehouse_gets_the_table_at_its_next_start(warehouse_url):
    wh = Warehouse(warehouse_url)
    others = [t for t in metadata.sorted_tables if t is not carrier_subscriptions]
    metadata.create_all(wh.engine, tables=others)  # a warehouse created before the table existed
    assert "carrier_subscriptions" not in sa.inspect(wh.engine).get_table_names()
    wh.create_schema()
    assert "carrier_subscriptions" in sa.inspect(wh.engine).get_table_names()
    wh.engine.dispose()
