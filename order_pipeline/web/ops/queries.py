"""Every SQL statement of the web app (SQLAlchemy Core): the published tables, the access log, and the
customer-message ledger and short links (`order_pipeline.notify.ledger`), which a warehouse without the
notifier does not have: those are asked for only once `has_table` says they exist.

Customer and search paths use indexed equality lookups with a LIMIT, so they
stay fast at a million orders: the snapshot's primary key, `phone_tail`, the
parcels' waybill key and `order_no` indexes, and (order_no, event_at) for events.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from order_pipeline.alerts.digests import changed_between
from order_pipeline.contract.customer_schema import customer_notifications, tracking_short_links
from order_pipeline.contract.schema import (
    order_alerts,
    order_tracking_events,
    order_tracking_parcels,
    order_tracking_snapshot,
    pipeline_state,
    tracking_access_log,
)
from order_pipeline.domain.times import as_utc
from order_pipeline.notify import ledger
from order_pipeline.notify.events import RESEND
from order_pipeline.pipeline.publish import published_stage_counts
from order_pipeline.warehouse.state import NEWEST_UPDATE_PREFIX

snap = order_tracking_snapshot
parcels_t = order_tracking_parcels
events_t = order_tracking_events

# (since, until) of the `changed_since`/`changed_until` filter, either end open (None); None: no filter.
Changed = tuple[datetime | None, datetime | None] | None

MAX_EVENTS = 200
SEARCH_LIMIT = 50
LIST_LIMIT = 200

CUSTOMER_COLUMNS = [
    snap.c[n]
    for n in (
        "order_no",
        "stage",
        "status",
        "customer_name",
        "customer_phone",
        "ship_address",
        "amount",
        "currency",
        "line_count",
        "total_qty",
        "ordered_at",
        "paid_at",
        "locked_at",
        "shipped_at",
        "in_transit_at",
        "delivered_at",
        "promised_date",
        "eta",
        "eta_source",
        "out_for_delivery",
        "exception_reason",
        "published_at",
    )
]
PARCEL_COLUMNS = [
    parcels_t.c[n]
    for n in (
        "waybill_no",
        "carrier_code",
        "weight_kg",
        "shipped_at",
        "carrier_state",
        "is_signed",
        "signer",
        "signed_at",
        "latest_event_at",
        "latest_event_context",
        "carrier_eta",
    )
]
LIST_COLUMNS = [
    snap.c[n]
    for n in (
        "order_no",
        "stage",
        "customer_name",
        "customer_phone",
        "ordered_at",
        "waiting_since",
        "responsible_role",
        "waybill_nos",
    )
]
EXPORT_COLUMNS = [
    snap.c[n]
    for n in (
        "order_no",
        "stage",
        "stage_label",
        "status",
        "customer_name",
        "customer_phone",
        "ship_address",
        "amount",
        "paid_amount",
        "currency",
        "ordered_at",
        "paid_at",
        "locked_at",
        "shipped_at",
        "in_transit_at",
        "delivered_at",
        "promised_date",
        "eta",
        "waybill_nos",
        "carrier_codes",
        "carrier_state",
        "exception_reason",
        "missing_info",
        "responsible_role",
        "waiting_since",
    )
]


@dataclass(frozen=True)
class Access:
    """One row of `tracking_access_log`."""

    at: datetime
    order_no: str | None
    actor: str
    outcome: str
    ip_hash: str | None
    user_agent: str | None


def _rows(result) -> list[dict]:
    return [dict(r) for r in result.mappings()]


def record_accesses(conn: Connection, rows: Sequence[Access]) -> None:
    conn.execute(
        tracking_access_log.insert(),
        [
            {
                "at": a.at,
                "order_no": a.order_no,
                "actor": a.actor,
                "outcome": a.outcome,
                "ip_hash": a.ip_hash,
                "user_agent": a.user_agent,
            }
            for a in rows
        ],
    )


def write_accesses(engine: Engine, rows: Sequence[Access], *, durable: bool = False) -> None:
    """Access rows in one short transaction of their own."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql" and not durable:
            # Page views need not wait for the server's WAL flush: on a crash at most the
            # last fraction of a second of audit rows is lost, never a half-written one.
            conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
        record_accesses(conn, rows)


def customer_order(conn: Connection, order_no: str) -> tuple[dict | None, list[dict], list[dict]]:
    order = conn.execute(sa.select(*CUSTOMER_COLUMNS).where(snap.c.order_no == order_no)).mappings().first()
    if order is None:
        return None, [], []
    return dict(order), order_parcels(conn, order_no), carrier_events(conn, order_no)


def order_parcels(conn: Connection, order_no: str) -> list[dict]:
    q = (
        sa.select(*PARCEL_COLUMNS)
        .where(parcels_t.c.order_no == order_no)
        .order_by(parcels_t.c.shipped_at, parcels_t.c.waybill_no)
    )
    return _rows(conn.execute(q.limit(100)))


def carrier_events(conn: Connection, order_no: str) -> list[dict]:
    q = (
        sa.select(events_t.c.event_at, events_t.c.waybill_no, events_t.c.context, events_t.c.area)
        .where(events_t.c.order_no == order_no, events_t.c.kind == "carrier")
        .order_by(events_t.c.event_at.desc())
        .limit(MAX_EVENTS)
    )
    return _rows(conn.execute(q))


def staff_order(conn: Connection, order_no: str) -> dict | None:
    row = conn.execute(sa.select(snap).where(snap.c.order_no == order_no)).mappings().first()
    return dict(row) if row else None


def order_alerts_for(conn: Connection, order_no: str) -> list[dict]:
    q = sa.select(order_alerts).where(order_alerts.c.order_no == order_no).order_by(order_alerts.c.last_seen.desc())
    return _rows(conn.execute(q.limit(100)))


def is_phone_term(term: str) -> bool:
    """Four digits (the phone's tail) or a whole mobile number."""
    return term.isdigit() and (len(term) == 4 or (len(term) == 11 and term.startswith("1")))


def search(conn: Connection, term: str) -> list[dict]:
    """Orders whose number, waybill number or phone (last four digits, or the whole number) is `term`."""
    if is_phone_term(term):
        q = sa.select(*LIST_COLUMNS).where(snap.c.phone_tail == term[-4:]).order_by(snap.c.ordered_at.desc())
        if len(term) == 4:
            return _rows(conn.execute(q.limit(SEARCH_LIMIT)))
        # A whole number: narrow by its tail (indexed), then compare digits, whatever the stored format.
        rows = _rows(conn.execute(q.limit(SEARCH_LIMIT * 20)))
        return [r for r in rows if re.sub(r"\D", "", r["customer_phone"] or "").endswith(term)][:SEARCH_LIMIT]
    by_waybill = sa.select(parcels_t.c.order_no).where(parcels_t.c.waybill_no == term).scalar_subquery()
    q = sa.select(*LIST_COLUMNS).where(sa.or_(snap.c.order_no == term, snap.c.order_no == by_waybill))
    return _rows(conn.execute(q.limit(SEARCH_LIMIT)))


def _filtered(stage: str | None, role: str | None, changed: Changed = None):
    conds = []
    if stage:
        conds.append(snap.c.stage == stage)
    if role:
        conds.append(snap.c.responsible_role == role)
    if changed and any(changed):
        # A status digest's orders: those that reached a stage in (since, until], as the digest counted them.
        conds.append(changed_between(*changed))
    return conds


def list_orders(conn: Connection, stage: str | None, role: str | None, changed: Changed = None) -> list[dict]:
    q = sa.select(*LIST_COLUMNS).where(*_filtered(stage, role, changed)).order_by(snap.c.waiting_since.asc())
    return _rows(conn.execute(q.limit(LIST_LIMIT)))


def export_batches(
    engine: Engine, stage: str | None, role: str | None, batch: int = 2000, changed: Changed = None
) -> Iterator[Sequence]:
    """Rows of the filtered list in batches, read with a server-side cursor."""
    q = sa.select(*EXPORT_COLUMNS).where(*_filtered(stage, role, changed)).order_by(snap.c.order_no)
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=batch).execute(q)
        yield from result.partitions()


def stage_counts(conn: Connection) -> dict[str, int]:
    """The funnel: kept by each publish, so a board view does not count a million rows."""
    return published_stage_counts(conn)


def open_alert_counts(conn: Connection) -> list[dict]:
    q = (
        sa.select(order_alerts.c.rule_id, order_alerts.c.severity, sa.func.count().label("open"))
        .where(order_alerts.c.resolved_at.is_(None))
        .group_by(order_alerts.c.rule_id, order_alerts.c.severity)
        .order_by(order_alerts.c.rule_id, order_alerts.c.severity)
    )
    return _rows(conn.execute(q))


def recent_open_alerts(conn: Connection, limit: int = 20) -> list[dict]:
    q = (
        sa.select(
            order_alerts.c.rule_id,
            order_alerts.c.entity_key,
            order_alerts.c.order_no,
            order_alerts.c.severity,
            order_alerts.c.message,
            order_alerts.c.first_seen,
            order_alerts.c.escalation_level,
        )
        .where(order_alerts.c.resolved_at.is_(None))
        .order_by(order_alerts.c.first_seen.desc())
        .limit(limit)
    )
    return _rows(conn.execute(q))


def oldest_waiting(conn: Connection, stages: Sequence[str], per_stage: int) -> list[dict]:
    """The longest-waiting orders of each open stage, read along the (stage, waiting_since) index."""
    out: list[dict] = []
    for stage in stages:
        q = (
            sa.select(snap.c.order_no, snap.c.stage, snap.c.responsible_role, snap.c.waiting_since, snap.c.missing_info)
            .where(snap.c.stage == stage, snap.c.waiting_since.is_not(None))
            .order_by(snap.c.waiting_since.asc())
            .limit(per_stage)
        )
        out.extend(_rows(conn.execute(q)))
    return out


def watermarks(conn: Connection) -> list[dict]:
    q = (
        sa.select(pipeline_state.c.key, pipeline_state.c.value, pipeline_state.c.updated_at)
        .where(pipeline_state.c.key.startswith(NEWEST_UPDATE_PREFIX))
        .order_by(pipeline_state.c.key)
    )
    return _rows(conn.execute(q))


def order_phone(conn: Connection, order_no: str) -> tuple[bool, str | None]:
    """Whether the order is published, and its recipient's mobile (for the customer's lookup form only)."""
    row = conn.execute(sa.select(snap.c.customer_phone).where(snap.c.order_no == order_no)).first()
    return (row is not None, row[0] if row is not None else None)


def has_table(conn: Connection, table: sa.Table) -> bool:
    """Whether the warehouse has `table` (the notifier's tables appear when it first runs)."""
    return sa.inspect(conn).has_table(table.name)


def order_messages(conn: Connection, order_no: str) -> list[dict] | None:
    """The order's customer messages, newest first, numbers masked; None when there is no message ledger."""
    if not has_table(conn, customer_notifications):
        return None
    return ledger.messages_for(conn, order_no)


def last_resend(conn: Connection, order_no: str, since: datetime) -> dict | None:
    """The order's newest staff resend recorded after `since` (created_at, requested_by), if any."""
    n = customer_notifications
    q = (
        sa.select(n.c.created_at, n.c.requested_by)
        .where(n.c.order_no == order_no, n.c.event == RESEND, n.c.created_at > since)
        .order_by(n.c.created_at.desc())
        .limit(1)
    )
    row = conn.execute(q).mappings().first()
    return None if row is None else {"created_at": as_utc(row["created_at"]), "requested_by": row["requested_by"]}


def short_link(conn: Connection, code: str) -> dict | None:
    """The order and expiry behind an SMS short code (primary key lookup); None when unknown or no such table."""
    if not has_table(conn, tracking_short_links):
        return None
    s = tracking_short_links
    row = conn.execute(sa.select(s.c.order_no, s.c.expires_at).where(s.c.code == code)).mappings().first()
    return None if row is None else {"order_no": row["order_no"], "expires_at": as_utc(row["expires_at"])}
