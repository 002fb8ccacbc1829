"""Publish the tracking tables downstream apps read, in one transaction.

The snapshot, the parcels and the timeline of every order that `unified_orders`
recomputed since the last publish are brought up to date together, by SQL inside
the warehouse: a reader sees the old rows or the new ones, never a mix, and no row
travels through Python.

A full rebuild empties the tables and inserts every row. An incremental run writes
only what differs, and reads little more than that:
- snapshot and parcel rows are upserted by key (a parcel that did not change is not
  rewritten);
- stage rows of the timeline follow the stage times: where an order's new time for a
  stage differs from the one published in the snapshot, the old row is deleted and
  the new one inserted, each found through the timeline's index;
- carrier rows are compared, whole, only for orders one of whose parcels was shipped,
  moved to another order or got carrier news.
Most changes touch one or two rows of an order's timeline; rewriting, or even
comparing, its other rows at random places in a 10M-row table is what made an
incremental run slow.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from order_pipeline.contract.schema import (
    BATCH,
    RAW_TABLES,
    order_tracking_events,
    order_tracking_parcels,
    order_tracking_snapshot,
    raw_tracking,
    raw_tracking_events,
    unified_orders,
)
from order_pipeline.domain.stages import SIGNED_STATE
from order_pipeline.warehouse.engine import prefer_index_lookups, temporary_orders
from order_pipeline.warehouse.frames import upsert_select
from order_pipeline.warehouse.rebuild import replacing
from order_pipeline.warehouse.state import PUBLISHED_BATCH, PUBLISHED_STAGE_COUNTS, get_state, set_state

log = logging.getLogger(__name__)

# Orders per stage, kept up to date by each publish for its metadata and the ops board's funnel:
# counting the whole snapshot took 0.5-1.0 s on PostgreSQL at 1M orders once incremental runs had
# left its pages not all-visible (an index-only scan then visits the table too). An incremental
# run counts only the orders it republishes, through the primary key.
STAGE_TIMES = (
    ("ordered", "ordered_at"),
    ("paid", "paid_at"),
    ("locked", "locked_at"),
    ("shipped", "shipped_at"),
    ("in_transit", "in_transit_at"),
    ("delivered", "delivered_at"),
)
TIMELINE = [c.name for c in order_tracking_events.c]


@dataclass(frozen=True)
class PublishResult:
    orders: int  # orders published by this run
    events_written: int  # timeline rows inserted or deleted (a full rebuild inserts every one)
    carrier_orders: int  # orders whose carrier rows were compared (every order on a full rebuild)
    full: bool
    stage_counts: dict[str, int]


def publish(engine: sa.Engine, now: datetime, full: bool = False) -> PublishResult:
    with engine.begin() as conn:
        since = 0 if full else int(get_state(conn, PUBLISHED_BATCH, "0"))
        upto = conn.execute(sa.select(sa.func.max(unified_orders.c[BATCH]))).scalar() or 0
        full = full or since == 0
        counted = None  # the stage counts the last publish stored, read by an incremental run
        leaving = None  # an incremental run's republished orders, counted per stage before it
        if full:
            with replacing(conn, order_tracking_snapshot, order_tracking_parcels, order_tracking_events) as target:
                orders = _insert(conn, target[order_tracking_snapshot], _snapshot_rows(now))
                _insert(conn, target[order_tracking_parcels], _parcel_rows())
                written = _insert(conn, target[order_tracking_events], _stage_rows(unified_orders))
                written += _insert(conn, target[order_tracking_events], _carrier_rows())
            carrier_orders = orders
        else:
            prefer_index_lookups(conn)
            touched = sa.select(unified_orders.c.order_no).where(unified_orders.c[BATCH] > since)
            # Both before the snapshot and the parcels change: they compare with what those published.
            written = _update_stage_rows(conn, since)
            carrier = temporary_orders(conn, "tmp_carrier_orders", _parcels_changed(since))
            counted = get_state(conn, PUBLISHED_STAGE_COUNTS)
            leaving = _count_stages(conn, touched) if counted is not None else None
            orders = upsert_select(
                conn,
                order_tracking_snapshot,
                _snapshot_rows(now).where(unified_orders.c.order_no.in_(touched)),
                ["order_no"],
            )
            _update_parcels(conn, touched)
            written += _update_carrier_rows(conn, sa.select(carrier.c.order_no))
            carrier_orders = conn.execute(sa.select(sa.func.count()).select_from(carrier)).scalar_one()
            carrier.drop(conn)
        if counted is None or leaving is None:
            counts = _count_stages(conn)
        else:  # the published counts, moved by the orders this run republished
            counts = Counter(json.loads(counted))
            counts.subtract(leaving)
            counts.update(_count_stages(conn, touched))
        counts = {stage: n for stage, n in sorted(counts.items()) if n > 0}
        set_state(conn, PUBLISHED_BATCH, str(upto), now)
        set_state(conn, PUBLISHED_STAGE_COUNTS, json.dumps(counts), now)
    if full and engine.dialect.name == "postgresql":
        _vacuum(engine, order_tracking_snapshot, order_tracking_parcels, order_tracking_events)
    return PublishResult(orders, written, carrier_orders, full, counts)


def published_stage_counts(conn: sa.Connection) -> dict[str, int]:
    """Orders per stage in the snapshot, as the last publish left them (stored with it, in one transaction)."""
    counted = get_state(conn, PUBLISHED_STAGE_COUNTS)
    return json.loads(counted) if counted is not None else dict(_count_stages(conn))


def _count_stages(conn: sa.Connection, orders: sa.Select | None = None) -> Counter:
    s = order_tracking_snapshot
    q = sa.select(s.c.stage, sa.func.count()).group_by(s.c.stage)
    return Counter(dict(conn.execute(q if orders is None else q.where(s.c.order_no.in_(orders))).all()))


def _vacuum(engine: sa.Engine, *tables: sa.Table) -> None:
    """Vacuum freshly rebuilt tables now rather than when autovacuum gets to them.

    Autovacuum visits a table soon after millions of rows went in, at a moment of its
    choosing: during the next incremental run, say. Until then the first read of each page
    also looks its rows up in the commit log and writes the page again. VACUUM cannot run
    in a transaction; a failure is logged, the tables are published anyway.
    """
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for table in tables:
                conn.exec_driver_sql(f"VACUUM {table.name}")
    except DBAPIError as e:
        log.warning("VACUUM after the rebuild failed: %s", e)


def _insert(conn: sa.Connection, table: sa.Table, query: sa.Select | sa.CompoundSelect) -> int:
    names = [c.name for c in query.selected_columns]
    return conn.execute(table.insert().from_select(names, query)).rowcount


def _update_stage_rows(conn: sa.Connection, since: int) -> int:
    """Move the stage rows of orders recomputed since batch `since` to their new stage times.

    The snapshot still holds the published times, and the timeline holds exactly one row
    per published time. In one pass over the recomputed orders, each (order, stage) whose
    time changed goes into a temporary table; then the rows of the old times are deleted
    and rows for the new ones inserted, both through the timeline's index. Returns the
    rows written.
    """
    u, p, e = unified_orders, order_tracking_snapshot, order_tracking_events
    stages = sa.union_all(*(sa.select(sa.literal(stage).label("stage")) for stage, _ in _stage_times(u))).subquery()

    def at(table: sa.Table) -> sa.Case:
        return sa.case(*((stages.c.stage == stage, time) for stage, time in _stage_times(table)))

    moves = sa.Table(
        "tmp_stage_moves",
        sa.MetaData(),
        sa.Column("order_no", sa.Text),
        sa.Column("stage", sa.Text),
        sa.Column("published_at", sa.DateTime(timezone=True)),
        sa.Column("derived_at", sa.DateTime(timezone=True)),
        prefixes=["TEMPORARY"],
    )
    moves.create(conn)
    conn.execute(
        moves.insert().from_select(
            ["order_no", "stage", "published_at", "derived_at"],
            sa.select(u.c.order_no, stages.c.stage, at(p), at(u))
            .select_from(u.outerjoin(p, p.c.order_no == u.c.order_no).join(stages, sa.true()))
            .where(u.c[BATCH] > since)
            .where(at(p).is_distinct_from(at(u))),
        )
    )
    key = sa.tuple_(e.c.order_no, e.c.event_at, e.c.kind, e.c.stage)  # the index's first columns
    removed = conn.execute(
        e.delete().where(
            key.in_(
                sa.select(moves.c.order_no, moves.c.published_at, sa.literal("stage"), moves.c.stage).where(
                    moves.c.published_at.is_not(None)
                )
            )
        )
    ).rowcount
    added = conn.execute(
        e.insert().from_select(
            TIMELINE,
            _stage_row(moves.c.order_no, moves.c.derived_at, moves.c.stage).where(moves.c.derived_at.is_not(None)),
        )
    ).rowcount
    moves.drop(conn)
    return removed + added


def _parcels_changed(since: int) -> sa.CompoundSelect:
    """Orders whose carrier rows may differ from the published ones.

    An order's carrier rows change when one of its parcels is shipped, moves to another
    order or gets carrier news: its `raw_shipments` or `raw_tracking` row is written after
    batch `since` (the tracking store replaces a waybill's events together with that row).
    The order a moved parcel left is found through the published parcels.
    """
    s, t, parcels = RAW_TABLES["shipments"], raw_tracking, order_tracking_parcels
    waybills = sa.union(
        sa.select(t.c.waybill_no).where(t.c[BATCH] > since), sa.select(s.c.waybill_no).where(s.c[BATCH] > since)
    )
    return sa.union(
        sa.select(s.c.order_no).where(s.c.waybill_no.in_(waybills)),
        sa.select(parcels.c.order_no).where(parcels.c.waybill_no.in_(waybills)),
    )


def _update_parcels(conn: sa.Connection, touched: sa.Select) -> None:
    """Upsert the touched orders' parcels, then drop rows of theirs that no shipment names any more."""
    p, s = order_tracking_parcels, RAW_TABLES["shipments"]
    upsert_select(conn, p, _parcel_rows().where(s.c.order_no.in_(touched)), ["waybill_no"], skip_unchanged=True)
    conn.execute(
        p.delete()
        .where(p.c.order_no.in_(touched))
        .where(~sa.exists().where(s.c.waybill_no == p.c.waybill_no).where(s.c.order_no == p.c.order_no))
    )


def _update_carrier_rows(conn: sa.Connection, orders: sa.Select) -> int:
    """Make the carrier rows of `orders` what a full rebuild would publish, writing only the difference.

    The wanted rows go into a temporary table; published rows not among them are
    deleted and wanted rows not yet published are inserted. Carrier events are unique
    per waybill, time and text, so comparing whole rows is exact. Returns the rows written.
    """
    e = order_tracking_events
    wanted = sa.Table(
        "tmp_carrier_rows",
        sa.MetaData(),
        *(sa.Column(c.name, c.type) for c in e.c),
        sa.Index("tmp_carrier_rows_order_time", "order_no", "event_at"),
        prefixes=["TEMPORARY"],
    )
    wanted.create(conn)
    s = RAW_TABLES["shipments"]
    conn.execute(wanted.insert().from_select(TIMELINE, _carrier_rows().where(s.c.order_no.in_(orders))))
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"ANALYZE {wanted.name}")  # temporary tables get no autovacuum statistics

    def same(a: sa.Table, b: sa.Table) -> sa.ColumnElement:
        keyed = [a.c[c] == b.c[c] for c in ("order_no", "event_at", "kind")]  # never NULL: the index applies
        return sa.and_(
            *keyed, *(a.c[c].is_not_distinct_from(b.c[c]) for c in ("stage", "waybill_no", "context", "area"))
        )

    removed = conn.execute(
        e.delete()
        .where(e.c.order_no.in_(orders))
        .where(e.c.kind == "carrier")
        .where(~sa.exists().where(same(wanted, e)))
    ).rowcount
    added = conn.execute(
        e.insert().from_select(TIMELINE, sa.select(*wanted.c).where(~sa.exists().where(same(e, wanted))))
    ).rowcount
    wanted.drop(conn)
    return added + removed


def _snapshot_rows(now: datetime) -> sa.Select:
    cols = [c for c in unified_orders.c if c.name != BATCH]
    return sa.select(*cols, sa.literal(now, sa.DateTime(timezone=True)).label("published_at"))


def _parcel_rows() -> sa.Select:
    s, t, d = RAW_TABLES["shipments"], raw_tracking, RAW_TABLES["deliveries"]
    return sa.select(
        s.c.waybill_no,
        s.c.order_no,
        s.c.carrier_code,
        s.c.weight_kg,
        s.c.shipped_at,
        t.c.state.label("carrier_state"),
        # Signed as `stages` counts it: the carrier says so, or a proof of delivery exists.
        sa.or_(
            t.c.is_signed.is_(True), sa.func.coalesce(t.c.state, -1) == SIGNED_STATE, d.c.waybill_no.is_not(None)
        ).label("is_signed"),
        d.c.signer,
        d.c.signed_at,
        t.c.last_event_at.label("latest_event_at"),
        t.c.last_context.label("latest_event_context"),
        t.c.predicted_arrival.label("carrier_eta"),
    ).select_from(s.outerjoin(t, t.c.waybill_no == s.c.waybill_no).outerjoin(d, d.c.waybill_no == s.c.waybill_no))


def _stage_times(table: sa.Table) -> list[tuple[str, sa.ColumnElement]]:
    """(stage, when an order of `table` reached it) for each stage row of the timeline; NULL: no row."""
    cancelled_at = sa.case((table.c.stage == "cancelled", table.c.source_updated_at))
    return [*((stage, table.c[col]) for stage, col in STAGE_TIMES), ("cancelled", cancelled_at)]


def _stage_row(order_no: sa.ColumnElement, at: sa.ColumnElement, stage: str | sa.ColumnElement) -> sa.Select:
    null = sa.null()
    stage = sa.literal(stage) if isinstance(stage, str) else stage
    return sa.select(
        order_no,
        at.label("event_at"),
        sa.literal("stage").label("kind"),
        stage.label("stage"),
        null.label("waybill_no"),
        null.label("context"),
        null.label("area"),
    )


def _stage_rows(u: sa.Table) -> sa.CompoundSelect:
    """Every stage row of the timeline."""
    return sa.union_all(*(_stage_row(u.c.order_no, at, stage).where(at.is_not(None)) for stage, at in _stage_times(u)))


def _carrier_rows() -> sa.Select:
    """Every carrier row of the timeline: the events of each shipped parcel, under its order."""
    s, e = RAW_TABLES["shipments"], raw_tracking_events
    return sa.select(
        s.c.order_no,
        e.c.event_at,
        sa.literal("carrier").label("kind"),
        sa.null().label("stage"),
        e.c.waybill_no,
        e.c.context,
        e.c.area,
    ).select_from(e.join(s, s.c.waybill_no == e.c.waybill_no))
