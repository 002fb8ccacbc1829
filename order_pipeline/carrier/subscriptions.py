"""Kuaidi100 subscriptions in the warehouse: which waybills to subscribe, and what came of it.

Each function takes a connection and leaves the transaction to the caller, so a run's answers
(or a push) are written together with whatever else that caller stores.

A waybill's row moves through these states:

- no row: never asked. `pending`: a 500 or no answer; asked again after a pause that doubles
  with each attempt. These and `aborted` rows are due again once their `next_attempt_at` passed,
  as long as the month's attempts stay under Kuaidi100's cap.
- `subscribed` (200) and `duplicate` (501): Kuaidi100 tracks it and pushes its news.
- `rejected` (700, 701, 702): not asked again, unless the shipment's carrier code changes.
- `aborted`: an abort push ("3天查询无记录", "60天无变化"); due again 30 minutes later.
- `finished`: a shutdown push; nothing more is asked.

An invalid or expired key (600, 601) says nothing about the waybill: its row is left as it was.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from order_pipeline.carrier.protocol import DEFAULT_TZ, PushUpdate
from order_pipeline.carrier.subscription import MONTHLY_CAP, RESUBSCRIBE_AFTER, Outcome, SubscribeAnswer
from order_pipeline.contract.schema import RAW_TABLES, carrier_subscriptions, pipeline_rejects, raw_tracking
from order_pipeline.warehouse.frames import read_frame

SIGNED = 3
PENDING, SUBSCRIBED, DUPLICATE, REJECTED, ABORTED, FINISHED = (
    "pending",
    "subscribed",
    "duplicate",
    "rejected",
    "aborted",
    "finished",
)
STATE_OF = {Outcome.ACCEPTED: SUBSCRIBED, Outcome.DUPLICATE: DUPLICATE, Outcome.REJECTED: REJECTED}
ASK_AGAIN = (PENDING, ABORTED)


@dataclass(frozen=True, slots=True)
class SubscribeResult:
    """One subscribe request: the answer, or why there was none (a transport failure, an unreadable answer)."""

    waybill_no: str
    carrier_code: str
    answer: SubscribeAnswer | None
    error: str | None = None


def month_of(now: datetime) -> str:
    """The month Kuaidi100 counts a subscription in: its own, China time."""
    return now.astimezone(ZoneInfo(DEFAULT_TZ)).strftime("%Y-%m")


def rejected_shipment(waybill_no: sa.ColumnElement) -> sa.Exists:
    """The shipment row of `waybill_no` stands rejected (an orphan waybill, a row breaking the contract):
    neither subscribed nor polled until its row is fixed."""
    r = pipeline_rejects
    return sa.exists().where(r.c.source == "shipments", r.c.record_key == waybill_no)


def due_subscriptions(conn: sa.Connection, now: datetime, cap: int) -> pd.DataFrame:
    """Waybills to subscribe now, at most `cap`: never-asked first, then by shipping time.

    Shipped, not signed, their order known (an orphan shipment waits in the rejects) and not
    cancelled; never asked, or pending/aborted past their pause, within the month's cap; or
    rejected under a carrier code the shipment no longer has. Columns: waybill_no, carrier_code,
    phone (the order's, which 顺丰 and 中通 need) and to (the ship address, for the predicted arrival).
    """
    s, o, t, sub = RAW_TABLES["shipments"], RAW_TABLES["orders"], raw_tracking, carrier_subscriptions
    q = (
        sa.select(
            s.c.waybill_no,
            s.c.carrier_code,
            o.c.customer_phone.label("phone"),
            o.c.ship_address.label("to"),
        )
        .select_from(
            s.join(o, o.c.order_no == s.c.order_no)
            .outerjoin(t, t.c.waybill_no == s.c.waybill_no)
            .outerjoin(sub, sub.c.waybill_no == s.c.waybill_no)
        )
        .where(o.c.status != "cancelled", ~rejected_shipment(s.c.waybill_no))
        .where(
            sa.or_(
                t.c.waybill_no.is_(None), sa.and_(t.c.is_signed.is_(False), sa.func.coalesce(t.c.state, -1) != SIGNED)
            )
        )
        .where(
            sa.or_(
                sub.c.waybill_no.is_(None),
                sa.and_(
                    sub.c.state.in_(ASK_AGAIN),
                    sa.or_(sub.c.next_attempt_at.is_(None), sub.c.next_attempt_at <= now),
                ),
                sa.and_(sub.c.state == REJECTED, sub.c.carrier_code != s.c.carrier_code),
            )
        )
        .where(
            sa.or_(
                sub.c.month.is_(None),
                sub.c.month != month_of(now),
                sub.c.attempts_this_month < MONTHLY_CAP,
                sub.c.carrier_code != s.c.carrier_code,  # Kuaidi100 counts per carrier and number
            )
        )
        .order_by(sub.c.waybill_no.is_not(None), s.c.shipped_at, s.c.waybill_no)
        .limit(cap)
    )
    return read_frame(conn, q)


def record_subscribe_results(conn: sa.Connection, results: Sequence[SubscribeResult], now: datetime) -> Counter[str]:
    """Store what each subscribe request came to; returns how many of each outcome ("error" for no answer)."""
    counts: Counter[str] = Counter()
    stored = _stored(conn, [r.waybill_no for r in results])
    month = month_of(now)
    rows = []
    for result in results:
        answer = result.answer
        counts[answer.outcome.value if answer else "error"] += 1
        if answer is not None and answer.outcome is Outcome.STOP_KEY:
            continue
        before = stored.get(result.waybill_no, {})
        same_count = before.get("month") == month and before.get("carrier_code") == result.carrier_code
        attempts = ((before.get("attempts_this_month") or 0) if same_count else 0) + 1
        state = STATE_OF.get(answer.outcome, PENDING) if answer else PENDING
        rows.append(
            {
                "waybill_no": result.waybill_no,
                "carrier_code": result.carrier_code,
                "state": state,
                "return_code": answer.return_code if answer else None,
                "message": (answer.reason if answer else result.error) or None,
                "subscribed_at": now if state in (SUBSCRIBED, DUPLICATE) else before.get("subscribed_at"),
                "attempts_this_month": attempts,
                "month": month,
                "last_push_at": before.get("last_push_at"),
                "last_event_at": before.get("last_event_at"),
                # A 500 is also what a request out of spec gets: back off, and the cap ends it.
                "next_attempt_at": now + RESUBSCRIBE_AFTER * 2 ** (attempts - 1) if state == PENDING else None,
                "updated_at": now,
            }
        )
    _upsert(conn, rows)
    return counts


def record_push(conn: sa.Connection, update: PushUpdate, now: datetime) -> str:
    """Store what a verified push says about its waybill's subscription; returns the state it leaves.

    A push older than one already stored (its newest event is older) is a replay and changes
    nothing. `shutdown` finishes the waybill for good. `abort` makes it due again after the
    pause, except the abort that tells of Kuaidi100's corrected carrier code (comNew without
    autoCheck): Kuaidi100 subscribed the waybill under that code itself and tracks it.
    """
    assert update.waybill_no is not None  # verified_push refuses a push that names no waybill
    before = _stored(conn, [update.waybill_no]).get(update.waybill_no, {})
    newest = update.answer.events[-1].at if update.answer and update.answer.events else None
    stored_newest = before.get("last_event_at")
    if newest is not None and stored_newest is not None and newest < stored_newest:
        return before["state"]
    code = update.com_new or update.carrier_code or before.get("carrier_code") or ""
    state = before.get("state")
    next_attempt = None
    if state == FINISHED:
        pass  # a late push does not reopen a finished waybill
    elif update.status == "shutdown":
        state = FINISHED
    elif update.status == "abort" and not update.com_new:
        state, next_attempt = ABORTED, now + RESUBSCRIBE_AFTER
    else:
        state = SUBSCRIBED
    _upsert(
        conn,
        [
            {
                "waybill_no": update.waybill_no,
                "carrier_code": code,
                "state": state,
                "return_code": before.get("return_code"),
                "message": update.message or None,
                "subscribed_at": before.get("subscribed_at"),
                "attempts_this_month": before.get("attempts_this_month") or 0,
                "month": before.get("month"),
                "last_push_at": now,
                "last_event_at": max(filter(None, (newest, stored_newest)), default=None),
                "next_attempt_at": next_attempt,
                "updated_at": now,
            }
        ],
    )
    assert state is not None
    return state


def _stored(conn: sa.Connection, waybills: Sequence[str]) -> dict[str, dict[str, Any]]:
    if not waybills:
        return {}
    sub = carrier_subscriptions
    rows = conn.execute(sa.select(sub).where(sub.c.waybill_no.in_(list(dict.fromkeys(waybills))))).mappings()
    return {row["waybill_no"]: _utc(dict(row)) for row in rows}


def _utc(row: dict[str, Any]) -> dict[str, Any]:
    """SQLite hands timestamps back naive; the warehouse's are UTC."""
    return {
        k: v.replace(tzinfo=ZoneInfo("UTC")) if isinstance(v, datetime) and v.tzinfo is None else v
        for k, v in row.items()
    }


def _upsert(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    rows = list({row["waybill_no"]: row for row in rows}.values())  # one statement may not touch a row twice
    insert = sqlite_insert if conn.dialect.name == "sqlite" else postgresql_insert
    stmt = insert(carrier_subscriptions)
    columns = [c for c in rows[0] if c != "waybill_no"]
    stmt = stmt.on_conflict_do_update(index_elements=["waybill_no"], set_={c: stmt.excluded[c] for c in columns})
    conn.execute(stmt, rows)
