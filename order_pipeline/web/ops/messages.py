"""The customer's messages on the ops order page, and a staff member's "resend the tracking link".

The page reads the message ledger (`notify.ledger`, masked numbers only) and shows each message's
status in words; a warehouse without the notifier has no ledger, and the page says there are no
messages. A resend is one `pending` ledger row (event `resend`) that the sender sends like any
other message, quiet hours included. At most one per order every `RESEND_EVERY`, counted in the
ledger itself, so a double click, a second browser tab or a colleague on the same call does not
message the customer twice; a cancelled order gets none (the sender would drop it anyway).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine

from order_pipeline.contract.customer_schema import customer_notifications
from order_pipeline.domain.times import local_time, utc
from order_pipeline.notify import ledger
from order_pipeline.notify.events import EVENT_WORDS, RESEND
from order_pipeline.web.db import reading
from order_pipeline.web.ops import queries

RESEND_EVERY = timedelta(minutes=10)

STATUS_WORDS = {
    ledger.PENDING: "待发送",
    ledger.HELD: "暂缓发送",
    ledger.SENT: "已发送",
    ledger.FAILED: "发送失败",
    ledger.INVALID: "无法发送",
    ledger.SUPPRESSED: "已屏蔽",
    ledger.SUPERSEDED: "不再发送",
    ledger.IN_DOUBT: "可能已发送（待核实）",
}
# What a redirect back to the order page may ask it to say (`?notice=`): fixed texts, nothing echoed.
NOTICES = {"resend_queued": "已加入发送队列：客户将收到新的查询链接（夜间免打扰时段内则在早上发出）。"}

# The app runs as one server process: this makes the check and the insert of a resend one step for
# every request it serves (the ledger's unique key catches two within the same second in any case).
_QUEUEING = threading.Lock()


def message_rows(rows: Sequence[Mapping], tz: str) -> list[dict]:
    return [
        {
            "time": local_time(r.get("created_at"), tz),
            "sent_at": local_time(r.get("sent_at"), tz),
            "event": EVENT_WORDS.get(r["event"], r["event"]),
            "channel": r.get("channel") or "—",
            "status": STATUS_WORDS.get(r["status"], r["status"]),
            "status_code": r["status"],
            "reason": r.get("reason") or "",
            "phone": r.get("phone_masked") or "",
            "attempts": r.get("attempts") or 0,
            "requested_by": r.get("requested_by") or "",
        }
        for r in rows
    ]


def resend_key(now: datetime) -> str:
    return f"{RESEND}@{utc(now):%Y%m%dT%H%M%S}"


def is_cancelled(order: Mapping) -> bool:
    return order.get("status") == "cancelled" or order.get("stage") == "cancelled"


@dataclass(frozen=True)
class Resend:
    """What became of a resend: its audit outcome, the HTTP status, and what the page tells staff."""

    outcome: str  # resend_queued | resend_too_soon | resend_cancelled | resend_unavailable | not_found
    status: int = 200
    notice: str = ""
    retry_after: int = 0


def queue_resend(
    engine: Engine, order_no: str, username: str, now: datetime, tz: str, *, enabled: bool = True
) -> Resend:
    """Record a resend of the order's tracking link for the sender, unless one is not allowed now
    (`enabled` False: the config sends no customer messages, so a resend would never go out)."""
    now = utc(now)
    with _QUEUEING:
        with reading(engine) as conn:
            order = queries.staff_order(conn, order_no)
            ready = enabled and order is not None and queries.has_table(conn, customer_notifications)
            last = queries.last_resend(conn, order_no, now - RESEND_EVERY) if ready else None
        if order is None:
            return Resend("not_found", 404)
        if is_cancelled(order):
            return Resend("resend_cancelled", 409, "此订单已取消，不再给客户发送消息。")
        if not ready:
            return Resend("resend_unavailable", 409, "客户消息未启用，无法重发查询链接。")
        if last is None:
            row = {"order_no": order_no, "event": RESEND, "event_key": resend_key(now)}
            with engine.begin() as conn:  # a write transaction of its own, as short as can be
                added = ledger.record(conn, [row], now, requested_by=username)
            if added:
                return Resend("resend_queued", 303)
            last = {"created_at": now, "requested_by": username}  # recorded this very second by another request
    again = last["created_at"] + RESEND_EVERY
    who = last["requested_by"] or "—"
    notice = (
        f"{local_time(last['created_at'], tz, '%H:%M:%S')} 已由 {who} 请求重发，"
        f"每个订单 {int(RESEND_EVERY.total_seconds() // 60)} 分钟内只发一次；"
        f"请在 {local_time(again, tz, '%H:%M:%S')} 之后再试。"
    )
    return Resend("resend_too_soon", 429, notice, max(1, math.ceil((again - now).total_seconds())))
