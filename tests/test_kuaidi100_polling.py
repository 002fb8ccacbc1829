"""Polling Kuaidi100 for the due waybills: which are due, storing answers as they come, stopping when it is down."""

from __future__ import annotations

from helpers import NOW, D, H, add_rows

from order_pipeline.carrier.store import due_waybills


def an_order(order_no: str) -> dict:
    return {
        "order_no": order_no,
        "customer_name": "张三",
        "customer_phone": "13800000000",
        "ship_address": "上海",
        "amount": 10.0,
        "ordered_at": NOW - D,
        "status": "open",
        "updated_at": NOW - D,
    }


def a_shipment(order_no: str, waybill_no: str, hours_ago: float = 5) -> dict:
    return {
        "order_no": order_no,
        "waybill_no": waybill_no,
        "carrier_code": "yuantong",
        "shipped_at": NOW - hours_ago * H,
        "updated_at": NOW - hours_ago * H,
    }


def test_a_parcel_of_an_order_the_erp_does_not_have_is_not_polled(engine):
    add_rows(engine, "orders", [an_order("SO-1")])
    add_rows(engine, "shipments", [a_shipment("SO-1", "YT1"), a_shipment("SO-GONE", "YT9", hours_ago=6)])
    with engine.connect() as conn:
        due = due_waybills(conn, NOW, 2 * H, 10)
    assert due["waybill_no"].tolist() == ["YT1"]
