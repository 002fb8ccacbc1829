"""SLA rules: the four defaults at their boundaries (pinned clock, SQLite and PostgreSQL), and config errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import sqlalchemy as sa
from helpers import NOW

from order_pipeline.alerts.rules import FieldRef, count_and_sample, default_rules, evaluate, parse_rules
from order_pipeline.alerts.settings import BUILTIN_GROUPS, load_alert_settings
from order_pipeline.contract.config import CarrierConfig, Config, ConfigError, Secret
from order_pipeline.contract.roles import ROLE_LABELS
from order_pipeline.contract.schema import RAW_TABLES, order_tracking_snapshot, unified_orders
from order_pipeline.domain.stages import MISSING_FACTS, NEXT_OWNER, STAGE_LABELS
from order_pipeline.warehouse.engine import Warehouse, insert_frame, set_state

TZ = "Asia/Shanghai"
H, S, D = timedelta(hours=1), timedelta(seconds=1), timedelta(days=1)


# --- building blocks shared with test_alerting and test_sensors -----------------------------------


def order(order_no: str, stage: str, **fields) -> dict:
    """A published snapshot row with sensible defaults for its stage."""
    row = {
        "order_no": order_no,
        "stage": stage,
        "stage_label": STAGE_LABELS[stage],
        "status": "cancelled" if stage == "cancelled" else "open",
        "customer_name": "张三",
        "customer_phone": "13812345678",
        "phone_tail": "5678",
        "amount": 100.0,
        "paid_amount": 0.0,
        "parcel_count": 0,
        "parcels_signed": 0,
        "out_for_delivery": False,
        "line_count": 1,
        "total_qty": 1.0,
        "ordered_at": NOW - 3 * D,
        "responsible_role": NEXT_OWNER.get(stage),
        "published_at": NOW,
    }
    row.update(fields)
    row.setdefault("waiting_since", row.get("paid_at") or row["ordered_at"])
    return row


def publish_rows(
    engine: sa.Engine, rows: list[dict], batch: int = 1, table: sa.Table = order_tracking_snapshot, now: datetime = NOW
) -> None:
    """Replace the snapshot with `rows` and mark it published as `batch`."""
    frame = pd.DataFrame(rows, columns=[c.name for c in table.c])
    if table is unified_orders:
        frame["_batch"] = batch
    with engine.begin() as conn:
        conn.execute(table.delete())
        insert_frame(conn, table, frame)
        set_state(conn, "published_batch", str(batch), now)


def add_rows(engine: sa.Engine, entity: str, rows: list[dict]) -> None:
    table = RAW_TABLES[entity]
    with engine.begin() as conn:
        insert_frame(conn, table, pd.DataFrame([{**r, "_batch": 1} for r in rows]))


def stock(sku: str, on_hand: float, reserved: float, safety: float) -> dict:
    return {"sku": sku, "on_hand": on_hand, "reserved": reserved, "safety_stock": safety, "updated_at": NOW}


def make_config(tmp_path: Path, url: str, **sections) -> Config:
    return Config(
        path=tmp_path / "order_pipeline.yaml",
        timezone=TZ,
        data_dir=tmp_path,
        warehouse_url=Secret(value=url),
        sources={},
        carrier=CarrierConfig(),
        sections=sections,
    )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def warehouse_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'warehouse.db'}"
    return request.getfixturevalue("pg_database")()


@pytest.fixture
def engine(warehouse_url):
    wh = Warehouse(warehouse_url)
    wh.create_schema()
    yield wh.engine
    wh.engine.dispose()


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


# --- configured rules ------------------------------------------------------------------------------


def test_configured_rules_merge_over_the_defaults():
    rules = parse_rules(
        {
            "stuck_parcel": {
                "when": {"stage": {"in": ["in_transit"]}, "last_carrier_update_at": {"older_than": "24h"}},
                "cooldown": "6h",
            },
            "promise_due_not_shipped": {"enabled": False},
            "big_unpaid": {
                "title": "大额未付款",
                "scope": "order",
                "notify": ["finance"],
                "severity": "info",
                "when": {"amount": {"ge": 10000}, "stage": {"eq": "ordered"}, "ordered_at": {"older_than": "30m"}},
                "message": "订单 {order_no} 金额 {amount} 已等待 {waited}",
            },
        },
        "x.yaml",
    )
    by_id = {r.id: r for r in rules}
    assert set(by_id) == {"paid_not_locked", "stock_below_safety", "stuck_parcel", "big_unpaid"}
    assert by_id["stuck_parcel"].cooldown == timedelta(hours=6)
    assert by_id["stuck_parcel"].notify == ("customer_service",)  # kept from the default
    assert by_id["big_unpaid"].condition_text == "amount ge 10000 and stage eq ordered and ordered_at older_than 30m"


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


@pytest.mark.parametrize(
    "rule, entry, problem, fix",
    [
        (
            {"paid_not_locked": {"notfy": ["warehouse"]}},
            "rules.paid_not_locked.notfy",
            "unknown rule field",
            "use one of",
        ),
        (
            {"paid_not_locked": {"when": {"paid_at": {"older": "2h"}}}},
            "rules.paid_not_locked.when.paid_at.older",
            "unknown operator",
            "older_than",
        ),
        (
            {"paid_not_locked": {"when": {"paid_at": {"older_than": "2 hours"}}}},
            "rules.paid_not_locked.when.paid_at.older_than",
            "'2 hours' is not a duration",
            "e.g. 90s, 30m, 2h, 1d",
        ),
        (
            {"paid_not_locked": {"when": {"payed_at": {"older_than": "2h"}}}},
            "rules.paid_not_locked.when.payed_at",
            "unknown field",
            "paid_at",
        ),
        (
            {"paid_not_locked": {"notify": ["warehose"]}},
            "rules.paid_not_locked.notify",
            "unknown channel or group 'warehose'",
            "warehouse",
        ),
        ({"paid_not_locked": {"cooldown": "soon"}}, "rules.paid_not_locked.cooldown", "'soon' is not a duration", "2h"),
        (
            {"paid_not_locked": {"when": {"stage": {"eq": "payed"}}}},
            "rules.paid_not_locked.when.stage.eq",
            "unknown stage 'payed'",
            "paid",
        ),
        (
            {"paid_not_locked": {"when": {"amount": {"older_than": "2h"}}}},
            "rules.paid_not_locked.when.amount.older_than",
            "older_than needs a time field",
            "paid_at",
        ),
        (
            {"paid_not_locked": {"message": "订单 {order_number}"}},
            "rules.paid_not_locked.message",
            "unknown placeholder {order_number}",
            "order_no",
        ),
        (
            {"new_rule": {"title": "x", "scope": "order", "notify": ["warehouse"]}},
            "rules.new_rule.when",
            "missing",
            "when:",
        ),
        (
            {"new_rule": {"title": "x", "scope": "shop", "notify": ["warehouse"], "when": {"sku": {"eq": "A"}}}},
            "rules.new_rule.scope",
            "unknown scope 'shop'",
            "order, sku",
        ),
        (
            {"paid_not_locked": {"when": {"promised_date": {"within_next": "36h"}}}},
            "rules.paid_not_locked.when.promised_date.within_next",
            "takes whole days",
            "1d",
        ),
    ],
)
def test_rule_mistakes_name_the_file_the_rule_and_the_fix(tmp_path, rule, entry, problem, fix):
    config = make_config(tmp_path, "sqlite://", rules=rule)
    with pytest.raises(ConfigError) as err:
        load_alert_settings(config)
    e = err.value
    assert (e.file, e.entry) == (str(config.path), entry)
    assert problem in e.problem
    assert fix in e.fix
    assert str(e).startswith(f"{config.path}: {entry}: ")


def test_rule_may_notify_a_configured_channel_or_group(tmp_path):
    config = make_config(
        tmp_path,
        "sqlite://",
        channels={"ops_mail": {"type": "outbox"}},
        alerts={"groups": {"night_shift": {"channels": ["ops_mail"]}}},
        rules={"paid_not_locked": {"notify": ["night_shift", "ops_mail"]}},
    )
    rules = {r.id: r for r in load_alert_settings(config).rules}
    assert rules["paid_not_locked"].notify == ("night_shift", "ops_mail")


def test_the_default_rules_notify_built_in_groups_that_have_labels():
    # A config without `alerts.groups` must load: every default target is a built-in group.
    rules = parse_rules(None, "x.yaml", targets=BUILTIN_GROUPS)
    targets = {t for r in rules for t in r.notify}
    assert targets == {"warehouse", "purchasing", "customer_service", "ops_lead"}
    assert all(g in ROLE_LABELS for g in BUILTIN_GROUPS)
    # Whoever an order waits for has a label, in the summary, the messages and the web pages alike.
    owners = {o for o in NEXT_OWNER.values() if o} | {owner for _, owner in MISSING_FACTS.values()}
    assert owners <= set(ROLE_LABELS)
    assert (ROLE_LABELS["carrier"], ROLE_LABELS["ops_lead"]) == ("快递公司", "运营负责人")


def test_a_naive_now_is_refused_rather_than_read_as_utc(engine):
    rule = next(r for r in default_rules() if r.id == "paid_not_locked")
    with engine.connect() as conn, pytest.raises(ValueError, match="timezone-aware"):
        evaluate(conn, [rule], NOW.replace(tzinfo=None), TZ)


@pytest.mark.parametrize(
    "sections, entry, problem",
    [
        ({"alerts": {"cooldwn": "2h"}}, "alerts.cooldwn", "unknown setting"),
        ({"alerts": {"cooldown": "two hours"}}, "alerts.cooldown", "'two hours' is not a duration"),
        (
            {"alerts": {"groups": {"warehouse": {"channels": ["wecom_wh"]}}}},
            "alerts.groups.warehouse.channels",
            "unknown channel 'wecom_wh'",
        ),
        ({"alerts": {"escalate_to": ["ops_leed"]}}, "alerts.escalate_to", "unknown group or channel 'ops_leed'"),
        ({"freshness": {"carrier": "2 hours"}}, "freshness.carrier", "'2 hours' is not a duration"),
        ({"freshness": {"orders": "5m"}}, "freshness.orders", "source 'orders' is not configured"),
        ({"alerts": {"tracking_links": {"channel": "sms"}}}, "alerts.tracking_links.channel", "unknown channel 'sms'"),
    ],
)
def test_alert_section_mistakes_name_the_entry(tmp_path, sections, entry, problem):
    with pytest.raises(ConfigError) as err:
        load_alert_settings(make_config(tmp_path, "sqlite://", **sections))
    assert err.value.entry == entry
    assert problem in err.value.problem


def test_without_configuration_every_group_goes_to_the_outbox(tmp_path):
    settings = load_alert_settings(make_config(tmp_path, "sqlite://"))
    assert [r.id for r in settings.rules] == [
        "paid_not_locked",
        "stock_below_safety",
        "stuck_parcel",
        "promise_due_not_shipped",
    ]
    for group in ("warehouse", "purchasing", "customer_service", "ops_lead", "data"):
        assert settings.route(group) == [("outbox", ())]
    assert [s.source for s in settings.freshness] == ["carrier"]  # sources come with their config
    assert settings.tracking_links is not None and not settings.web_configured
