"""SLA rules: the four defaults at their boundaries (pinned clock, SQLite and PostgreSQL), and a configured rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from helpers import NOW, TZ, add_rows, order, publish_rows

from order_pipeline.alerts.rules.model import FieldRef
from order_pipeline.alerts.rules.parser import default_rules, parse_rules
from order_pipeline.alerts.rules.sql import count_and_sample, evaluate
from order_pipeline.contract.schema import unified_orders

H, S, D = timedelta(hours=1), timedelta(seconds=1), timedelta(days=1)


def stock(sku: str, on_hand: float, reserved: float, safety: float) -> dict:
    return {"sku": sku, "on_hand": on_hand, "reserved": reserved, "safety_stock": safety, "updated_at": NOW}


def breaching(engine, rule_id: str, now: datetime = NOW, rules=None) -> list[str]:
    rules = rules or default_rules()
    with engine.connect() as conn:
        found = evaluate(conn, [r for r in rules if r.id == rule_id], now, TZ)
    return sorted(found[rule_id].rows["entity_key"])


# --- the defaults are the seed's rules --------------------------------------------------------------


def test_defaults_are_the_four_rules_of_the_design():
    rules = {r.id: r for r in default_rules()}
    assert list(rules) == ["paid_not_locked", "stock_below_safety", "stuck_parcel", "promise_due_not_shipped"]
    assert rules["paid_not_locked"].notify == ("warehouse",)
    assert rules["paid_not_locked"].condition_text == "stage eq paid and paid_at older_than 2h"
    assert rules["stock_below_safety"].scope == "sku" and rules["stock_below_safety"].notify == ("purchasing",)
    assert any(c.value == FieldRef("safety_stock") for c in rules["stock_below_safety"].conditions)
    assert rules["stuck_parcel"].notify == ("customer_service",) and rules["stuck_parcel"].risk == "high"
    assert "last_carrier_update_at older_than 48h" in rules["stuck_parcel"].condition_text
    assert rules["promise_due_not_shipped"].notify == ("ops_lead",)
    assert "promised_date within_next 1d" in rules["promise_due_not_shipped"].condition_text


# --- rule 1: paid more than 2 h ago and stock not locked ----------------------------------------------


def test_paid_not_locked_fires_only_after_more_than_two_hours(engine):
    publish_rows(
        engine,
        [
            order("A-exactly-2h", "paid", paid_at=NOW - 2 * H),
            order("B-2h-and-1s", "paid", paid_at=NOW - 2 * H - S),
            order("C-locked", "locked", paid_at=NOW - 5 * H, locked_at=NOW - 4 * H),
            order("D-unpaid", "ordered", ordered_at=NOW - 9 * H),
            order("E-cancelled", "cancelled", paid_at=NOW - 9 * H),
        ],
    )
    assert breaching(engine, "paid_not_locked") == ["B-2h-and-1s"]
    # One second later the first one is due too.
    assert breaching(engine, "paid_not_locked", NOW + S) == ["A-exactly-2h", "B-2h-and-1s"]


# --- rule 3: shipped, not delivered, no carrier update for 48 h ---------------------------------------


def test_stuck_parcel_counts_from_the_last_carrier_update_or_the_shipment(engine):
    publish_rows(
        engine,
        [
            order("A-event-48h", "in_transit", shipped_at=NOW - 60 * H, latest_event_at=NOW - 48 * H, parcel_count=1),
            order(
                "B-event-48h-1s",
                "in_transit",
                shipped_at=NOW - 60 * H,
                latest_event_at=NOW - 48 * H - S,
                parcel_count=1,
            ),
            order("C-no-event", "shipped", shipped_at=NOW - 48 * H - S, parcel_count=1),
            order("D-no-event-fresh", "shipped", shipped_at=NOW - 47 * H, parcel_count=1),
            order(
                "E-delivered",
                "delivered",
                shipped_at=NOW - 90 * H,
                latest_event_at=NOW - 80 * H,
                delivered_at=NOW - 80 * H,
                parcel_count=1,
                parcels_signed=1,
            ),
            order("F-exception", "exception", shipped_at=NOW - 90 * H, latest_event_at=NOW - 50 * H, parcel_count=1),
            order("G-recent-event", "in_transit", shipped_at=NOW - 90 * H, latest_event_at=NOW - H, parcel_count=1),
        ],
    )
    assert breaching(engine, "stuck_parcel") == ["B-event-48h-1s", "C-no-event", "F-exception"]


# --- rule 4: promised delivery within one day and not shipped --------------------------------------


def test_promise_within_one_day_in_the_business_calendar(engine):
    today = NOW.astimezone(ZoneInfo(TZ)).date()  # 2026-11-25 in Shanghai
    publish_rows(
        engine,
        [
            order("A-today", "locked", promised_date=today, locked_at=NOW - H),
            order("B-tomorrow", "paid", promised_date=today + D, paid_at=NOW - H),
            order("C-in-two-days", "ordered", promised_date=today + 2 * D),
            order("D-overdue", "ordered", promised_date=today - D),
            order("E-shipped", "shipped", promised_date=today, shipped_at=NOW - H, parcel_count=1),
            order("F-no-promise", "ordered"),
            order("G-cancelled", "cancelled", promised_date=today),
        ],
    )
    assert breaching(engine, "promise_due_not_shipped") == ["A-today", "B-tomorrow", "D-overdue"]
    # "Today" is the Shanghai date: at 23:59:59 local it is still the 25th, a second later the 26th.
    eve = datetime(2026, 11, 25, 15, 59, 59, tzinfo=UTC)
    assert "C-in-two-days" not in breaching(engine, "promise_due_not_shipped", eve)
    assert "C-in-two-days" in breaching(engine, "promise_due_not_shipped", eve + S)


# --- rule 2: SKU below safety stock while pending orders need it ------------------------------------


def test_stock_below_safety_needs_pending_demand_and_suggests_a_quantity(engine):
    publish_rows(
        engine,
        [
            order("P1", "paid", paid_at=NOW - H),
            order("P2", "ordered"),
            order("P3", "paid", paid_at=NOW - H),
            order("L1", "locked", locked_at=NOW - H),
            order("X1", "cancelled"),
        ],
    )
    add_rows(
        engine,
        "inventory",
        [
            stock("EQUAL", 15, 5, 10),  # available 10 == safety 10: not below
            stock("BELOW", 14, 5, 10),  # available 9 < 10, P1 and P2 need 3 + 2
            stock("NO-DEMAND", 0, 0, 10),  # below, but only locked/cancelled orders use it
            stock("COVERED", 5, 5, 10),  # below, but P3's line is already locked
        ],
    )
    add_rows(
        engine,
        "order_lines",
        [
            {"order_no": "P1", "sku": "EQUAL", "qty": 4.0},
            {"order_no": "P1", "sku": "BELOW", "qty": 3.0},
            {"order_no": "P2", "sku": "BELOW", "qty": 2.0},
            {"order_no": "L1", "sku": "NO-DEMAND", "qty": 1.0},
            {"order_no": "X1", "sku": "NO-DEMAND", "qty": 1.0},
            {"order_no": "P3", "sku": "COVERED", "qty": 2.0},
        ],
    )
    add_rows(
        engine,
        "reservations",
        [
            {
                "reservation_id": "R1",
                "order_no": "P3",
                "sku": "COVERED",
                "qty": 2.0,
                "status": "locked",
                "locked_at": NOW - H,
                "updated_at": NOW - H,
            },
        ],
    )
    rules = [r for r in default_rules() if r.id == "stock_below_safety"]
    with engine.connect() as conn:
        rows = evaluate(conn, rules, NOW, TZ)["stock_below_safety"].rows
    assert rows["entity_key"].tolist() == ["BELOW"]
    below = rows.iloc[0]
    assert (below["available"], below["pending_qty"], below["pending_orders"]) == (9, 5, 2)
    assert below["suggested_qty"] == 10 + 5 - 9  # back to safety stock after serving the pending orders
    assert below["order_no"] is None or pd.isna(below["order_no"])


def test_rules_run_on_unified_orders_too_and_sample_for_checks(engine):
    rows = [order(f"P{i:02d}", "paid", paid_at=NOW - 3 * H) for i in range(30)]
    publish_rows(engine, rows, table=unified_orders)
    rule = next(r for r in default_rules() if r.id == "paid_not_locked")
    with engine.connect() as conn:
        count, sample = count_and_sample(conn, rule, NOW, TZ, 5, orders=unified_orders)
    assert count == 30
    assert sample["order_no"].tolist() == ["P00", "P01", "P02", "P03", "P04"]


# --- a configured rule in the warehouse ------------------------------------------------------------


def test_a_configured_rule_evaluates(engine):
    rules = parse_rules(
        {
            "big_unpaid": {
                "title": "大额未付款",
                "scope": "order",
                "notify": ["finance"],
                "when": {"amount": {"ge": 10000}, "stage": {"in": ["ordered"]}},
            }
        },
        "x.yaml",
    )
    publish_rows(
        engine,
        [
            order("BIG", "ordered", amount=12000.0),
            order("SMALL", "ordered", amount=10.0),
            order("PAID", "paid", amount=20000.0, paid_at=NOW - H),
        ],
    )
    assert breaching(engine, "big_unpaid", rules=rules) == ["BIG"]


def test_a_naive_now_is_refused_rather_than_read_as_utc(engine):
    rule = next(r for r in default_rules() if r.id == "paid_not_locked")
    with engine.connect() as conn, pytest.raises(ValueError, match="timezone-aware"):
        evaluate(conn, [rule], NOW.replace(tzinfo=None), TZ)
