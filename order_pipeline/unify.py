"""Build `unified_orders` from the raw tables: only the orders some source touched, or all.

An order is touched when any raw row about it (its order, lines, payments,
reservations, parcels, carrier answers or proofs of delivery) was written by a
load batch newer than the one the last unified run saw.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime

import pandas as pd
import sqlalchemy as sa

from .canonical import ORDER_KEYED, SOURCE_ENTITIES
from .schema import BATCH, RAW_TABLES, raw_tracking, unified_orders
from .stages import INPUT_COLUMNS, OrderInputs, derive_orders
from .validation import record_keys
from .warehouse import (clear_rejects, current_batch, delete_keys, get_state, insert_frame, read_frame, rebuilding,
                        record_rejects, set_state)

STATE_KEY = "unified_batch"
ORPHAN_REASON = {"order_lines": "order line", "payments": "payment", "reservations": "reservation",
                 "shipments": "shipment"}


@dataclass(frozen=True)
class UnifyResult:
    orders: pd.DataFrame  # the derived rows of this run
    full: bool
    orphans: int

    @property
    def touched(self) -> int:
        return len(self.orders)


def touched_orders(since: int) -> sa.Select:
    """order_no of every order with a raw row newer than batch `since`."""
    shipments = RAW_TABLES["shipments"]
    by_waybill = lambda t: sa.select(shipments.c.order_no).join(t, t.c.waybill_no == shipments.c.waybill_no).where(t.c[BATCH] > since)
    parts = [sa.select(RAW_TABLES[e].c.order_no).where(RAW_TABLES[e].c[BATCH] > since) for e in ORDER_KEYED]
    parts += [by_waybill(raw_tracking), by_waybill(RAW_TABLES["deliveries"])]
    return sa.union(*parts)


def load_inputs(conn: sa.Connection, only: sa.Select | None) -> OrderInputs:
    """Read what derivation needs of the given orders (all orders when `only` is None)."""
    shipments = RAW_TABLES["shipments"]
    waybills = sa.select(shipments.c.waybill_no)
    if only is not None:
        waybills = waybills.where(shipments.c.order_no.in_(only))

    def read(name: str, table: sa.Table) -> pd.DataFrame:
        cols = INPUT_COLUMNS[name]
        q = sa.select(*(table.c[c] for c in cols))
        if only is not None:
            q = q.where(table.c.order_no.in_(only) if "order_no" in cols else table.c.waybill_no.in_(waybills))
        return read_frame(conn, q, [c for c in cols if isinstance(table.c[c].type, (sa.DateTime, sa.Date))])

    return OrderInputs(
        orders=read("orders", RAW_TABLES["orders"]), lines=read("lines", RAW_TABLES["order_lines"]),
        payments=read("payments", RAW_TABLES["payments"]), reservations=read("reservations", RAW_TABLES["reservations"]),
        shipments=read("shipments", shipments), tracking=read("tracking", raw_tracking),
        deliveries=read("deliveries", RAW_TABLES["deliveries"]),
    )


def unify(engine: sa.Engine, now: datetime, transit_days: int = 3, full: bool = False) -> UnifyResult:
    with engine.connect() as conn:
        batch = current_batch(conn)
        since = 0 if full else int(get_state(conn, STATE_KEY, "0"))
        full = full or since == 0
        only = None if full else touched_orders(since)
        inputs = load_inputs(conn, only)
    if len(inputs.orders):
        derived = derive_orders(inputs, transit_days)
    else:  # nothing touched, or only rows of orders the ERP does not have
        derived = pd.DataFrame(columns=[c.name for c in unified_orders.c if c.name != BATCH])
    with engine.begin() as conn:
        derived[BATCH] = batch
        with rebuilding(conn, unified_orders) if full else nullcontext():
            if not full:
                delete_keys(conn, unified_orders, derived[["order_no"]], ["order_no"])
            insert_frame(conn, unified_orders, derived)
        orphans = _record_orphans(conn, inputs, now)
        set_state(conn, STATE_KEY, str(batch), now)
    return UnifyResult(derived.drop(columns=[BATCH]), full, orphans)


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
