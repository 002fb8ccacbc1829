"""Carrier tracking in the warehouse: which waybills are due a poll, and storing answers.

Polled answers and pushed callbacks land through the same `store_tracking_answers`,
so both paths touch the order the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import pandas as pd
import sqlalchemy as sa

from order_pipeline.carrier.protocol import PushUpdate, TrackingAnswer
from order_pipeline.carrier.subscriptions import DUPLICATE, SUBSCRIBED, record_push, rejected_shipment
from order_pipeline.contract.schema import BATCH, RAW_TABLES, carrier_subscriptions, raw_tracking, raw_tracking_events
from order_pipeline.domain.carrier_states import base_state
from order_pipeline.warehouse.frames import delete_keys, insert_frame, read_frame, replace_keys
from order_pipeline.warehouse.state import next_batch

SIGNED = 3
TRACKED = (SUBSCRIBED, DUPLICATE)  # Kuaidi100 pushes these waybills' news


def due_waybills(
    conn: sa.Connection, now: datetime, interval: timedelta, cap: int, silence: timedelta = timedelta(hours=2)
) -> pd.DataFrame:
    """Unsigned waybills of live orders not polled within `interval`, never-polled first, at most `cap`.

    The phone comes from the ERP order: 顺丰 and 丰网 answer only with it. A parcel of an order the
    ERP does not have is rejected by `unify` and asked about only once its order arrives (as is any
    rejected shipment row, until it is fixed). A waybill
    Kuaidi100 tracks by subscription is left to its pushes, until none came for `silence`
    (`carrier.push_silence`): a subscription that went quiet must not hide a parcel.
    """
    s, o, t, sub = RAW_TABLES["shipments"], RAW_TABLES["orders"], raw_tracking, carrier_subscriptions
    heard = sa.func.coalesce(sub.c.last_push_at, sub.c.subscribed_at)
    pushed = sa.and_(sub.c.state.in_(TRACKED), heard > now - silence)
    q = (
        sa.select(s.c.waybill_no, s.c.carrier_code, o.c.customer_phone.label("phone"))
        .select_from(
            s.join(o, o.c.order_no == s.c.order_no)
            .outerjoin(t, t.c.waybill_no == s.c.waybill_no)
            .outerjoin(sub, sub.c.waybill_no == s.c.waybill_no)
        )
        .where(
            sa.or_(
                t.c.waybill_no.is_(None), sa.and_(t.c.is_signed.is_(False), sa.func.coalesce(t.c.state, -1) != SIGNED)
            )
        )
        .where(sa.or_(t.c.polled_at.is_(None), t.c.polled_at <= now - interval))
        .where(sa.or_(o.c.status.is_(None), o.c.status != "cancelled"), ~rejected_shipment(s.c.waybill_no))
        .where(sa.or_(sub.c.waybill_no.is_(None), ~pushed))
        .order_by(t.c.polled_at.is_not(None), t.c.polled_at, s.c.shipped_at)
        .limit(cap)
    )
    return read_frame(conn, q)


def store_tracking_answers(engine: sa.Engine, answers: Sequence[TrackingAnswer], *, via: str, now: datetime) -> int:
    """Upsert each waybill's state and replace its events (Kuaidi100 always sends the whole history)."""
    if not answers:
        return 0
    states, events = [], []
    for a in answers:
        first = a.events[0] if a.events else None
        last = a.events[-1] if a.events else None
        states.append(
            {
                "waybill_no": a.waybill_no,
                "carrier_code": a.carrier_code,
                "state": base_state(a.state),
                "is_signed": bool(a.is_signed),
                "first_event_at": first and first.at,
                "last_event_at": last and last.at,
                "last_context": last and last.context,
                "last_area": last and last.area,
                "predicted_arrival": a.predicted_arrival,
                "polled_at": now,
                "poll_error": None,
                "via": via,
            }
        )
        events += [
            {"waybill_no": a.waybill_no, "event_at": e.at, "context": e.context, "area": e.area, "status": e.status}
            for e in a.events
        ]
    state_frame = _newer_than_stored(engine, pd.DataFrame(states))
    if state_frame.empty:
        return 0
    event_frame = pd.DataFrame(events, columns=["waybill_no", "event_at", "context", "area", "status"])
    event_frame = event_frame[event_frame["waybill_no"].isin(state_frame["waybill_no"])]
    event_frame = event_frame.drop_duplicates(["waybill_no", "event_at", "context"])
    with engine.begin() as conn:
        state_frame[BATCH] = next_batch(conn, now)
        replace_keys(conn, raw_tracking, state_frame, ["waybill_no"])
        delete_keys(conn, raw_tracking_events, state_frame[["waybill_no"]], ["waybill_no"])
        insert_frame(conn, raw_tracking_events, event_frame)
    return len(state_frame)


def store_push(engine: sa.Engine, update: PushUpdate, now: datetime) -> str:
    """A verified push: its tracking, then what it says of the waybill's subscription (the state it
    leaves: subscribed, aborted, finished).

    Both writes are idempotent: if the second fails, the receiver answers an error and
    Kuaidi100's push again stores the same tracking and records the subscription then.
    """
    if update.answer is not None:
        store_tracking_answers(engine, [update.answer], via="push", now=now)
    with engine.begin() as conn:
        return record_push(conn, update, now)


def _newer_than_stored(engine: sa.Engine, states: pd.DataFrame) -> pd.DataFrame:
    """Drop answers older than what is stored: a late or repeated push must not roll a parcel back."""
    t = raw_tracking
    with engine.connect() as conn:
        stored = read_frame(
            conn,
            sa.select(t.c.waybill_no, t.c.last_event_at.label("stored_at")).where(
                t.c.waybill_no.in_(states["waybill_no"].tolist())
            ),
            ["stored_at"],
        )
    merged = states.merge(stored, on="waybill_no", how="left")
    new_at = pd.to_datetime(merged["last_event_at"], utc=True)
    stale = merged["stored_at"].notna() & (new_at.isna() | (new_at < merged["stored_at"]))
    return states[~stale.to_numpy()].reset_index(drop=True)


def store_poll_errors(engine: sa.Engine, errors: dict[str, str], now: datetime) -> None:
    """Remember a failed poll so the waybill waits its interval, without touching its order."""
    if not errors:
        return
    with engine.begin() as conn:
        for waybill, message in errors.items():
            updated = conn.execute(
                raw_tracking.update()
                .where(raw_tracking.c.waybill_no == waybill)
                .values(polled_at=now, poll_error=message)
            ).rowcount
            if not updated:
                conn.execute(
                    raw_tracking.insert().values(
                        waybill_no=waybill, is_signed=False, polled_at=now, poll_error=message, via="poll", **{BATCH: 0}
                    )
                )
