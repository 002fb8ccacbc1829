"""Build `unified_orders` from the raw tables: only the orders some source touched, or all.

An order is touched when any raw row about it (its order, lines, payments,
reservations, parcels, carrier answers or proofs of delivery) was written by a
load batch newer than the one the last unified run saw.

A full rebuild goes through the orders in slices of consecutive order numbers, all
in one transaction: memory stays that of a few slices however many orders there are.
Worker processes read, derive and prepare the next slices for the bulk write while this
one writes the last: that is pandas and Python work that one core would otherwise do
between the writes.
"""

from __future__ import annotations

import json
import multiprocessing
from collections import deque
from collections.abc import Callable, Generator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import closing, nullcontext
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from typing import cast

import pandas as pd
import sqlalchemy as sa

from order_pipeline.contract.canonical import ORDER_KEYED, SOURCE_ENTITIES
from order_pipeline.contract.schema import BATCH, RAW_TABLES, pipeline_rejects, raw_tracking, unified_orders
from order_pipeline.domain.stages import INPUT_COLUMNS, OrderInputs, derive_orders
from order_pipeline.domain.validation import record_keys
from order_pipeline.pipeline.rejects import open_rejects, record_rejects
from order_pipeline.warehouse.engine import create_engine, prefer_index_lookups, temporary_orders
from order_pipeline.warehouse.frames import (
    PreparedRows,
    delete_keys,
    insert_prepared,
    prepare_rows,
    read_frame,
    replace_keys,
)
from order_pipeline.warehouse.rebuild import replacing
from order_pipeline.warehouse.state import UNIFIED_BATCH, current_batch, get_state, set_state

# Orders derived at a time by a full rebuild. Smaller slices shorten the start, before the first
# slice is ready, and the end, when only the writer works: 29 s instead of 32 s at 1M orders
# with 25,000 rather than 100,000. Memory: a slice's raw rows in each worker, and up to
# WORKERS + 1 prepared slices waiting here to be written.
SLICE_ORDERS = 25_000
WORKERS = 2  # processes deriving the slices of a full rebuild, beside the one writing them
PREVIEW_ROWS = 20
ORPHAN_REASON = {
    "order_lines": "order line",
    "payments": "payment",
    "reservations": "reservation",
    "shipments": "shipment",
}


def orphan_reason(source: str) -> str:
    """The reject reason of a child row whose order the ERP does not have."""
    return f"{ORPHAN_REASON[source]} for unknown order"


Scope = Callable[[sa.ColumnElement], sa.ColumnElement]  # order_no column -> which orders to read
Bounds = tuple[str | None, str | None]  # [lo, hi) of order_no; None is open


@dataclass(frozen=True)
class UnifyResult:
    touched: int  # orders derived by this run
    preview: pd.DataFrame  # the first few of them
    full: bool
    orphans: int


def touched_orders(since: int) -> sa.CompoundSelect:
    """order_no of every order with a raw row newer than batch `since`."""
    shipments = RAW_TABLES["shipments"]

    def by_waybill(t: sa.Table) -> sa.Select:
        return (
            sa.select(shipments.c.order_no).join(t, t.c.waybill_no == shipments.c.waybill_no).where(t.c[BATCH] > since)
        )

    parts = [sa.select(RAW_TABLES[e].c.order_no).where(RAW_TABLES[e].c[BATCH] > since) for e in ORDER_KEYED]
    parts += [by_waybill(raw_tracking), by_waybill(RAW_TABLES["deliveries"])]
    return sa.union(*parts)


def order_slices(conn: sa.Connection, size: int) -> list[Bounds]:
    """Ranges [lo, hi) of order_no that each hold about `size` orders and together cover every value.

    The first range is open below and the last open above (None), so rows naming an order
    the ERP does not have still fall in one range and are reported as orphans.
    """
    order_no = RAW_TABLES["orders"].c.order_no
    numbered = sa.select(order_no, sa.func.row_number().over(order_by=order_no).label("n")).subquery()
    starts = (
        conn.execute(
            sa.select(numbered.c.order_no)
            .where(numbered.c.n % size == 1)
            .where(numbered.c.n > 1)
            .order_by(numbered.c.n)
        )
        .scalars()
        .all()
    )
    bounds = [None, *starts, None]
    return list(pairwise(bounds))


def between(bounds: Bounds) -> Scope:
    lo, hi = bounds
    return lambda col: sa.and_(sa.true() if lo is None else col >= lo, sa.true() if hi is None else col < hi)


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
        orders=read("orders", RAW_TABLES["orders"]),
        lines=read("lines", RAW_TABLES["order_lines"]),
        payments=read("payments", RAW_TABLES["payments"]),
        reservations=read("reservations", RAW_TABLES["reservations"]),
        shipments=read("shipments", shipments),
        tracking=read("tracking", raw_tracking),
        deliveries=read("deliveries", RAW_TABLES["deliveries"]),
    )


def unify(
    engine: sa.Engine,
    now: datetime,
    transit_days: int = 3,
    full: bool = False,
    slice_orders: int | None = None,
    workers: int = WORKERS,
    source_columns: Mapping[str, Mapping[str, str]] | None = None,
) -> UnifyResult:
    """`source_columns`: per source, canonical name -> the source's own column name (its config's
    `columns`), under which an orphan row's reject shows the row."""
    with engine.begin() as conn:
        batch = current_batch(conn)
        since = 0 if full else int(get_state(conn, UNIFIED_BATCH, "0"))
        full = full or since == 0
        open_keys = open_rejects(conn, list(ORPHAN_REASON))
        if full:
            slices = order_slices(conn, slice_orders or SLICE_ORDERS)
            derived = _derived_slices(conn, slices, transit_days, open_keys, batch, workers)
        else:
            derived = _derived_touched(conn, since, transit_days, open_keys, batch)
        touched, orphans, first = 0, 0, None
        # closing: after a failed write, slices not yet started are cancelled at once, not
        # whenever the traceback is collected
        rebuilt = replacing(conn, unified_orders) if full else nullcontext({unified_orders: unified_orders})
        with rebuilt as target, closing(derived):
            for part in derived:
                if isinstance(part.rows, PreparedRows):
                    touched += insert_prepared(conn, target[unified_orders], part.rows)
                else:
                    touched += replace_keys(conn, unified_orders, part.rows, ["order_no"])
                orphans += _apply_orphan_changes(conn, part.changes, now, source_columns or {})
                if first is None:
                    first = part.preview
        set_state(conn, UNIFIED_BATCH, str(batch), now)
    assert first is not None  # every run derives at least one part, an empty one when nothing was touched
    return UnifyResult(touched, first, full, orphans)


@dataclass(frozen=True)
class Derived:
    """Derived orders, as a frame to upsert or (a full rebuild's slice) prepared for the bulk insert."""

    rows: pd.DataFrame | PreparedRows
    preview: pd.DataFrame  # the first few orders
    changes: list[OrphanChanges]


def _derived_touched(
    conn: sa.Connection, since: int, transit_days: int, open_keys: dict[str, set[str]], batch: int
) -> Generator[Derived, None, None]:
    """The orders some load touched since batch `since`, derived in one piece.

    The touched orders are found once, into a temporary table, rather than by the same union
    inside each of the seven reads (10,000 orders at 1M: the reads took 0.5-0.65 s instead of 0.75).
    """
    prefer_index_lookups(conn)
    # temporary_orders inserts from any SELECT, a UNION too; its annotation takes sa.Select only.
    touched = temporary_orders(conn, "tmp_touched_orders", cast(sa.Select, touched_orders(since)))
    inputs = load_inputs(conn, lambda col: col.in_(sa.select(touched.c.order_no)))
    touched.drop(conn)
    rows = _derive(inputs, transit_days)
    yield Derived(rows.assign(**{BATCH: batch}), rows.head(PREVIEW_ROWS), _orphan_changes(inputs, open_keys))


def _derived_slices(
    conn: sa.Connection,
    slices: list[Bounds],
    transit_days: int,
    open_keys: dict[str, set[str]],
    batch: int,
    workers: int,
) -> Generator[Derived, None, None]:
    """Each slice's orders, derived and prepared for the bulk insert, with its orphan changes, in slice order.

    With workers, up to `workers` slices beyond the one being written are read, derived and
    prepared in other processes, through their own connections: the raw rows were committed
    by the loads, and each reject key belongs to one slice, so no slice needs another's writes.
    """
    url = conn.engine.url
    in_memory = url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")
    if workers <= 1 or len(slices) <= 1 or in_memory:
        for bounds in slices:
            yield _derive_prepared(conn, bounds, transit_days, open_keys, batch)
        return
    # spawn, not fork: the caller may be a Dagster step with threads of its own.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        pending: deque[Future] = deque()
        for bounds in slices:
            pending.append(
                pool.submit(
                    _derive_slice, url.render_as_string(hide_password=False), bounds, transit_days, open_keys, batch
                )
            )
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(cancel_futures=True)


def _derive_slice(url: str, bounds: Bounds, transit_days: int, open_keys: dict[str, set[str]], batch: int) -> Derived:
    """In a worker process: read, derive and prepare one slice, through a connection of its own."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return _derive_prepared(conn, bounds, transit_days, open_keys, batch)
    finally:
        engine.dispose()


def _derive_prepared(
    conn: sa.Connection, bounds: Bounds, transit_days: int, open_keys: dict[str, set[str]], batch: int
) -> Derived:
    inputs = load_inputs(conn, between(bounds))
    rows = _derive(inputs, transit_days)
    prepared = prepare_rows(conn.dialect.name, unified_orders, rows.assign(**{BATCH: batch}))
    return Derived(prepared, rows.head(PREVIEW_ROWS), _orphan_changes(inputs, open_keys))


def _derive(inputs: OrderInputs, transit_days: int) -> pd.DataFrame:
    if len(inputs.orders):
        return derive_orders(inputs, transit_days)
    # nothing touched, or only rows of orders the ERP does not have
    return pd.DataFrame(columns=[c.name for c in unified_orders.c if c.name != BATCH])


def _children(inp: OrderInputs) -> dict[str, pd.DataFrame]:
    return {
        "order_lines": inp.lines,
        "payments": inp.payments,
        "reservations": inp.reservations,
        "shipments": inp.shipments,
    }


@dataclass(frozen=True)
class OrphanChanges:
    """For one child source: rejects to clear (the rows now have their order) and orphan rows to report."""

    source: str
    settled: list[str]
    rejects: pd.DataFrame


def _orphan_changes(inp: OrderInputs, open_keys: dict[str, set[str]]) -> list[OrphanChanges]:
    """Rows that name an order the ERP does not have stay in raw and are reported as rejects.

    When the order arrives later, the same rows join it and their rejects are cleared.
    """
    known = inp.orders["order_no"]
    changes = []
    for name, rows in _children(inp).items():
        key = SOURCE_ENTITIES[name].key
        orphan = ~rows["order_no"].isin(known)
        open_now = open_keys.get(name, set())
        settled = []
        if open_now:  # keys are built only where some reject is open: most rebuilds have none
            keys = record_keys(rows[~orphan], key)
            settled = keys[keys.isin(open_now)].tolist()
        rejects = pd.DataFrame(
            {
                "record_key": record_keys(rows[orphan], key),
                "reason": orphan_reason(name),
                "raw_row": [
                    json.dumps(r, ensure_ascii=False, sort_keys=True, default=str)
                    for r in rows[orphan].to_dict("records")
                ],
            }
        )
        changes.append(OrphanChanges(name, settled, rejects))
    return changes


def _apply_orphan_changes(
    conn: sa.Connection, changes: list[OrphanChanges], now: datetime, source_columns: Mapping[str, Mapping[str, str]]
) -> int:
    for change in changes:
        if change.settled:
            delete_keys(
                conn,
                pipeline_rejects,
                pd.DataFrame({"source": change.source, "record_key": change.settled}),
                ["source", "record_key"],
            )
        names = source_columns.get(change.source)
        rejects = change.rejects
        if names and len(rejects):
            rejects = rejects.assign(raw_row=[_under_source_names(text, names) for text in rejects["raw_row"]])
        record_rejects(conn, change.source, rejects, now)
    return sum(len(c.rejects) for c in changes)


def _under_source_names(raw_row: str, names: Mapping[str, str]) -> str:
    """A raw row's JSON under the source's own column names, as the loads' rejects show rows."""
    row = json.loads(raw_row)
    return json.dumps({names[k]: v for k, v in row.items() if k in names}, ensure_ascii=False, sort_keys=True)
