"""Test data for the web app: a tiny warehouse on a temp SQLite file and a config that points at it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
import yaml

from order_pipeline.contract.canonical import SOURCE_ENTITIES
from order_pipeline.contract.config import load_config
from order_pipeline.contract.schema import (
    PUBLISHED_ORDER_TABLES,
    metadata,
    order_alerts,
    order_tracking_events,
    order_tracking_parcels,
    order_tracking_snapshot,
    pipeline_state,
    raw_tracking,
    raw_tracking_events,
    tracking_access_log,
)
from order_pipeline.domain.passwords import hash_password
from order_pipeline.warehouse.engine import create_engine
from order_pipeline.web.db import SQLITE_BUSY_TIMEOUT, make_engine

NOW = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
LINK_SECRET = "test-link-secret-0123456789abcdef"
PUSH_SALT = "test-push-salt"
PUSH_SALT_ENV = "WEB_TEST_PUSH_SALT"
STAFF_USER, STAFF_PASSWORD = "alice", "correct horse battery staple"

# The customer of the main order, as published for staff: none of this may reach a customer page unmasked.
RAW_PHONE = "13812345678"
FULL_NAME = "张三丰"
FULL_ADDRESS = "广东省深圳市南山区科技园南区深南大道10000号腾讯大厦8楼"
STREET = "深南大道10000号"
COURIER_PHONE = "13987654321"
COURIER_PHONE_INTL = "+86 139 8765 0000"  # the courier's colleague, written with the country code
SIGNER_NAME = "欧阳修"  # named by the carrier in a SO1003 event

# What the pipeline publishes for the web app (and the app's own access log), and what
# the Kuaidi100 push receiver writes besides.
PUBLISHED_TABLES = (*PUBLISHED_ORDER_TABLES, order_alerts, pipeline_state, tracking_access_log)
WEB_TABLES = (*PUBLISHED_TABLES, raw_tracking, raw_tracking_events)

ORDER_IN_TRANSIT = "SO1001"
ORDER_PAID = "SO1002"
ORDER_EXCEPTION = "SO1003"
WAYBILL = "SF1234567890"
PHONE_TAIL = "5678"  # shared by SO1001 and SO1002


def _t(hours_before_now: float) -> datetime:
    return NOW - timedelta(hours=hours_before_now)


class FakeClock:
    def __init__(self, now: datetime = NOW):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class WebWorld:
    root: Path
    config_path: Path
    warehouse_url: str
    engine: sa.Engine
    env: dict[str, str] = field(default_factory=dict)

    def config(self):
        return load_config(self.config_path)


def source_sections(folder: Path) -> dict:
    """Every source entity with a dummy SQLite URL and an identity column mapping."""
    return {
        name: {
            "url": f"sqlite:///{folder / 'sources.db'}",
            "table": f"src_{name}",
            "columns": {c: c for c in entity.column_names},
        }
        for name, entity in SOURCE_ENTITIES.items()
    }


def write_config(root: Path, warehouse_url: str, web: dict | None = None) -> Path:
    """A config whose `web:` section is the defaults below updated by `web` (a None value removes the entry)."""
    (root / "link.key").write_text(LINK_SECRET + "\n", encoding="utf-8")
    doc = {
        "timezone": "Asia/Shanghai",
        "data_dir": str(root / "data"),
        "warehouse": {"url": warehouse_url},
        "sources": source_sections(root),
        "carrier": {"push_salt_env": PUSH_SALT_ENV},
        "web": {
            "base_url": "http://testserver",
            "link_secret_file": "link.key",
            "link_ttl": "7d",
            "support_contact": "客服热线 400-800-1234",
            "rate_limits": {"per_ip": "1000/1m", "per_order": "1000/1m"},
            "staff": [{"username": STAFF_USER, "password_hash": hash_password(STAFF_PASSWORD)}],
        },
    }
    doc["web"].update(web or {})
    doc["web"] = {k: v for k, v in doc["web"].items() if v is not None}
    path = root / "order_pipeline.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _complete(table: sa.Table, row: dict) -> dict:
    """Every column named, so that rows of one insert share their keys."""
    return {c.name: row.get(c.name) for c in table.columns if c.name in row or not c.primary_key or not c.autoincrement}


def _snapshot_row(**values) -> dict:
    row = {c.name: None for c in order_tracking_snapshot.columns}
    row.update(
        parcel_count=0,
        parcels_signed=0,
        out_for_delivery=False,
        status="open",
        currency="CNY",
        published_at=_t(0.25),
        source_updated_at=_t(0.5),
    )
    row.update(values)
    return row


def seed(engine: sa.Engine, tables: tuple[sa.Table, ...] = WEB_TABLES) -> None:
    """Create `tables` (only those: the web app has to work without the pipeline's other tables) and fill them."""
    metadata.create_all(engine, tables=list(tables))
    snapshot = [
        _snapshot_row(
            order_no=ORDER_IN_TRANSIT,
            stage="in_transit",
            stage_label="配送中",
            customer_name=FULL_NAME,
            customer_phone=RAW_PHONE,
            phone_tail=PHONE_TAIL,
            ship_address=FULL_ADDRESS,
            amount=299.0,
            paid_amount=299.0,
            line_count=2,
            total_qty=3,
            voucher_no="V-88",
            ordered_at=_t(50),
            paid_at=_t(49),
            locked_at=_t(48),
            shipped_at=_t(30),
            in_transit_at=_t(28),
            eta=_t(-24),
            promised_date=date(2026, 11, 27),
            parcel_count=1,
            waybill_nos=WAYBILL,
            carrier_codes="shunfeng",
            total_weight_kg=1.2,
            carrier_state=0,
            latest_event_at=_t(2),
            latest_event_context="快件已到达【深圳南山营业点】",
            latest_event_area="广东省深圳市南山区",
            responsible_role="carrier",
            waiting_since=_t(2),
            missing_info="",
        ),
        _snapshot_row(
            order_no=ORDER_PAID,
            stage="paid",
            stage_label="支付确认",
            customer_name="李小龙",
            customer_phone="13900005678",
            phone_tail=PHONE_TAIL,
            ship_address="北京市朝阳区建国路88号SOHO现代城",
            amount=88.0,
            paid_amount=88.0,
            ordered_at=_t(10),
            paid_at=_t(9),
            responsible_role="warehouse",
            waiting_since=_t(9),
            missing_info="stock_lock",
        ),
        _snapshot_row(
            order_no=ORDER_EXCEPTION,
            stage="exception",
            stage_label="配送异常",
            customer_name="王五",
            customer_phone="13700001111",
            phone_tail="1111",
            ship_address="浙江省杭州市西湖区文三路1号",
            amount=50.0,
            ordered_at=_t(80),
            paid_at=_t(79),
            locked_at=_t(78),
            shipped_at=_t(70),
            in_transit_at=_t(69),
            parcel_count=1,
            waybill_nos="YT555",
            carrier_codes="yuantong",
            carrier_state=14,
            exception_reason="拒签: 收件人拒收",
            responsible_role="customer_service",
            waiting_since=_t(20),
        ),
    ]
    parcels = [
        {
            "waybill_no": WAYBILL,
            "order_no": ORDER_IN_TRANSIT,
            "carrier_code": "shunfeng",
            "weight_kg": 1.2,
            "shipped_at": _t(30),
            "carrier_state": 0,
            "is_signed": False,
            "latest_event_at": _t(2),
            "latest_event_context": "快件已到达【深圳南山营业点】",
        },
        {
            "waybill_no": "YT555",
            "order_no": ORDER_EXCEPTION,
            "carrier_code": "yuantong",
            "shipped_at": _t(70),
            "carrier_state": 14,
            "is_signed": False,
        },
    ]
    events = [
        {
            "order_no": ORDER_IN_TRANSIT,
            "event_at": _t(28),
            "kind": "carrier",
            "waybill_no": WAYBILL,
            "context": "顺丰速运 已收取快件",
            "area": "上海市浦东新区",
        },
        {
            "order_no": ORDER_IN_TRANSIT,
            "event_at": _t(10),
            "kind": "carrier",
            "waybill_no": WAYBILL,
            "context": "快件到达【深圳转运中心】",
            "area": "广东省深圳市",
        },
        {
            "order_no": ORDER_IN_TRANSIT,
            "event_at": _t(2),
            "kind": "carrier",
            "waybill_no": WAYBILL,
            "context": f"快件已到达【深圳南山营业点】，快递员李师傅正在派件，电话 {COURIER_PHONE}，"
            f"或联系 {COURIER_PHONE_INTL}",
            "area": "广东省深圳市南山区",
        },
        {
            "order_no": ORDER_EXCEPTION,
            "event_at": _t(21),
            "kind": "carrier",
            "waybill_no": "YT555",
            "context": f"快件派送不成功，收件人 {SIGNER_NAME} 拒收，快件将退回",
            "area": "浙江省杭州市西湖区",
        },
        {"order_no": ORDER_IN_TRANSIT, "event_at": _t(30), "kind": "stage", "stage": "shipped", "waybill_no": WAYBILL},
    ]
    alerts = [
        {
            "rule_id": "paid_not_locked",
            "entity_key": ORDER_PAID,
            "scope": "order",
            "order_no": ORDER_PAID,
            "severity": "warning",
            "message": "付款超过 2 小时仍未锁定库存",
            "first_seen": _t(7),
            "last_seen": _t(0.5),
            "escalation_level": 0,
            "attempts": 1,
        },
        {
            "rule_id": "tracking_stale",
            "entity_key": ORDER_IN_TRANSIT,
            "scope": "order",
            "order_no": ORDER_IN_TRANSIT,
            "severity": "high",
            "message": "48 小时无物流更新",
            "first_seen": _t(40),
            "last_seen": _t(30),
            "resolved_at": _t(28),
            "escalation_level": 0,
            "attempts": 1,
        },
    ]
    state = [
        {"key": "watermark:orders", "value": _t(0.2).isoformat(), "updated_at": _t(0.2)},
        {"key": "watermark:payments", "value": _t(3).isoformat(), "updated_at": _t(0.2)},
        {"key": "batch", "value": "7", "updated_at": _t(0.2)},
    ]
    with engine.begin() as conn:
        for table, rows in (
            (order_tracking_snapshot, snapshot),
            (order_tracking_parcels, parcels),
            (order_tracking_events, events),
            (order_alerts, alerts),
            (pipeline_state, state),
        ):
            conn.execute(table.insert(), [_complete(table, r) for r in rows])


def build_world(
    root: Path,
    web: dict | None = None,
    *,
    url: str | None = None,
    tables: tuple[sa.Table, ...] = WEB_TABLES,
    busy_timeout: float = SQLITE_BUSY_TIMEOUT,
) -> WebWorld:
    """A seeded warehouse (a SQLite file in `root` unless `url` names another) and a config pointing at it.

    `engine` is the web app's own kind of engine (`order_pipeline.web.db.make_engine`).
    """
    root.mkdir(parents=True, exist_ok=True)
    url = url or f"sqlite:///{root / 'warehouse.db'}"
    seeder = create_engine(url)
    try:
        seed(seeder, tables)
    finally:
        seeder.dispose()
    engine = make_engine(url, busy_timeout=busy_timeout)
    return WebWorld(root, write_config(root, url, web), url, engine, env={PUSH_SALT_ENV: PUSH_SALT})


def push_form(waybill: str = WAYBILL, salt: str = PUSH_SALT, status: str = "polling") -> dict[str, str]:
    """A Kuaidi100 push as its servers send it: param JSON and sign = upper MD5(param + salt)."""
    param = json.dumps(
        {
            "status": status,
            "billstatus": "got",
            "message": "",
            "lastResult": {
                "message": "ok",
                "state": "0",
                "status": "200",
                "condition": "F00",
                "ischeck": "0",
                "com": "shunfeng",
                "nu": waybill,
                "data": [
                    {
                        "time": "2026-11-25 09:30:00",
                        "ftime": "2026-11-25 09:30:00",
                        "context": "快件已到达【深圳南山营业点】",
                        "areaName": "广东,深圳市,南山区",
                        "status": "在途",
                    },
                    {
                        "time": "2026-11-24 08:00:00",
                        "ftime": "2026-11-24 08:00:00",
                        "context": "顺丰速运 已收取快件",
                        "areaName": "上海,上海,浦东新区",
                        "status": "揽收",
                    },
                ],
            },
        },
        ensure_ascii=False,
    )
    sign = hashlib.md5((param + salt).encode("utf-8")).hexdigest().upper()
    return {"param": param, "sign": sign}
