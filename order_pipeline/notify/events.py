"""Which customer messages an order's state calls for: pure functions over the snapshot's rows.

Progress messages follow the order's way to the customer: order_created, shipped,
out_for_delivery, delivered. Each makes the earlier ones moot: an order that moved several
stages between two runs gets the latest message that is on, not a burst, and an earlier one
still waiting (for the morning, say) is dropped as superseded. `exception` (the parcel is in
trouble, once per kind of trouble) and `delayed` (the expected date moved past the promised one,
once) stand beside them; `link_renewed` gives an open order a fresh link when the last one it was
sent is about to expire. A cancelled order gets nothing, and what it still had waiting is dropped.

An event older than its `max_age` at first sight is not news (turning messages on over a month of
orders must not message last month's customers): it is counted, not recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Protocol

import pandas as pd

from order_pipeline.domain.times import as_utc, zone
from order_pipeline.notify.ledger import WAITING

ORDER_CREATED, SHIPPED, OUT_FOR_DELIVERY, DELIVERED = "order_created", "shipped", "out_for_delivery", "delivered"
EXCEPTION, DELAYED, LINK_RENEWED, RESEND = "exception", "delayed", "link_renewed", "resend"
PROGRESS = (ORDER_CREATED, SHIPPED, OUT_FOR_DELIVERY, DELIVERED)
EVENTS = (*PROGRESS, EXCEPTION, DELAYED, LINK_RENEWED)
# What happened, in a few words for the `{event}` field.
EVENT_WORDS = {
    ORDER_CREATED: "订单已创建",
    SHIPPED: "已发货",
    OUT_FOR_DELIVERY: "正在派送",
    DELIVERED: "已签收",
    EXCEPTION: "配送异常",
    DELAYED: "预计晚于承诺送达",
    LINK_RENEWED: "物流查询链接已更新",
    RESEND: "物流查询链接",
}
# Kuaidi100's trouble, as a customer reads it (a WeChat `thing` keyword holds 20 characters).
TROUBLE_WORDS = {
    "疑难": "包裹运输遇到问题，我们正在处理",
    "退签": "包裹被退回，我们会联系您",
    "退回": "包裹正在退回",
    "拒签": "包裹已被拒收",
    "清关异常": "包裹清关遇到问题，我们正在处理",
}
DEFAULT_TROUBLE = "包裹配送遇到问题，我们正在处理"
STAGES_SHIPPED = ("shipped", "in_transit")


class EventRule(Protocol):
    @property
    def max_age(self) -> timedelta: ...


@dataclass
class Plan:
    new: list[dict] = field(default_factory=list)  # order_no, event, event_key: to record as pending
    moot: list[tuple[int, str]] = field(default_factory=list)  # (ledger id, why) of waiting rows to drop
    too_old: int = 0  # events not news any more at first sight


def trouble_words(reason: str | None) -> str:
    """The snapshot's `exception_reason` ("拒签: 收件人拒收") in the customer's words."""
    kind = (reason or "").split(":", 1)[0].strip()
    return TROUBLE_WORDS.get(kind, DEFAULT_TROUBLE)


def trouble_kind(reason: str | None) -> str:
    return (reason or "").split(":", 1)[0].strip() or "异常"


def local_date(ts, tz: str) -> date | None:
    t = as_utc(ts)
    return None if t is None else t.astimezone(zone(tz)).date()


def _progress(o) -> str | None:
    """The furthest progress event the order has reached; None for an order in trouble."""
    if o.stage == "delivered":
        return DELIVERED
    if o.stage == "exception":
        return None
    if bool(o.out_for_delivery):
        return OUT_FOR_DELIVERY
    if o.stage in STAGES_SHIPPED and as_utc(o.shipped_at) is not None:
        return SHIPPED
    return ORDER_CREATED


def _happened(o, event: str) -> datetime | None:
    """When the order reached a progress event (out for delivery: its latest carrier event)."""
    column = {ORDER_CREATED: "ordered_at", SHIPPED: "shipped_at", DELIVERED: "delivered_at"}.get(
        event, "latest_event_at"
    )
    return as_utc(getattr(o, column))


def _delayed(o, tz: str) -> bool:
    if o.stage in ("delivered", "exception") or o.promised_date is None or pd.isna(o.promised_date):
        return False
    eta = local_date(o.eta, tz)
    promised = o.promised_date if isinstance(o.promised_date, date) else pd.Timestamp(o.promised_date).date()
    return eta is not None and eta > promised


def plan_events(orders: pd.DataFrame, told: pd.DataFrame, events: dict[str, EventRule], now: datetime, tz: str) -> Plan:
    """What to record for `orders` (snapshot rows) given the ledger's rows for them (`told`:
    id, order_no, event, event_key, status) and the events that are on."""
    plan = Plan()
    by_order: dict[str, list] = {}
    for row in told.itertuples(index=False):
        by_order.setdefault(str(row.order_no), []).append(row)
    for o in orders.itertuples(index=False):
        rows = by_order.get(str(o.order_no), [])
        if o.status == "cancelled":
            plan.moot += [(int(r.id), "cancelled") for r in rows if r.status in WAITING]
            continue
        keys = {r.event_key for r in rows}
        due = _due(o, events, keys, now, tz, plan)
        if due:
            plan.new += [{"order_no": o.order_no, "event": e, "event_key": k} for e, k in due]
        plan.moot += _superseded(rows, due)
    return plan


def _due(o, events: dict[str, EventRule], keys: set[str], now: datetime, tz: str, plan: Plan) -> list[tuple[str, str]]:
    due: list[tuple[str, str]] = []
    reached = _progress(o)
    if reached is not None:
        furthest = PROGRESS.index(reached)
        told_rank = max((PROGRESS.index(k) for k in keys if k in PROGRESS), default=-1)
        # The latest progress event that is on; an earlier one only when the later ones are off.
        for event in reversed(PROGRESS[: furthest + 1]):
            if PROGRESS.index(event) <= told_rank:
                break
            if event in events:
                at = _happened(o, event)
                if at is not None and at < now - events[event].max_age:
                    plan.too_old += 1
                else:
                    due.append((event, event))
                break
    if o.stage == "exception" and EXCEPTION in events:
        key = f"{EXCEPTION}:{trouble_kind(o.exception_reason)}"
        at = as_utc(o.latest_event_at)
        if key not in keys:
            if at is not None and at < now - events[EXCEPTION].max_age:
                plan.too_old += 1
            else:
                due.append((EXCEPTION, key))
    if DELAYED in events and DELAYED not in keys and _delayed(o, tz):
        due.append((DELAYED, DELAYED))
    return due


def _superseded(rows: list, due: list[tuple[str, str]]) -> list[tuple[int, str]]:
    """Waiting progress messages made moot by a later one due now (or by trouble, or by delivery)."""
    events = {e for e, _ in due}
    moot = []
    for r in rows:
        if r.status not in WAITING:
            continue
        later = [
            e for e in events if e in PROGRESS and r.event in PROGRESS and PROGRESS.index(e) > PROGRESS.index(r.event)
        ]
        if later:
            moot.append((int(r.id), f"superseded by {later[0]}"))
        elif EXCEPTION in events and r.event in PROGRESS:
            moot.append((int(r.id), "superseded by exception"))
        elif DELIVERED in events and r.event in (EXCEPTION, DELAYED, LINK_RENEWED):
            moot.append((int(r.id), "superseded by delivered"))
    return moot


def renewal_key(expires_at: datetime) -> str:
    """One renewal per expiring link: the key names the expiry it replaces."""
    return f"{LINK_RENEWED}@{expires_at.astimezone(UTC):%Y%m%dT%H%M}"
