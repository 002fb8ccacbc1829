"""Build `unified_orders` from the raw tables: only the orders some source touched, or all.

An order is touched when any raw row about it (its order, lines, payments,
reservations, parcels, carrier answers or proofs of delivery) was written by a
load batch newer than the one the last unified run saw.

A full rebuild goes through the orders in slices of consecutive order numbers, all
in one transaction: memory stays that of one slice however many orders there are.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime

import pandas as pd
import sqlalchemy as sa

from .canonical import ORDER_KEYED, SOURCE_ENTITIES
from .schema import BATCH, RAW_TABLES, raw_tracking, unified_orders
from .stages import INPUT_COLUMNS, OrderInputs, derive_orders
from .validation import record_keys
from .warehouse import (clear_rejects, current_batch, get_state, insert_frame, read_frame, rebuilding, record_rejects,
                        replace_keys, set_state)

STATE_KEY = "unified_batch"
SLICE_ORDERS = 200_000  # orders derived at a time by a full rebuild: 1.3 GB peak, as fast as one slice
PREVIEW_ROWS = 20
ORPHAN_REASON = {"order_lines": "order line", "payments": "payment", "reservations": "reservation",
                 "shipments": "shipment"}


Scope = Callable[[sa.ColumnElement], sa.ColumnElement]  # order_no column -> which orders to read


@dataclass(frozen=True)
class UnifyResult:
    touched: int  # orders derived by this run
    preview: pd.DataFrame  # the first few of them
    full: bool
    orphans: int


def touched_orders(since: int) -> sa.Select:
    """order_no of every order with a raw row newer than batch `since`."""
    shipments = RAW_TABLES["shipments"]
    by_waybill = lambda t: sa.select(shipments.c.order_no).join(t, t.c.waybill_no == shipments.c.waybill_no).where(t.c[BATCH] > since)
    parts = [sa.select(RAW_TABLES[e].c.order_no).where(RAW_TABLES[e].c[BATCH] > since) for e in ORDER_KEYED]
    parts += [by_waybill(raw_tracking), by_waybill(RAW_TABLES["deliveries"])]
    return sa.union(*parts)


def order_slices(conn: sa.Connection, size: int) -> list[Scope]:
    """Ranges of order_no that each hold about `size` orders and together cover every value.

    The first range is open below and the last open above, so rows naming an order the
    ERP does not have still fall in one range and are reported as orphans.
    """
    order_no = RAW_TABLES["orders"].c.order_no
    numbered = sa.select(order_no, sa.func.row_number().over(order_by=order_no).label("n")).subquery()
    starts = conn.execute(sa.select(numbered.c.order_no).where(numbered.c.n % size == 1).where(numbered.c.n > 1)
                          .order_by(numbered.c.n)).scalars().all()
    bounds = [None, *starts, None]

    def between(lo, hi) -> Scope:
        return lambda col: sa.and_(sa.true() if lo is None else col >= lo, sa.true() if hi is None else col < hi)

    return [between(lo, hi) for lo, hi in zip(bounds, bounds[1:])]


def load_inputs(conn: sa.Connection, scope: Scope | None) -> OrderInputs:
    """Read what derivation needs of the orders in `scope` (all orders when it is None)."""
    shipments = RAW_TABLES["shipments"]
    waybills = sa.select(shipments.c.waybill_no)
    if scope is not None:
        waybills = waybills.where(scope(shipments.c.order_no))

    def read(name: str, table: sa.Table) -> pd.DataFrame:
        cols = INPUT_COLUMNS[name]
        q = sa.select(*(table.c[c] for c in cols))
        if scope is not None:
            q = q.where(scope(table.c.order_no) if "order_no" in cols else table.c.waybill_no.in_(waybills))
        return read_frame(conn, q, [c for c in cols if isinstance(table.c[c].type, (sa.DateTime, sa.Date))])

    return OrderInputs(
        orders=read("orders", RAW_TABLES["orders"]), lines=read("lines", RAW_TABLES["order_lines"]),
        payments=read("payments", RAW_TABLES["payments"]), reservations=read("reservations", RAW_TABLES["reservations"]),
        shipments=read("shipments", shipments), tracking=read("tracking", raw_tracking),
        deliveries=read("deliveries", RAW_TABLES["deliveries"]),
    )


def unify(engine: sa.Engine, now: datetime, transit_days: int = 3, full: bool = False,
          slice_orders: int | None = None) -> UnifyResult:
    with engine.begin() as conn:
        batch = current_batch(conn)
        since = 0 if full else int(get_state(conn, STATE_KEY, "0"))
        full = full or since == 0
        if full:
            scopes = order_slices(conn, slice_orders or SLICE_ORDERS)
        else:
            touched = touched_orders(since)
            scopes = [lambda col: col.in_(touched)]
        touched_count, orphans, first = 0, 0, None
        with rebuilding(conn, unified_orders) if full else nullcontext():
            for scope in scopes:
                inputs = load_inputs(conn, scope)
                derived = _derive(inputs, transit_days)
                derived[BATCH] = batch
                if full:
                    insert_frame(conn, unified_orders, derived)
                else:
                    replace_keys(conn, unified_orders, derived, ["order_no"])
                orphans += _record_orphans(conn, inputs, now)
                touched_count += len(derived)
                if first is None:
                    first = derived.drop(columns=[BATCH]).head(PREVIEW_ROWS)
                del inputs, derived  # before the next slice is read
        set_state(conn, STATE_KEY, str(batch), now)
    return UnifyResult(touched_count, first, full, orphans)


def _derive(inputs: OrderInputs, transit_days: int) -> pd.DataFrame:
    if len(inputs.orders):
        return derive_orders(inputs, transit_days)
    # nothing touched, or only rows of orders the ERP does not have
    return pd.DataFrame(columns=[c.name for c in unified_orders.c if c.name != BATCH])


def _children(inp: OrderInputs) -> dict[str, pd.DataFrame]:
    return {"order_lines": inp.lines, "payments": inp.payments, "reservations": inp.reservations,
            "shipments": inp.shipments}


def _record_orphans(conn: sa.Connection, inp: OrderInputs, now: datetime) -> int:
    """Rows that name an order the ERP does not have stay in raw and are reported as rejects.

    When the order arrives later, the same rows join it and their rejects are cleared.
    """
    known = inp.orders["order_no"]
    orphans = 0
    for name, rows in _children(inp).items():
        keys = record_keys(rows, SOURCE_ENTITIES[name].key)
        orphan = ~rows["order_no"].isin(known)
        clear_rejects(conn, name, keys[~orphan])
        if orphan.any():
            orphans += int(orphan.sum())
            record_rejects(conn, name, pd.DataFrame({
                "record_key": keys[orphan],
                "reason": f"{ORPHAN_REASON[name]} for unknown order",
                "raw_row": [json.dumps(r, ensure_ascii=False, sort_keys=True, default=str)
                            for r in rows[orphan].to_dict("records")],
            }), now)
    return orphans
