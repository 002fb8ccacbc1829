"""The warehouse schema, defined once in SQLAlchemy Core.

The same metadata creates the tables on SQLite and on PostgreSQL. Raw tables are
derived from the source contract in `canonical.py`; published tables are the
contract for downstream apps (tracking page, ops board, BI).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from order_pipeline.contract.canonical import SOURCE_ENTITIES, Entity

metadata = sa.MetaData()

_TYPES = {
    "str": sa.Text,
    "float": sa.Float,
    "int": sa.BigInteger,
    "datetime": sa.DateTime(timezone=True),
    "date": sa.Date,
}

# Every raw row carries the load batch that last wrote it; `unified_orders`
# recomputes the orders touched by batches newer than the one it last saw.
BATCH = "_batch"


# SQLite: tables keyed by waybill are stored in waybill order (WITHOUT ROWID). The parcels
# and the carrier timeline are built by joining them on the waybill, which then walks each
# in order instead of visiting a random page per parcel: publishing 1M orders' parcels took
# 2 s instead of 16 s, their carrier events 6 s instead of 18 s.
WAYBILL_ORDER: dict[str, Any] = {"sqlite_with_rowid": False}  # dialect keyword arguments of sa.Table


def stored_in_key_order(table: sa.Table) -> bool:
    """SQLite keeps this table's rows in primary-key order: rows inserted in that order append."""
    return table.dialect_options["sqlite"]["with_rowid"] is False


def raw_table_name(entity: str) -> str:
    """Where a source entity (or the carrier's `tracking`) lands: `raw_orders`, `raw_tracking`, ..."""
    return f"raw_{entity}"


def _raw_table(entity: Entity) -> sa.Table:
    cols = [
        sa.Column(c.name, _TYPES[c.kind], primary_key=c.name in entity.key, nullable=c.name in entity.key or c.nullable)
        for c in entity.columns
    ]
    cols.append(sa.Column(BATCH, sa.BigInteger, nullable=False, index=True))
    extra = []
    if "order_no" in entity.column_names and entity.key != ("order_no",):
        extra.append(sa.Index(f"ix_{raw_table_name(entity.name)}_order_no", "order_no"))
    options = WAYBILL_ORDER if entity.key == ("waybill_no",) else {}
    return sa.Table(raw_table_name(entity.name), metadata, *cols, *extra, **options)


RAW_TABLES: dict[str, sa.Table] = {name: _raw_table(e) for name, e in SOURCE_ENTITIES.items()}

# Carrier state per waybill, as last answered by Kuaidi100 (poll or push).
raw_tracking = sa.Table(
    raw_table_name("tracking"),
    metadata,
    sa.Column("waybill_no", sa.Text, primary_key=True),
    sa.Column("carrier_code", sa.Text),
    sa.Column("state", sa.Integer),  # Kuaidi100 `state`
    sa.Column("is_signed", sa.Boolean, nullable=False, default=False),  # `ischeck` == "1"
    sa.Column("first_event_at", sa.DateTime(timezone=True)),  # the carrier has the parcel
    sa.Column("last_event_at", sa.DateTime(timezone=True)),
    sa.Column("last_context", sa.Text),
    sa.Column("last_area", sa.Text),
    # `arrivalTime`: the carrier's predicted arrival, sent with resultv2=8 by the carriers Kuaidi100 estimates
    sa.Column("predicted_arrival", sa.DateTime(timezone=True)),
    sa.Column("polled_at", sa.DateTime(timezone=True)),
    sa.Column("poll_error", sa.Text),  # last error answer, kept until a good answer
    sa.Column("via", sa.Text),  # "poll" | "push"
    sa.Column(BATCH, sa.BigInteger, nullable=False, index=True),
    **WAYBILL_ORDER,
)

raw_tracking_events = sa.Table(
    "raw_tracking_events",
    metadata,
    sa.Column("waybill_no", sa.Text, primary_key=True),
    sa.Column("event_at", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("context", sa.Text, primary_key=True),
    sa.Column("area", sa.Text),
    sa.Column("status", sa.Text),
    # A waybill's events share a page or two instead of lying wherever they arrived.
    **WAYBILL_ORDER,
)

# Kuaidi100 subscription per waybill: whether pushes are to be expected, and when to ask again.
# A warehouse from before this table gets it at the next start (create_all adds missing tables).
carrier_subscriptions = sa.Table(
    "carrier_subscriptions",
    metadata,
    sa.Column("waybill_no", sa.Text, primary_key=True),
    sa.Column("carrier_code", sa.Text, nullable=False),  # the code subscribed, or Kuaidi100's correction
    # pending (500 or no answer: ask again) | subscribed | duplicate (501) | rejected (700-702)
    # | aborted (abort push: subscribe again later) | finished (shutdown push)
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("return_code", sa.Text),  # of the last subscribe answer
    sa.Column("message", sa.Text),  # of the last answer or push
    sa.Column("subscribed_at", sa.DateTime(timezone=True)),  # last accepted (200 or 501)
    sa.Column("attempts_this_month", sa.Integer, nullable=False, default=0),
    sa.Column("month", sa.Text),  # "2026-12" in China time: the month Kuaidi100 counts attempts in
    sa.Column("last_push_at", sa.DateTime(timezone=True)),
    sa.Column("last_event_at", sa.DateTime(timezone=True)),  # newest event pushed: an older push is a replay
    sa.Column("next_attempt_at", sa.DateTime(timezone=True)),  # pending or aborted: not before this
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    **WAYBILL_ORDER,
)

pipeline_state = sa.Table(
    "pipeline_state",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

pipeline_rejects = sa.Table(
    "pipeline_rejects",
    metadata,
    sa.Column("source", sa.Text, primary_key=True),
    sa.Column("record_key", sa.Text, primary_key=True),
    sa.Column("reason", sa.Text, primary_key=True),
    sa.Column("raw_row", sa.Text, nullable=False),  # JSON of the row as the source sent it
    sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
)


def _order_columns() -> list[sa.Column]:
    """Columns shared by the working `unified_orders` table and the published snapshot."""
    ts = sa.DateTime(timezone=True)
    return [
        sa.Column("order_no", sa.Text, primary_key=True, comment="The ERP's order number"),
        sa.Column(
            "stage",
            sa.Text,
            nullable=False,
            comment="Lifecycle stage code: ordered, paid, locked, shipped, in_transit, delivered, exception, cancelled",
        ),
        sa.Column(
            "stage_label",
            sa.Text,
            nullable=False,
            comment="The stage in Chinese, as the page shows it (下单完成 … 签收完成)",
        ),
        sa.Column("status", sa.Text, nullable=False, comment="The ERP's order status: open or cancelled"),
        sa.Column("customer_name", sa.Text, comment="Recipient's name (personal data: mask before showing)"),
        sa.Column("customer_phone", sa.Text, comment="Recipient's mobile (personal data: mask before showing)"),
        sa.Column("phone_tail", sa.Text, comment="Last four digits of the mobile, for the customer's lookup"),
        sa.Column("ship_address", sa.Text, comment="Shipping address (personal data)"),
        sa.Column("amount", sa.Float, comment="Order amount"),
        sa.Column("paid_amount", sa.Float, comment="Sum of the confirmed payments"),
        sa.Column("refunded_amount", sa.Float, comment="Sum of the refunds"),
        sa.Column("currency", sa.Text, comment="ISO currency code"),
        sa.Column("line_count", sa.Integer, comment="Number of order lines"),
        sa.Column("total_qty", sa.Float, comment="Sum of the lines' quantities"),
        sa.Column("voucher_no", sa.Text, comment="Finance voucher number of the payment"),
        sa.Column("ordered_at", ts, comment="Order placed (UTC)"),
        sa.Column("paid_at", ts, comment="Payment confirmed (UTC)"),
        sa.Column("locked_at", ts, comment="Stock reserved in the WMS (UTC)"),
        sa.Column("shipped_at", ts, comment="First parcel left the warehouse (UTC)"),
        sa.Column("in_transit_at", ts, comment="Carrier's first event (UTC)"),
        sa.Column("delivered_at", ts, comment="Last parcel signed for (UTC)"),
        sa.Column("promised_date", sa.Date, comment="Delivery date promised to the customer"),
        sa.Column(
            "eta", ts, comment="Expected delivery (UTC): the carrier's prediction, else shipped_at + transit_days"
        ),
        sa.Column(
            "eta_source", sa.Text, comment="Where `eta` comes from: carrier (Kuaidi100's prediction) or transit_days"
        ),
        sa.Column(
            "carrier_eta", ts, comment="The carrier's predicted arrival for the parcel with the newest event (UTC)"
        ),
        sa.Column("parcel_count", sa.Integer, nullable=False, comment="Parcels (waybills) of the order"),
        sa.Column("parcels_signed", sa.Integer, nullable=False, comment="Parcels signed for"),
        sa.Column("waybill_nos", sa.Text, comment="The parcels' waybill numbers, comma-separated"),
        sa.Column("carrier_codes", sa.Text, comment="The parcels' Kuaidi100 carrier codes, comma-separated"),
        sa.Column("total_weight_kg", sa.Float, comment="Sum of the parcels' weights"),
        sa.Column(
            "carrier_state",
            sa.Integer,
            comment="Kuaidi100 state of the parcel with the newest carrier event (0 in transit … 3 signed)",
        ),
        sa.Column("out_for_delivery", sa.Boolean, nullable=False, comment="A parcel is out for delivery (派件中)"),
        sa.Column("exception_reason", sa.Text, comment="Why the order is in exception (疑难, 拒签, 退回 …)"),
        sa.Column("latest_event_at", ts, comment="Time of the latest carrier event (UTC)"),
        sa.Column("latest_event_context", sa.Text, comment="Text of the latest carrier event, as the carrier wrote it"),
        sa.Column("latest_event_area", sa.Text, comment="Area of the latest carrier event"),
        sa.Column("signer", sa.Text, comment="Who signed for the parcels, comma-separated"),
        sa.Column(
            "missing_info",
            sa.Text,
            comment="Missing facts, '; '-joined codes (payment, voucher_no …); empty when complete",
        ),
        sa.Column(
            "responsible_role",
            sa.Text,
            comment="Who owns the next step: customer_service, finance, warehouse, logistics …",
        ),
        sa.Column("waiting_since", ts, comment="Since when the next step has been waiting (UTC)"),
        sa.Column(
            "source_updated_at", ts, comment="Newest modification time of the source rows behind the order (UTC)"
        ),
    ]


unified_orders = sa.Table(
    "unified_orders",
    metadata,
    *_order_columns(),
    sa.Column(BATCH, sa.BigInteger, nullable=False, index=True),  # the load batch it reflects
)

order_tracking_snapshot = sa.Table(
    "order_tracking_snapshot",
    metadata,
    *_order_columns(),
    sa.Column("published_at", sa.DateTime(timezone=True), nullable=False, comment="When this row was published (UTC)"),
    sa.Index("ix_snapshot_phone_tail", "phone_tail"),
    sa.Index("ix_snapshot_stage_waiting", "stage", "waiting_since"),
)

# One row per parcel, so a waybill number finds its order.
order_tracking_parcels = sa.Table(
    "order_tracking_parcels",
    metadata,
    sa.Column("waybill_no", sa.Text, primary_key=True, comment="The parcel's waybill number"),
    sa.Column("order_no", sa.Text, nullable=False, index=True, comment="The order it belongs to"),
    sa.Column("carrier_code", sa.Text, comment="Kuaidi100 carrier code (shunfeng, zhongtong …)"),
    sa.Column("weight_kg", sa.Float, comment="Gross weight from the WMS"),
    sa.Column("shipped_at", sa.DateTime(timezone=True), comment="Left the warehouse (UTC)"),
    sa.Column(
        "carrier_state", sa.Integer, comment="Kuaidi100 state (0 in transit, 1 picked up, 2 problem, 3 signed …)"
    ),
    sa.Column("is_signed", sa.Boolean, nullable=False, comment="Signed for"),
    sa.Column("signer", sa.Text, comment="Who signed for it"),
    sa.Column("signed_at", sa.DateTime(timezone=True), comment="When it was signed for (UTC)"),
    sa.Column("latest_event_at", sa.DateTime(timezone=True), comment="Time of its latest carrier event (UTC)"),
    sa.Column("latest_event_context", sa.Text, comment="Text of its latest carrier event"),
    sa.Column(
        "carrier_eta", sa.DateTime(timezone=True), comment="The carrier's predicted arrival, when it sent one (UTC)"
    ),
)

order_tracking_events = sa.Table(
    "order_tracking_events",
    metadata,
    sa.Column("order_no", sa.Text, nullable=False, comment="The order"),
    sa.Column("event_at", sa.DateTime(timezone=True), nullable=False, comment="When it happened (UTC)"),
    sa.Column(
        "kind", sa.Text, nullable=False, comment="stage (the order reached a stage) or carrier (a carrier event)"
    ),
    sa.Column("stage", sa.Text, comment="The stage reached, for kind stage"),
    sa.Column("waybill_no", sa.Text, comment="The parcel, for kind carrier"),
    sa.Column("context", sa.Text, comment="The carrier's text, for kind carrier"),
    sa.Column("area", sa.Text, comment="The carrier's area, for kind carrier"),
    # An order's timeline in time order, for the tracking page and the incremental publish.
    sa.Index("ix_events_order_time", "order_no", "event_at"),
)

PUBLISHED_ORDER_TABLES = (order_tracking_snapshot, order_tracking_parcels, order_tracking_events)

# Alert ledger: one row per (rule, entity). Delivery attempts are kept beside it.
order_alerts = sa.Table(
    "order_alerts",
    metadata,
    sa.Column("rule_id", sa.Text, primary_key=True),
    sa.Column("entity_key", sa.Text, primary_key=True),  # order no, SKU or asset key
    sa.Column("scope", sa.Text, nullable=False),  # "order" | "sku" | "source" | "run"
    sa.Column("order_no", sa.Text, index=True),
    sa.Column("severity", sa.Text, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("details", sa.Text),  # JSON
    sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    sa.Column("notified_at", sa.DateTime(timezone=True)),
    sa.Column("escalation_level", sa.Integer, nullable=False, default=0),
    sa.Column("resolved_at", sa.DateTime(timezone=True)),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text),
    sa.Column("title", sa.Text),
    sa.Column("risk", sa.Text),  # "high" when the rule marks the order high risk
    sa.Column("queued_at", sa.DateTime(timezone=True)),  # last notification queued: the cool-down counts from it
)

alert_deliveries = sa.Table(
    "alert_deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("rule_id", sa.Text, nullable=False),
    sa.Column("entity_key", sa.Text, nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),  # "notify" | "escalate" | "resolve"
    sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ok", sa.Boolean, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("queue_id", sa.BigInteger),  # the alert_queue row the attempt delivered
    sa.Index("ix_alert_deliveries_entity", "rule_id", "entity_key"),
    sa.Index("ix_alert_deliveries_time", "attempted_at"),
)

# Messages waiting for (or done with) delivery, one row per alert, kind and channel. A row is
# queued in the same transaction that updates the ledger, claimed before it is sent and marked
# sent after: a claim that never got its mark is in doubt and is sent again once it expires.
alert_queue = sa.Table(
    "alert_queue",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("rule_id", sa.Text, nullable=False),
    sa.Column("entity_key", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),  # notify | escalate | resolve | link
    sa.Column("level", sa.Integer, nullable=False, default=0),  # escalation level of an "escalate"
    sa.Column("target", sa.Text, nullable=False),  # the group or channel the rule names
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),  # JSON: title, bodies, mentions, severity
    sa.Column("status", sa.Text, nullable=False),  # pending | sent | superseded
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("hold", sa.Float, nullable=False),  # seconds a claim stays valid: the rule's cool-down
    sa.Column("claim_token", sa.Text),
    sa.Column("claimed_at", sa.DateTime(timezone=True)),
    sa.Column("claim_expires_at", sa.DateTime(timezone=True)),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True)),  # after a failure: not before this
    sa.Column("sent_at", sa.DateTime(timezone=True)),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text),
    sa.Index("ix_alert_queue_status", "status", "channel"),
    sa.Index("ix_alert_queue_entity", "rule_id", "entity_key"),
)


# Status digests queued: one row per (group, period), inserted with the digest's queue rows, so a
# rerun or a second evaluator in the same period queues nothing (alerts.digests). A period with no
# changes has its row too: it was looked at, and the next digest counts from its end.
alert_digests = sa.Table(
    "alert_digests",
    metadata,
    sa.Column("group_name", sa.Text, primary_key=True),
    sa.Column("period", sa.Text, primary_key=True),  # the period's key, "2026-12-04T09:00+08:00"
    sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),  # the window's end
    sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),  # changes after this were counted
    sa.Column("orders", sa.Integer, nullable=False),  # orders whose stage moved in the window
    sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
)


# Local outbox channel: what would have been sent, for the demo and for audits.
alert_outbox = sa.Table(
    "alert_outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("recipient", sa.Text),
    sa.Column("title", sa.Text),
    sa.Column("body", sa.Text, nullable=False),
)

tracking_access_log = sa.Table(
    "tracking_access_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("order_no", sa.Text, index=True),
    sa.Column("actor", sa.Text, nullable=False),  # "customer" or the staff user name
    sa.Column("outcome", sa.Text, nullable=False),  # ok | forbidden | expired | not_found | ...
    sa.Column("ip_hash", sa.Text),
    sa.Column("user_agent", sa.Text),
)

# Staff sessions ended before their expiry (a logout), by the nonce the signed cookie carries. The web
# app writes it and checks every staff request against it; a row is useless once its session would have
# expired anyway, and the next logout deletes it.
staff_session_revocations = sa.Table(
    "staff_session_revocations",
    metadata,
    sa.Column("nonce", sa.Text, primary_key=True),
    sa.Column("username", sa.Text, nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
)


# The customer-message tables live in their own module; importing it registers them in `metadata`,
# so `metadata.create_all` makes them with the rest.
from order_pipeline.contract import customer_schema as _customer_schema  # noqa: E402, F401
