"""Rules compiled to SQL: each condition a SQLAlchemy Core expression, each rule one SELECT.

The SELECT runs as it is on SQLite and PostgreSQL alike; no order is looked at in Python.
"""

from __future__ import annotations

import re
import string
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import pandas as pd
import sqlalchemy as sa

from order_pipeline.alerts.rules.model import COMPARE, FIELD_KINDS, PENDING_STAGES, Condition, FieldRef, Rule
from order_pipeline.contract.schema import RAW_TABLES, order_tracking_snapshot
from order_pipeline.domain.times import aware_utc

# --- the fields of each scope ------------------------------------------------------------------


def order_fields(orders: sa.Table = order_tracking_snapshot) -> dict[str, sa.ColumnElement]:
    """Fields of the order scope: every column of the snapshot (or `unified_orders`), plus derived ones."""
    fields: dict[str, sa.ColumnElement] = {c.name: c for c in orders.c if not c.name.startswith("_")}
    # A derived field also needs its kind in model.ORDER_FIELD_KINDS, which rules are checked against.
    fields["last_carrier_update_at"] = sa.func.coalesce(orders.c.latest_event_at, orders.c.shipped_at).label(
        "last_carrier_update_at"
    )
    return fields


def sku_stock(orders: sa.Table = order_tracking_snapshot) -> sa.Subquery:
    """One row per SKU in inventory: stock figures and the demand of pending orders not yet locked.

    Pending orders are those not locked, not shipped and not cancelled (stages ordered and
    paid). Their demand is what their lines ask for minus what is already locked for them.
    """
    inv, lines, res = RAW_TABLES["inventory"], RAW_TABLES["order_lines"], RAW_TABLES["reservations"]
    pending = sa.select(orders.c.order_no).where(orders.c.stage.in_(PENDING_STAGES))
    need = (
        sa.select(lines.c.order_no, lines.c.sku, sa.func.sum(lines.c.qty).label("qty"))
        .where(lines.c.order_no.in_(pending))
        .group_by(lines.c.order_no, lines.c.sku)
        .subquery("need")
    )
    held = (
        sa.select(res.c.order_no, res.c.sku, sa.func.sum(res.c.qty).label("qty"))
        .where(res.c.status == "locked")
        .where(res.c.order_no.in_(pending))
        .group_by(res.c.order_no, res.c.sku)
        .subquery("held")
    )
    short = need.c.qty - sa.func.coalesce(held.c.qty, 0)
    open_need = (
        sa.select(need.c.sku, need.c.order_no, short.label("short"))
        .select_from(need.outerjoin(held, sa.and_(held.c.order_no == need.c.order_no, held.c.sku == need.c.sku)))
        .where(short > 0)
        .subquery("open_need")
    )
    demand = (
        sa.select(
            open_need.c.sku,
            sa.func.sum(open_need.c.short).label("pending_qty"),
            sa.func.count(sa.distinct(open_need.c.order_no)).label("pending_orders"),
        )
        .group_by(open_need.c.sku)
        .subquery("demand")
    )
    available = inv.c.on_hand - inv.c.reserved
    pending_qty = sa.func.coalesce(demand.c.pending_qty, 0)
    return (
        sa.select(
            inv.c.sku,
            inv.c.on_hand,
            inv.c.reserved,
            inv.c.safety_stock,
            available.label("available"),
            pending_qty.label("pending_qty"),
            sa.func.coalesce(demand.c.pending_orders, 0).label("pending_orders"),
            (inv.c.safety_stock + pending_qty - available).label("suggested_qty"),
            inv.c.updated_at.label("inventory_updated_at"),
        )
        .select_from(inv.outerjoin(demand, demand.c.sku == inv.c.sku))
        .subquery("sku_stock")
    )


# --- compiling to SQL --------------------------------------------------------------------------


def time_param(value: datetime) -> sa.BindParameter:
    """A time to compare with a timestamp column, bound the way the column stores it."""
    return sa.bindparam(None, aware_utc(value), type_=sa.DateTime(timezone=True))


def condition_sql(
    cond: Condition, fields: Mapping[str, sa.ColumnElement], kind: str, now: datetime, tz: str
) -> sa.ColumnElement[bool]:
    col = fields[cond.field]
    col = col.element if isinstance(col, sa.Label) else col
    v = cond.value
    if cond.op == "is_null":
        return col.is_(None) if v else col.is_not(None)
    if cond.op == "older_than":
        return col < time_param(now - v)
    if cond.op == "newer_than":
        return col >= time_param(now - v)
    if cond.op == "within_next":
        if kind == "date":
            today = aware_utc(now).astimezone(ZoneInfo(tz)).date()
            return col <= sa.bindparam(None, today + v, type_=sa.Date)
        return col <= time_param(now + v)
    if cond.op == "in":
        return col.in_(list(v))
    if cond.op == "not_in":
        return sa.and_(col.is_not(None), col.not_in(list(v)))
    other = fields[v.name] if isinstance(v, FieldRef) else _literal(v, kind)
    other = other.element if isinstance(other, sa.Label) else other
    expr = col.op(COMPARE[cond.op])(other) if cond.op != "ne" else col != other
    if cond.op == "ne":
        expr = sa.and_(col.is_not(None), expr)
    return expr


def _literal(value, kind: str):
    if kind == "datetime":
        return time_param(value)
    if kind == "date":
        return sa.bindparam(None, value, type_=sa.Date)
    if kind == "bool":
        return sa.true() if value else sa.false()
    return sa.bindparam(None, value)


# Columns every order breach carries, for the ledger and the message.
ORDER_MESSAGE_COLUMNS = (
    "order_no",
    "stage",
    "stage_label",
    "responsible_role",
    "waiting_since",
    "customer_name",
    "waybill_nos",
    "promised_date",
)


def breach_query(rule: Rule, now: datetime, tz: str, orders: sa.Table = order_tracking_snapshot) -> sa.Select:
    """The SELECT of the rule's offending rows: `entity_key`, `order_no` and the fields a message needs."""
    kinds = FIELD_KINDS[rule.scope]
    if rule.scope == "order":
        fields = order_fields(orders)
        wanted = list(ORDER_MESSAGE_COLUMNS)
        wanted += [c.field for c in rule.conditions] + [
            c.value.name for c in rule.conditions if isinstance(c.value, FieldRef)
        ]
        wanted += [n for n in _template_names(rule.message) if n in fields]
        if rule.waited_from:
            wanted.append(rule.waited_from)
        cols = [fields["order_no"].label("entity_key")] + [fields[n] for n in dict.fromkeys(wanted)]
        where = [condition_sql(c, fields, kinds[c.field], now, tz) for c in rule.conditions]
        return sa.select(*cols).where(*where).order_by(fields["order_no"])
    stock = sku_stock(orders)
    fields = {c.name: c for c in stock.c}
    cols = [stock.c.sku.label("entity_key"), sa.null().label("order_no"), *stock.c]
    where = [condition_sql(c, fields, kinds[c.field], now, tz) for c in rule.conditions]
    return sa.select(*cols).where(*where).order_by(stock.c.sku)


def _template_names(text: str | None) -> list[str]:
    if not text:
        return []
    return [re.split(r"[.\[]", f, maxsplit=1)[0] for _, f, _, _ in string.Formatter().parse(text) if f]


def _datetime_columns(query: sa.Select) -> list[str]:
    return [
        c.name
        for c in query.selected_columns
        if isinstance(c.type, sa.DateTime) or c.name in ("last_carrier_update_at", "inventory_updated_at")
    ]


def fetch_frame(conn: sa.Connection, query: sa.Select, datetime_cols: Collection[str] = ()) -> pd.DataFrame:
    """Run a SELECT whose parameters include times, and return a DataFrame.

    `warehouse.frames.read_frame` hands parameters to the driver as they are; a time compared
    with SQLite's text timestamps must go through SQLAlchemy's bind processing to be
    written the way the column stores it, so these queries execute normally.
    """
    result = conn.execute(query)
    frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    for col in datetime_cols:
        frame[col] = pd.to_datetime(frame[col], utc=True, format="ISO8601")
    return frame


@dataclass(frozen=True)
class Breaches:
    """The offending rows of one rule at one moment."""

    rule: Rule
    rows: pd.DataFrame  # entity_key, order_no, and the fields of the message

    @property
    def count(self) -> int:
        return len(self.rows)


def evaluate(
    conn: sa.Connection, rules: Collection[Rule], now: datetime, tz: str, orders: sa.Table = order_tracking_snapshot
) -> dict[str, Breaches]:
    """Every rule's offending rows, one SELECT per rule, read through the driver's fast path."""
    out = {}
    for rule in rules:
        q = breach_query(rule, now, tz, orders)
        out[rule.id] = Breaches(rule, fetch_frame(conn, q, _datetime_columns(q)))
    return out


def count_and_sample(
    conn: sa.Connection, rule: Rule, now: datetime, tz: str, limit: int, orders: sa.Table = order_tracking_snapshot
) -> tuple[int, pd.DataFrame]:
    """How many rows break the rule, and the first `limit` of them (for asset check metadata)."""
    q = breach_query(rule, now, tz, orders)
    count = conn.execute(sa.select(sa.func.count()).select_from(q.order_by(None).subquery())).scalar_one()
    sample = fetch_frame(conn, q.limit(limit), _datetime_columns(q)) if count else pd.DataFrame()
    return count, sample
