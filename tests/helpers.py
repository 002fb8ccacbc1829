"""Plain helpers the test modules share (fixtures are in conftest.py).

The pinned clock; published snapshot rows and alerting set-ups; an alert message and transports for
the channels; a source config; copies of the demo company and the pipeline run on it; the web app's
test world; Kuaidi100 payloads.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shutil
import socket
import sqlite3
import threading
import warnings
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import httpx
import pandas as pd
import pytest
import sqlalchemy as sa
import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.exceptions import StarletteDeprecationWarning

from order_pipeline.alerts.channels.message import AlertMessage
from order_pipeline.alerts.dispatch import Dispatcher, build_channels
from order_pipeline.alerts.evaluation import Alerting
from order_pipeline.carrier import sandbox as carrier_sandbox
from order_pipeline.contract.canonical import SOURCE_ENTITIES
from order_pipeline.contract.config import CarrierConfig, Config, Secret, load_config
from order_pipeline.contract.schema import (
    PUBLISHED_ORDER_TABLES,
    RAW_TABLES,
    alert_deliveries,
    alert_outbox,
    carrier_subscriptions,
    metadata,
    order_alerts,
    order_tracking_events,
    order_tracking_parcels,
    order_tracking_snapshot,
    pipeline_state,
    raw_tracking,
    raw_tracking_events,
    tracking_access_log,
    unified_orders,
)
from order_pipeline.contract.tracking_page import PUBLIC_FIELDS
from order_pipeline.domain.links import make_token
from order_pipeline.domain.passwords import hash_password
from order_pipeline.domain.stages import NEXT_OWNER, STAGE_LABELS
from order_pipeline.runner import RunOutcome, run_pipeline
from order_pipeline.warehouse.engine import Warehouse, create_engine
from order_pipeline.warehouse.frames import insert_frame
from order_pipeline.warehouse.state import PUBLISHED_BATCH, set_state
from order_pipeline.web.db import SQLITE_BUSY_TIMEOUT, make_engine

with warnings.catch_warnings():  # the installed httpx works; Starlette merely prefers its successor
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

# --- the pinned clock --------------------------------------------------------------------------------

NOW = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
TZ = "Asia/Shanghai"
S, M, H, D = timedelta(seconds=1), timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)


# --- published snapshot rows and the alerting ----------------------------------------------------------


@contextmanager
def serve_app(app, lifespan: Literal["auto", "on", "off"] = "auto") -> Iterator[int]:
    """`app` served by uvicorn in a thread on a free loopback port; yields the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # connections wait in the backlog until the server accepts them: no waiting for it to start
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan=lifespan))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


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


def paid_order(no: str = "SO-1", hours: float = 3) -> dict:
    return order(no, "paid", paid_at=NOW - hours * H, responsible_role="warehouse")


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
        set_state(conn, PUBLISHED_BATCH, str(batch), now)


def add_rows(engine: sa.Engine, entity: str, rows: list[dict]) -> None:
    table = RAW_TABLES[entity]
    with engine.begin() as conn:
        insert_frame(conn, table, pd.DataFrame([{**r, "_batch": 1} for r in rows]))


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


# Every group to an outbox channel of its own; a cool-down of 2 h, one escalation to the ops lead after 4 h.
GROUPS: dict[str, Any] = {
    "channels": {
        "wh_box": {"type": "outbox"},
        "lead_box": {"type": "outbox"},
        "cs_box": {"type": "outbox"},
        "data_box": {"type": "outbox"},
    },
    "alerts": {
        "cooldown": "2h",
        "escalate_after": "4h",
        "escalate_to": ["ops_lead"],
        "max_escalations": 1,
        "groups": {
            "warehouse": {"channels": ["wh_box"], "mentions": ["13800000000"]},
            "ops_lead": {"channels": ["lead_box"]},
            "customer_service": {"channels": ["cs_box"]},
            "data": {"channels": ["data_box"]},
        },
    },
}


def alerting_for(tmp_path: Path, engine: sa.Engine, channels=None, **sections) -> tuple[Alerting, Dispatcher]:
    """The alerting of a config with GROUPS (updated by `sections`) and its dispatcher."""
    config = make_config(tmp_path, str(engine.url), **{**GROUPS, **sections})
    alerting = Alerting(config, engine)
    built = build_channels(alerting.settings, engine) if channels is None else channels
    return alerting, Dispatcher(engine, built)


def tick(alerting: Alerting, dispatcher: Dispatcher, now: datetime):
    ev = alerting.evaluate(now)
    return ev, dispatcher.drain(now)


def outbox(engine: sa.Engine) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql(sa.select(alert_outbox).order_by(alert_outbox.c.id), conn)


def deliveries(engine: sa.Engine) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql(sa.select(alert_deliveries).order_by(alert_deliveries.c.id), conn)


def ledger_row(engine: sa.Engine, rule_id: str = "paid_not_locked", key: str = "SO-1") -> dict:
    with engine.connect() as conn:
        return dict(
            conn.execute(
                sa.select(order_alerts).where(order_alerts.c.rule_id == rule_id).where(order_alerts.c.entity_key == key)
            )
            .mappings()
            .one()
        )


# --- alert channels ----------------------------------------------------------------------------------

MSG = AlertMessage(
    title="支付超 2 小时未锁库",
    body_markdown="订单 **SO-1001** 已支付 2.5 小时，库存未锁定",
    body_text="订单 SO-1001 已支付 2.5 小时，库存未锁定",
    severity="critical",
    link="https://ops.example.com/order/SO-1001",
    keys=("paid_not_locked:SO-1001",),
)


def mock(*answers: httpx.Response | Exception) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport answering in turn with `answers` (the last one repeats), recording requests."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers[min(len(seen), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handle), seen


class Sleeps(list):
    """A sleep that only records how long it was asked to wait."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


# --- sources -----------------------------------------------------------------------------------------


def write_sources(folder: Path) -> dict:
    """One SQLite source per entity, with the canonical column names, and a config that maps them."""
    sources = {}
    for name, entity in SOURCE_ENTITIES.items():
        if entity.optional:
            continue
        with sqlite3.connect(folder / f"{name}.db") as conn:
            conn.execute(f"CREATE TABLE {name} ({', '.join(entity.column_names)})")
        sources[name] = {"url": f"sqlite:///{name}.db", "table": name, "columns": {c: c for c in entity.column_names}}
    return {"timezone": "Asia/Shanghai", "sources": sources}


def sources_company(folder: Path) -> tuple[Config, sa.Engine]:
    """`write_sources`' sources with their config loaded, and an empty warehouse for them."""
    (folder / "order_pipeline.yaml").write_text(yaml.safe_dump(write_sources(folder)), encoding="utf-8")
    config = load_config(folder / "order_pipeline.yaml")
    wh = Warehouse(warehouse_of(config))
    wh.create_schema()
    return config, wh.engine


# --- the demo company and the pipeline on it ---------------------------------------------------------


def copy_company(source: Path, target: Path) -> Path:
    """A copy of a demo company folder (sources, config and any warehouse) whose config points at the copy.

    SQLite files are copied with the backup API, so a warehouse still open in WAL mode is copied whole.
    """
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.db", "*.db-wal", "*.db-shm"))
    for db in source.rglob("*.db"):
        with closing(sqlite3.connect(db)) as src, closing(sqlite3.connect(target / db.relative_to(source))) as dst:
            src.backup(dst)
    config = target / "order_pipeline.yaml"
    config.write_text(config.read_text(encoding="utf-8").replace(str(source), str(target)), encoding="utf-8")
    return target


def company_digest(root: Path) -> str:
    """What the SQLite files of a company folder hold (not how the pages lie): for checking nothing wrote there."""
    digest = hashlib.sha256()
    for db in sorted(root.rglob("*.db")):
        with closing(sqlite3.connect(db)) as conn:
            for line in conn.iterdump():
                digest.update(line.encode())
    return digest.hexdigest()


def run_at(
    config: Config, now: datetime = NOW, full: bool = False, instance: dg.DagsterInstance | None = None
) -> RunOutcome:
    """The pipeline job in process with the clock pinned to `now`; it must succeed."""
    outcome = run_pipeline(config, instance or dg.DagsterInstance.ephemeral(), now=now.isoformat(), full_refresh=full)
    assert outcome.success, outcome.failures
    return outcome


def config_on_postgres(company: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> Config:
    """The demo config with its warehouse at `url` (PostgreSQL), named by an environment variable."""
    monkeypatch.setenv("ORDER_PIPELINE_TEST_WAREHOUSE", url)
    doc = yaml.safe_load((company / "order_pipeline.yaml").read_text(encoding="utf-8"))
    doc["warehouse"] = {"url_env": "ORDER_PIPELINE_TEST_WAREHOUSE"}
    path = company / "pg.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return load_config(path)


def resolved(secret: Secret) -> str:
    """A configured value (a URL), which must be set."""
    value = secret.resolve()
    assert value is not None, secret
    return value


def warehouse_of(config: Config) -> str:
    return resolved(config.warehouse_url)


def local(ts) -> str:
    """A naive Asia/Shanghai text timestamp, as the demo sources store them."""
    return pd.Timestamp(ts).tz_convert("Asia/Shanghai").strftime("%Y-%m-%d %H:%M:%S")


def snapshot(engine: sa.Engine) -> pd.DataFrame:
    with engine.connect() as conn:
        frame = pd.read_sql(sa.select(order_tracking_snapshot), conn)
    return frame.drop(columns=["published_at"]).sort_values("order_no").reset_index(drop=True)


def published(engine: sa.Engine) -> dict[str, pd.DataFrame]:
    """Every published table in a stable order, without the publishing time."""
    with engine.connect() as conn:
        frames = {
            t.name: pd.read_sql(sa.select(t), conn).drop(columns=["published_at"], errors="ignore")
            for t in PUBLISHED_ORDER_TABLES
        }
    return {name: f.sort_values(list(f.columns)).reset_index(drop=True) for name, f in frames.items()}


def recomputed(engine: sa.Engine, batch_after: int) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(sa.select(unified_orders.c.order_no).where(unified_orders.c._batch > batch_after)).scalars()
        )


def max_batch(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.max(unified_orders.c._batch))).scalar_one()


def materialization_metadata(instance: dg.DagsterInstance, key: str) -> dict[str, Any]:
    """The metadata values of the latest materialization of the asset `key`."""
    event = instance.get_latest_materialization_event(dg.AssetKey(key))
    assert event is not None and event.asset_materialization is not None, key
    return {name: entry.value for name, entry in event.asset_materialization.metadata.items()}


# --- the web app's world: a tiny warehouse on a temp SQLite file and a config that points at it --------

LINK_SECRET = "test-link-secret-0123456789abcdef"
SECRET = LINK_SECRET.encode()
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
WEB_TABLES = (*PUBLISHED_TABLES, raw_tracking, raw_tracking_events, carrier_subscriptions)

ALL_PUBLIC_FIELDS = list(PUBLIC_FIELDS)
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

    def config(self) -> Config:
        return load_config(self.config_path)


class WebClient(TestClient):
    """A TestClient over the web app that knows the world it serves; `web` is the app's state (WebContext)."""

    def __init__(self, app: Starlette, world: WebWorld, **client_kw):
        super().__init__(app, **client_kw)
        self.world = world
        self.web = app.state.web


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


@functools.cache
def staff_password_hash() -> str:
    """The scrypt hash of STAFF_PASSWORD, made once: each one takes a twentieth of a second."""
    return hash_password(STAFF_PASSWORD)


def write_config(
    root: Path,
    warehouse_url: str,
    web: dict | None = None,
    public_fields: list[str] | None = ALL_PUBLIC_FIELDS,
    customer_messages: bool = True,
) -> Path:
    """A config whose `web:` section is the defaults below updated by `web` (a None value removes the entry).

    The tracking page shows `public_fields` (by default every field, so that every masking rule is seen);
    None leaves the `tracking_page:` section out, for the page's own default. With `customer_messages`
    the company messages its customers (through the outbox), so staff may resend a link.
    """
    (root / "link.key").write_text(LINK_SECRET + "\n", encoding="utf-8")
    web_section: dict[str, Any] = {
        "base_url": "http://testserver",
        "link_secret_file": "link.key",
        "link_ttl": "7d",
        "support_contact": "客服热线 400-800-1234",
        "rate_limits": {"per_ip": "1000/1m", "per_order": "1000/1m"},
        "staff": [{"username": STAFF_USER, "password_hash": staff_password_hash()}],
    }
    web_section.update(web or {})
    doc = {
        "timezone": "Asia/Shanghai",
        "data_dir": str(root / "data"),
        "warehouse": {"url": warehouse_url},
        "sources": source_sections(root),
        "carrier": {"push_salt_env": PUSH_SALT_ENV},
        "web": {k: v for k, v in web_section.items() if v is not None},
    }
    if public_fields is not None:
        doc["tracking_page"] = {"public_fields": list(public_fields)}
    if customer_messages:
        doc["notifications"] = {"channels": {"outbox": {"type": "outbox"}}, "events": {"order_created": {}}}
    path = root / "order_pipeline.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _complete(table: sa.Table, row: dict) -> dict:
    """Every column named, so that rows of one insert share their keys."""
    return {c.name: row.get(c.name) for c in table.columns if c.name in row or not c.primary_key or not c.autoincrement}


def _snapshot_row(**values) -> dict[str, Any]:
    row: dict[str, Any] = {c.name: None for c in order_tracking_snapshot.columns}
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
    public_fields: list[str] | None = ALL_PUBLIC_FIELDS,
    customer_messages: bool = True,
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
    config = write_config(root, url, web, public_fields, customer_messages)
    return WebWorld(root, config, url, engine, env={PUSH_SALT_ENV: PUSH_SALT})


def push_form(
    waybill: str = WAYBILL, salt: str = PUSH_SALT, status: str = "polling", arrival: str | None = None
) -> dict[str, str]:
    """A Kuaidi100 push as its servers send it: param JSON and sign = upper MD5(param + salt).

    `arrival` is the carrier's predicted arrival (`arrivalTime`, China time) a resultv2=8 push carries."""
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
            }
            | ({"arrivalTime": arrival} if arrival else {}),
        },
        ensure_ascii=False,
    )
    sign = hashlib.md5((param + salt).encode("utf-8")).hexdigest().upper()
    return {"param": param, "sign": sign}


def link_path(order_no: str, expires: datetime | None = None, lang: str | None = None) -> str:
    token = make_token(order_no, expires or NOW + timedelta(days=7), SECRET)
    return f"/order/{order_no}?t={token}" + (f"&lang={lang}" if lang else "")


def access_rows(client: WebClient) -> list[dict]:
    # What the writer thread would write within a quarter second, and the refusals counted so far.
    client.web.access_log.flush(counted=True)
    with client.world.engine.connect() as conn:
        return [
            dict(r) for r in conn.execute(sa.select(tracking_access_log).order_by(tracking_access_log.c.id)).mappings()
        ]


def page_csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field in the page"
    return found.group(1)


def login(client: TestClient, password: str = STAFF_PASSWORD):
    csrf = page_csrf(client.get("/ops/login").text)
    return client.post(
        "/ops/login",
        data={"username": STAFF_USER, "password": password, "csrf": csrf, "next": "/ops/"},
        follow_redirects=False,
    )


# --- Kuaidi100 ---------------------------------------------------------------------------------------

CUSTOMER, KEY, SALT = "CUST0001", "key-abc", "salt-xyz"


def md5_upper(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest().upper()


def answer_payload(state: str = "0", ischeck: str = "0", data: list[dict] | None = None) -> dict:
    return {
        "message": "ok",
        "nu": "YT100",
        "ischeck": ischeck,
        "condition": "00",
        "com": "yuantong",
        "status": "200",
        "state": state,
        "data": data
        if data is not None
        else [
            {
                "time": "2026-11-24 09:00:00",
                "ftime": "2026-11-24 09:00:00",
                "context": "派件中",
                "areaName": "上海,上海市",
                "status": "派件",
            },
            {
                "time": "2026-11-23 20:00:00",
                "ftime": "2026-11-23 20:00:00",
                "context": "已揽收",
                "areaName": None,
                "status": "揽收",
            },
        ],
    }


def write_carrier_db(path: Path) -> Path:
    """A Kuaidi100 stand-in database: YT1000001 signed, SF2000002 in transit with a predicted arrival,
    ZT3000003 without a record yet."""
    with closing(sqlite3.connect(path)) as conn, conn:
        carrier_sandbox.create_schema(conn)
        conn.executescript(carrier_sandbox.SUBSCRIPTION_SCHEMA)  # for the estimates
        conn.executemany(
            "INSERT INTO carrier_waybills VALUES (?, ?, ?, ?, ?)",
            [
                ("YT1000001", "yuantong", None, 3, 1),
                ("SF2000002", "shunfeng", "5678", 0, 0),
                ("ZT3000003", "zhongtong", "5678", 0, 0),
            ],
        )
        conn.executemany(
            "INSERT INTO carrier_events VALUES (?, ?, ?, ?, ?)",
            [
                ("YT1000001", "2026-11-23 08:00:00", "已揽收", "浙江,杭州市", "揽收"),
                ("YT1000001", "2026-11-24 15:30:00", "已签收", "上海,上海市", "签收"),
                ("SF2000002", "2026-11-24 09:00:00", "顺丰速运 已收取快件", "广东,深圳市", "揽收"),
            ],
        )
        conn.execute("INSERT INTO carrier_estimates VALUES ('SF2000002', '2026-11-26 18:00:00')")
    return path
