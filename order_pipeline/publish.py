"""Publish the tracking tables downstream apps read, in one transaction.

The snapshot, the parcels and the timeline of every order that `unified_orders`
recomputed since the last publish are replaced together, by INSERT ... SELECT
inside the warehouse: a reader sees the old rows or the new ones, never a mix,
and no row travels through Python.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from .schema import (BATCH, RAW_TABLES, order_tracking_events, order_tracking_parcels, order_tracking_snapshot,
                     raw_tracking, raw_tracking_events, unified_orders)
from .stages import SIGNED_STATE
from .warehouse import get_state, rebuilding, set_state

STATE_KEY = "published_batch"
STAGE_TIMES = (("ordered", "ordered_at"), ("paid", "paid_at"), ("locked", "locked_at"), ("shipped", "shipped_at"),
               ("in_transit", "in_transit_at"), ("delivered", "delivered_at"))


@dataclass(frozen=True)
class PublishResult:
    orders: int
    events: int
    full: bool
    stage_counts: dict[str, int]


def publish(engine: sa.Engine, now: datetime, full: bool = False) -> PublishResult:
    with engine.begin() as conn:
        since = 0 if full else int(get_state(conn, STATE_KEY, "0"))
        upto = conn.execute(sa.select(sa.func.max(unified_orders.c[BATCH]))).scalar() or 0
        full = full or since == 0
        touched = None if full else sa.select(unified_orders.c.order_no).where(unified_orders.c[BATCH] > since)

        def scope(col):
            return sa.true() if touched is None else col.in_(touched)

        tables = (order_tracking_snapshot, order_tracking_parcels, order_tracking_events)
        with rebuilding(conn, *tables) if full else nullcontext():
            if not full:
                for table in tables:
                    conn.execute(table.delete().where(scope(table.c.order_no)))
            orders = _insert(conn, order_tracking_snapshot, _snapshot_rows(now).where(scope(unified_orders.c.order_no)))
            _insert(conn, order_tracking_parcels, _parcel_rows().where(scope(RAW_TABLES["shipments"].c.order_no)))
            events = sum(_insert(conn, order_tracking_events, q.where(scope(col))) for q, col in _event_rows())
        set_state(conn, STATE_KEY, str(upto), now)
        counts = dict(conn.execute(sa.select(order_tracking_snapshot.c.stage, sa.func.count())
                                   .group_by(order_tracking_snapshot.c.stage)).all())
    return PublishResult(orders, events, full, counts)


def _insert(conn: sa.Connection, table: sa.Table, query: sa.Select) -> int:
    names = [c.name for c in query.selected_columns]
    return conn.execute(table.insert().from_select(names, query)).rowcount


def _snapshot_rows(now: datetime) -> sa.Select:
    cols = [c for c in unified_orders.c if c.name != BATCH]
    return sa.select(*cols, sa.literal(now, sa.DateTime(timezone=True)).label("published_at"))


def _parcel_rows() -> sa.Select:
    s, t, d = RAW_TABLES["shipments"], raw_tracking, RAW_TABLES["deliveries"]
    return (
        sa.select(
            s.c.waybill_no, s.c.order_no, s.c.carrier_code, s.c.weight_kg, s.c.shipped_at,
            t.c.state.label("carrier_state"),
            # Signed as `stages` counts it: the carrier says so, or a proof of delivery exists.
            sa.or_(t.c.is_signed.is_(True), sa.func.coalesce(t.c.state, -1) == SIGNED_STATE,
                   d.c.waybill_no.is_not(None)).label("is_signed"),
            d.c.signer, d.c.signed_at,
            t.c.last_event_at.label("latest_event_at"), t.c.last_context.label("latest_event_context"),
        )
        .select_from(s.outerjoin(t, t.c.waybill_no == s.c.waybill_no).outerjoin(d, d.c.waybill_no == s.c.waybill_no))
    )


def _event_rows() -> list[tuple[sa.Select, sa.Column]]:
    """(query, its order_no column) for each part of the timeline."""
    u, s, e = unified_orders, RAW_TABLES["shipments"], raw_tracking_events
    null = sa.null()
    parts = [
        (sa.select(u.c.order_no, u.c[col].label("event_at"), sa.literal("stage").label("kind"),
                   sa.literal(stage).label("stage"), null.label("waybill_no"), null.label("context"), null.label("area"))
         .where(u.c[col].is_not(None)), u.c.order_no)
        for stage, col in STAGE_TIMES
    ]
    parts.append((
        sa.select(u.c.order_no, u.c.source_updated_at.label("event_at"), sa.literal("stage").label("kind"),
                  sa.literal("cancelled").label("stage"), null.label("waybill_no"), null.label("context"),
                  null.label("area"))
        .where(u.c.stage == "cancelled").where(u.c.source_updated_at.is_not(None)), u.c.order_no))
    parts.append((
        sa.select(s.c.order_no, e.c.event_at, sa.literal("carrier").label("kind"), null.label("stage"),
                  e.c.waybill_no, e.c.context, e.c.area)
        .select_from(e.join(s, s.c.waybill_no == e.c.waybill_no)), s.c.order_no))
    return parts
