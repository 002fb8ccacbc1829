"""The five kinds of change `bench_latency.py` makes to the demo company, each one that moves an SLA alert.

Each change picks its order from the published snapshot and the alert ledger as they stand, writes
one source row (or posts one Kuaidi100 push) with the business's current local time as its
`updated_at`, and returns when the write has committed. Which alert each is meant to move, on the
default rules (order_pipeline/alerts/rules/default_rules.yaml):

- payment: a paid 收款单 for an unpaid order, paid 3 h ago: `paid_not_locked` fires; no customer message.
- reservation: LOCKED inv_lock rows covering the lines of an order `paid_not_locked` holds: it resolves
  (the resolve note); no customer message.
- shipment: an outbound parcel of an order `promise_due_not_shipped` holds: it resolves; `shipped`.
- push: a 派件 (state 5) push through `/hooks/kuaidi100` for a parcel `stuck_parcel` holds: it
  resolves; `out_for_delivery`.
- order: a new ERP order and its line, promised for tomorrow: `promise_due_not_shipped` fires;
  `order_created`.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import sqlalchemy as sa

KINDS = ("payment", "reservation", "shipment", "push", "order")
# The sensor that should see each change, and the raw asset its load lands in.
SENSOR = {
    "payment": "source_changes",
    "reservation": "source_changes",
    "shipment": "source_changes",
    "push": "carrier_push_received",
    "order": "source_changes",
}
RAW_ASSET = {
    "payment": "raw_payments",
    "reservation": "raw_reservations",
    "shipment": "raw_shipments",
    "push": "raw_tracking",
    "order": "raw_orders",
}
CUSTOMER_EVENT = {"shipment": "shipped", "push": "out_for_delivery", "order": "order_created"}
_OPEN_ALERTS = "SELECT order_no FROM order_alerts WHERE resolved_at IS NULL AND order_no IS NOT NULL"


@dataclass(frozen=True)
class Change:
    kind: str
    order_no: str
    committed: float  # time.time() right after the write committed (for a push: just before the POST)
    detail: str


class NoCandidate(Exception):
    """No order in the snapshot fits this kind of change any more."""


@dataclass
class DemoCompany:
    """The demo's source databases, its warehouse and the push endpoint of `order-pipeline serve`."""

    demo_dir: Path
    warehouse: sa.Engine
    timezone: str
    hook_url: str
    push_salt: str
    used: set[str]

    def local_now(self) -> datetime:
        return datetime.now(ZoneInfo(self.timezone)).replace(microsecond=0, tzinfo=None)

    def pick(self, sql: str, **params) -> sa.Row:
        with self.warehouse.connect() as conn:
            for row in conn.execute(sa.text(sql), params):
                if row.order_no not in self.used:
                    self.used.add(row.order_no)
                    return row
        raise NoCandidate(sql.split("WHERE", 1)[-1].strip()[:120])

    def _write(self, db: str, statements: list[tuple[str, tuple]]) -> float:
        conn = sqlite3.connect(self.demo_dir / db, timeout=30)
        try:
            with conn:
                for sql, params in statements:
                    conn.execute(sql, params)
            return time.time()
        finally:
            conn.close()

    def make(self, kind: str) -> Change:
        return {
            "payment": self.payment,
            "reservation": self.reservation,
            "shipment": self.shipment,
            "push": self.push,
            "order": self.new_order,
        }[kind]()

    def payment(self) -> Change:
        now = self.local_now()
        paid_at = now - timedelta(hours=3)
        cut = (datetime.now(ZoneInfo("UTC")) - timedelta(hours=4)).strftime("%Y-%m-%d %H:%M:%S")
        row = self.pick(
            "SELECT order_no, amount FROM order_tracking_snapshot WHERE stage = 'ordered' AND status = 'open'"
            " AND COALESCE(paid_amount, 0) = 0 AND locked_at IS NULL AND promised_date IS NULL"
            f" AND ordered_at < :cut AND order_no NOT IN ({_OPEN_ALERTS}) ORDER BY ordered_at DESC",
            cut=cut,
        )
        pid = f"SKB{now:%Y%m%d%H%M%S}{random.randrange(1000):03d}"
        t = self._write(
            "finance.db",
            [
                (
                    "INSERT INTO 收款单 (收款单号, 订单编号, 金额, 收款时间, 凭证号, 状态, 修改时间)"
                    " VALUES (?,?,?,?,?,?,?)",
                    (pid, row.order_no, row.amount, f"{paid_at}", f"记B{pid[3:]}", "已收款", f"{now}"),
                )
            ],
        )
        return Change("payment", row.order_no, t, f"payment {pid} {row.amount} paid {paid_at:%H:%M}")

    def reservation(self) -> Change:
        row = self.pick(
            "SELECT a.order_no FROM order_alerts a JOIN order_tracking_snapshot s ON s.order_no = a.order_no"
            " WHERE a.rule_id = 'paid_not_locked' AND a.resolved_at IS NULL AND s.stage = 'paid'"
            " ORDER BY a.first_seen"
        )
        with sqlite3.connect(self.demo_dir / "erp.db") as erp:
            lines = erp.execute(
                "SELECT FMaterialId, SUM(FQty) FROM T_SAL_ORDERENTRY WHERE FBillNo = ? AND FQty > 0 GROUP BY 1",
                (row.order_no,),
            ).fetchall()
        now = self.local_now()
        stamp = f"{now:%Y%m%d%H%M%S}"
        t = self._write(
            "wms.db",
            [
                (
                    "INSERT INTO inv_lock (lock_id, ref_order, item_code, lock_qty, lock_status, lock_time,"
                    " last_modified)"
                    " VALUES (?,?,?,?,?,?,?)",
                    (f"LKB{stamp}{i:02d}", row.order_no, sku, qty, "LOCKED", f"{now}", f"{now}"),
                )
                for i, (sku, qty) in enumerate(lines)
            ],
        )
        return Change("reservation", row.order_no, t, f"{len(lines)} lock(s)")

    def shipment(self) -> Change:
        row = self.pick(
            "SELECT a.order_no FROM order_alerts a JOIN order_tracking_snapshot s ON s.order_no = a.order_no"
            " WHERE a.rule_id = 'promise_due_not_shipped' AND a.resolved_at IS NULL"
            " AND s.stage IN ('locked', 'paid', 'ordered') AND COALESCE(s.parcel_count, 0) = 0"
            " ORDER BY CASE s.stage WHEN 'locked' THEN 0 ELSE 1 END, a.first_seen"
        )
        now = self.local_now()
        waybill = "75" + "".join(random.choices("0123456789", k=12))
        t = self._write(
            "wms.db",
            [
                (
                    "INSERT INTO outbound (ref_order, tracking_no, express_company, gross_weight, outbound_time,"
                    " last_modified) VALUES (?,?,?,?,?,?)",
                    (row.order_no, waybill, "zhongtong", 1.25, f"{now}", f"{now}"),
                )
            ],
        )
        return Change("shipment", row.order_no, t, f"parcel {waybill} zhongtong")

    def push(self) -> Change:
        row = self.pick(
            "SELECT a.order_no, s.waybill_nos, s.carrier_codes FROM order_alerts a"
            " JOIN order_tracking_snapshot s ON s.order_no = a.order_no"
            " WHERE a.rule_id = 'stuck_parcel' AND a.resolved_at IS NULL AND s.stage IN ('shipped', 'in_transit')"
            " AND s.parcel_count = 1 ORDER BY a.first_seen"
        )
        waybill, com = row.waybill_nos, row.carrier_codes
        with sqlite3.connect(self.demo_dir / "carrier.db") as carrier:
            history = carrier.execute(
                "SELECT time, context, area_name, status FROM carrier_events WHERE waybill_no = ? ORDER BY time DESC",
                (waybill,),
            ).fetchall()
        # Kuaidi100 writes China time, whatever the business's zone.
        china = datetime.now(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m-%d %H:%M:%S")
        news = {
            "time": china,
            "ftime": china,
            "context": "快递员正在派件，请保持电话畅通",
            "areaName": "",
            "status": "派件",
        }
        data = [news] + [
            {"time": t, "ftime": t, "context": c, "areaName": a or "", "status": s or ""} for t, c, a, s in history
        ]
        last = {
            "message": "ok",
            "state": "5",
            "status": "200",
            "condition": "F00",
            "ischeck": "0",
            "com": com,
            "nu": waybill,
            "data": data,
        }
        param = json.dumps(
            {"status": "polling", "billstatus": "got", "message": "", "lastResult": last}, ensure_ascii=False
        )
        sign = hashlib.md5((param + self.push_salt).encode("utf-8")).hexdigest().upper()
        t = time.time()
        resp = httpx.post(self.hook_url, data={"param": param, "sign": sign}, timeout=30)
        if resp.status_code != 200 or not resp.json().get("result"):
            raise RuntimeError(f"push refused: HTTP {resp.status_code} {resp.text[:200]}")
        return Change("push", row.order_no, t, f"push state 5 for {com} {waybill} ({len(data)} events)")

    def new_order(self) -> Change:
        now = self.local_now()
        order_no = f"SO{now:%Y%m%d}9{len(self.used):05d}"
        self.used.add(order_no)
        with sqlite3.connect(self.demo_dir / "wms.db") as wms:
            sku = wms.execute(
                "SELECT item_code FROM inv_stock ORDER BY qty_on_hand - qty_reserved - safety_qty DESC LIMIT 1"
            ).fetchone()[0]
        with sqlite3.connect(self.demo_dir / "erp.db") as erp:
            entry = erp.execute("SELECT COALESCE(MAX(FEntryID), 0) + 1 FROM T_SAL_ORDERENTRY").fetchone()[0]
        phone = "139" + "".join(random.choices("0123456789", k=8))
        promised = (now + timedelta(days=1)).date().isoformat()
        t = self._write(
            "erp.db",
            [
                (
                    "INSERT INTO T_SAL_ORDERENTRY (FEntryID, FBillNo, FMaterialId, FQty, FPrice) VALUES (?,?,?,?,?)",
                    (entry, order_no, sku, 1, 99.0),
                ),
                (
                    "INSERT INTO T_SAL_ORDER (FBillNo, FCustName, FPhone, FIdCard, FAddress, FAmount, FCurrency, FDate,"
                    " FPromiseDate, FStatus, FModifyDate) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        order_no,
                        "测试客户",
                        phone,
                        None,
                        "浙江省杭州市西湖区文三路90号",
                        99.0,
                        "CNY",
                        f"{now}",
                        promised,
                        "A",
                        f"{now}",
                    ),
                ),
            ],
        )
        return Change("order", order_no, t, f"new order, {sku} x1, promised {promised}")
