"""Build `unified_orders` from the raw tables: only the orders some source touched, or all.

An order is touched when any raw row about it (its order, lines, payments,
reservations, parcels, carrier answers or proofs of delivery) was written by a
load batch newer than the one the last unified run saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd
import sqlalchemy as sa

from .canonical import ORDER_KEYED
from .schema import BATCH, RAW_TABLES, raw_tracking, unified_orders
from .stages import OrderInputs, derive_orders
from .warehouse import clear_rejects, current_batch, delete_keys, get_state, insert_frame, read_frame, record_rejects, set_state

STATE_KEY = "unified_batch"
_TS = {
    "orders": ["ordered_at", "promised_date", "updated_at"],
    "payments": ["paid_at"],
    "reservations": ["locked_at"],
    "shipments": ["shipped_at"],
    "deliveries": ["signed_at"],
}
_CHILDREN = tuple(e for e in ORDER_KEYED if e != "orders")


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
    """Read the raw rows of the given orders (all orders when `only` is None)."""
    def read(entity: str) -> pd.DataFrame:
        t = RAW_TABLES[entity]
        q = sa.select(*(c for c in t.c if c.name != BATCH))
        if only is not None:
            q = q.where(t.c.order_no.in_(only))
        return read_frame(conn, q, _TS.get(entity, []))

    shipments = read("shipments")
    waybills = sa.select(RAW_TABLES["shipments"].c.waybill_no)
    if only is not None:
        waybills = waybills.where(RAW_TABLES["shipments"].c.order_no.in_(only))
    tracking = read_frame(conn, sa.select(*(c for c in raw_tracking.c if c.name != BATCH))
                          .where(raw_tracking.c.waybill_no.in_(waybills)), ["first_event_at", "last_event_at"])
    d = RAW_TABLES["deliveries"]
    deliveries = read_frame(conn, sa.select(d.c.waybill_no, d.c.signer, d.c.signed_at).where(d.c.waybill_no.in_(waybills)),
                            ["signed_at"])
    return OrderInputs(
        orders=read("orders"), lines=read("order_lines"), payments=read("payments"),
        reservations=read("reservations"), shipments=shipments, tracking=tracking, deliveries=deliveries,
    )


def unify(engine: sa.Engine, now: datetime, transit_days: int = 3, full: bool = False) -> UnifyResult:
    with engine.connect() as conn:
        batch = current_batch(conn)
        since = 0 if full else int(get_state(conn, STATE_KEY, "0"))
        full = full or since == 0
        only = None if full else touched_orders(since)
        inputs = load_inputs(conn, only)
    derived = derive_orders(inputs, transit_days)
    orphans = _orphans(inputs)
    with engine.begin() as conn:
        if full:
            conn.execute(unified_orders.delete())
        else:
            delete_keys(conn, unified_orders, derived[["order_no"]], ["order_no"])
        derived[BATCH] = batch
        insert_frame(conn, unified_orders, derived)
        _record_orphans(conn, orphans, inputs, now)
        set_state(conn, STATE_KEY, str(batch), now)
    return UnifyResult(derived.drop(columns=[BATCH]), full, sum(len(f) for f in orphans.values()))


def _orphans(inp: OrderInputs) -> dict[str, pd.DataFrame]:
    """Rows that name an order the ERP does not have: kept in raw, reported as rejects."""
    known = set(inp.orders["order_no"])
    frames = {"order_lines": inp.lines, "payments": inp.payments, "reservations": inp.reservations,
              "shipments": inp.shipments}
    return {name: f[~f["order_no"].isin(known)] for name, f in frames.items()}


def _record_orphans(conn: sa.Connection, orphans: dict[str, pd.DataFrame], inp: OrderInputs, now: datetime) -> None:
    from .canonical import SOURCE_ENTITIES

    for name, rows in orphans.items():
        key = list(SOURCE_ENTITIES[name].key)
        # Rows of orders that exist now are no longer orphans.
        known = inp.orders["order_no"].astype(str)
        clear_rejects(conn, name, known.rename("record_key") if key == ["order_no"] else
                      _keys(_frame_of(inp, name)[_frame_of(inp, name)["order_no"].isin(known)], key))
        if rows.empty:
            continue
        record_rejects(conn, name, pd.DataFrame({
            "record_key": _keys(rows, key),
            "reason": f"{name.rstrip('s').replace('_', ' ')} for unknown order",
            "raw_row": rows.astype(str).to_dict("records"),
        }).assign(raw_row=lambda f: f["raw_row"].map(_json)), now)


def _frame_of(inp: OrderInputs, name: str) -> pd.DataFrame:
    return {"order_lines": inp.lines, "payments": inp.payments, "reservations": inp.reservations,
            "shipments": inp.shipments}[name]


def _keys(rows: pd.DataFrame, key: list[str]) -> pd.Series:
    return rows[key].astype(str).agg("/".join, axis=1)


def _json(row: dict) -> str:
    import json

    return json.dumps(row, ensure_ascii=False, sort_keys=True)
