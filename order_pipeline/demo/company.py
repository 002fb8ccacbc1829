"""A deterministic demo company: four source systems under their own names, and the config that maps them.

`build_demo_company` writes what a growing online shop's systems hold after `days` days of
trading, each in its own SQLite file and its own naming:

- `erp.db`, a Kingdee-style ERP: `T_SAL_ORDER`, `T_SAL_ORDERENTRY`, status codes A/C;
- `finance.db`: table `收款单` with Chinese column names and statuses;
- `wms.db`: stock, stock locks, outbound parcels and proofs of delivery;
- `carrier.db`: the tables `carrier_sandbox` answers Kuaidi100 queries from;

plus `order_pipeline.yaml`, which maps every source onto the contract in `canonical.py`.

Most orders follow the happy path as far as their age allows. A share of them is made to show
one of the cases in `Case`, each at least `QUOTAS[case][1]` times, so that every stage, every
alert rule and every carrier state appears at any size. The same arguments give the same rows:
all randomness comes from one seeded generator and `now` is an argument, never the clock.

Times are whole seconds of Shanghai wall-clock time (the sources store naive local times).
The bulk is built as numpy arrays, one element per order, line, payment, parcel or carrier
event, and written with one executemany per table: a million orders take under a minute.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntEnum
from functools import partial
from importlib import resources
from itertools import chain
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from order_pipeline.carrier import protocol as kuaidi100
from order_pipeline.carrier import sandbox as carrier_sandbox
from order_pipeline.demo.random_data import (
    DAY,
    HOUR,
    concat_strings,
    daily_ids,
    date_text,
    mobile_numbers,
    random_hours,
    ranks_in_groups,
    timestamp_text,
    yyyymmdd,
)
from order_pipeline.demo.reference_data import (
    CARRIER_CODE,
    CARRIERS,
    CITIES,
    GIVEN_NAMES,
    SIGNERS,
    SURNAMES,
    WAREHOUSES,
    waybill_numbers,
)

TIMEZONE = "Asia/Shanghai"
CONFIG_NAME = "order_pipeline.yaml"
CONFIG_TEMPLATE_FILE = "config_template.yaml"  # package data beside this module
# The sandbox accepts whatever account the client is configured with; the demo uses this one.
DEMO_CUSTOMER = "DEMO"
DEMO_KEY = "demo-key"
DEMO_KEY_ENV = "ORDER_PIPELINE_DEMO_KUAIDI100_KEY"

LINK_SECRET_FILE = "secrets/link.key"
DEMO_STAFF = ("ops", "demo-ops")  # the demo's ops board login
MIN_ORDERS = 100  # fewer cannot give every case its minimum count
MIN_DAYS = 10  # how far back the pinned cases (PINS) reach

EVENT_CHUNK = 200_000  # parcels per batch of rendered carrier events: bounds memory at a million orders


@dataclass(frozen=True)
class DemoCompany:
    """What `build_demo_company` wrote."""

    erp_db: Path
    finance_db: Path
    wms_db: Path
    carrier_db: Path
    config_path: Path
    counts: dict[str, int]  # rows written per source table


class Case(IntEnum):
    """What an order is made to show; NATURAL orders follow the happy path as far as their age allows."""

    NATURAL = 0
    PARTIAL_TWO = 1  # two payments that together fall short of the amount
    PARTIAL_SHORT = 2  # one payment short of the amount
    FAILED = 3  # a failed payment and nothing else
    REFUNDED = 4  # paid, stock locked, then cancelled: payment refunded, locks released
    CANCELLED_UNPAID = 5
    CANCELLED_PAID = 6  # cancelled after payment, the refund not booked yet
    NOT_LOCKED = 7  # paid over 2 h ago, stock not (fully) locked: rule 1; its SKUs run short: rule 2
    PROMISE_SOON = 8  # promised for today or tomorrow, locked but not shipped: rule 4
    STUCK = 9  # in transit, no carrier update for over 48 h: rule 3
    SPLIT = 10  # 2-3 parcels: the first signed, the others on the way
    EXCEPTION = 11  # carrier trouble, Kuaidi100 states 2, 4, 6 and 14 in turn
    OUT_FOR_DELIVERY = 12
    NO_PICKUP = 13  # shipped minutes ago: the carrier has no record of it yet


# Share of orders per case and the least number of orders it gets at any size.
QUOTAS: dict[Case, tuple[float, int]] = {
    Case.PARTIAL_TWO: (0.006, 2),
    Case.PARTIAL_SHORT: (0.006, 2),
    Case.FAILED: (0.01, 2),
    Case.REFUNDED: (0.01, 2),
    Case.CANCELLED_UNPAID: (0.015, 2),
    Case.CANCELLED_PAID: (0.006, 2),
    Case.NOT_LOCKED: (0.006, 3),
    Case.PROMISE_SOON: (0.006, 2),
    Case.STUCK: (0.008, 3),
    Case.SPLIT: (0.02, 3),
    Case.EXCEPTION: (0.012, 4),
    Case.OUT_FOR_DELIVERY: (0.005, 2),
    Case.NO_PICKUP: (0.005, 2),
}

# An order's timeline is a chain of points; the chain offsets come from random lags.
ORDERED, PAID, LOCKED, SHIPPED = 0, 1, 2, 3  # then SHIPPED + k is the parcel's k-th carrier event
PICKUP, AT_ORIGIN_HUB, LEFT_ORIGIN_HUB, AT_DEST_HUB, DISPATCH, SIGNED = 1, 2, 3, 4, 5, 6
EVENTS_TO_STATE = np.array([-1, 1, 0, 0, 0, 5, 3])  # Kuaidi100 state after k events (-1: no record)
EVENT_COLUMNS = [f"event_{k}" for k in range(1, 7)]  # per parcel: seconds from shipped to its k-th event

# Cases pinned to a point of their timeline at a time before now: (point, hours ago from, to).
# NATURAL orders are spread over the whole window instead; points of STUCK and EXCEPTION vary.
PINS: dict[Case, tuple[int, float, float]] = {
    Case.PARTIAL_TWO: (ORDERED, 48, 24 * MIN_DAYS),
    Case.PARTIAL_SHORT: (ORDERED, 48, 24 * MIN_DAYS),
    Case.FAILED: (ORDERED, 48, 24 * MIN_DAYS),
    Case.REFUNDED: (ORDERED, 48, 24 * MIN_DAYS),
    Case.CANCELLED_UNPAID: (ORDERED, 48, 24 * MIN_DAYS),
    Case.CANCELLED_PAID: (ORDERED, 48, 24 * MIN_DAYS),
    Case.NOT_LOCKED: (PAID, 2.5, 72),
    Case.PROMISE_SOON: (LOCKED, 0.5, 12),
    Case.STUCK: (SHIPPED + AT_DEST_HUB, 50, 144),
    Case.SPLIT: (SHIPPED + SIGNED, 12, 48),
    Case.EXCEPTION: (SHIPPED + SIGNED, 1, 40),
    Case.OUT_FOR_DELIVERY: (SHIPPED + DISPATCH, 0.5, 5),
    Case.NO_PICKUP: (SHIPPED, 0.2, 3),
}
STUCK_AFTER = (AT_ORIGIN_HUB, LEFT_ORIGIN_HUB, AT_DEST_HUB)  # the last event a stuck parcel got
# Carrier trouble, in turn: (Kuaidi100 state, the event it takes the place of).
EXCEPTIONS = ((2, DISPATCH), (4, SIGNED), (6, DISPATCH), (14, SIGNED))

PAID_IN_FULL = {
    Case.REFUNDED,
    Case.CANCELLED_PAID,
    Case.NOT_LOCKED,
    Case.PROMISE_SOON,
    Case.STUCK,
    Case.SPLIT,
    Case.EXCEPTION,
    Case.OUT_FOR_DELIVERY,
    Case.NO_PICKUP,
}
LOCKING = PAID_IN_FULL - {Case.NOT_LOCKED}
SHIPPING = {Case.STUCK, Case.SPLIT, Case.EXCEPTION, Case.OUT_FOR_DELIVERY, Case.NO_PICKUP}
CANCELLING = {Case.REFUNDED, Case.CANCELLED_UNPAID, Case.CANCELLED_PAID}


# Lookups by index, for rendering whole arrays at once.
CITY = np.array([c[1] for c in CITIES])
AREA = np.array([c[1] if c[0] == c[1] else f"{c[0]},{c[1]}" for c in CITIES])  # Kuaidi100 areaName
HUB = np.array([c[1].removesuffix("市") + "转运中心" for c in CITIES])
DISTRICT = np.array([c[2] for c in CITIES])
WAREHOUSE_CITY = np.array([w[0] for w in WAREHOUSES])
WAREHOUSE_DISTRICT = np.array([w[1] for w in WAREHOUSES])
CARRIER_NAME = np.array([c[1] for c in CARRIERS])

LINE_MIX = (0.4, 0.3, 0.2, 0.1)  # share of orders with 1, 2, 3, 4 lines

SOURCE_TABLES: dict[str, dict[str, dict[str, str]]] = {
    "erp.db": {
        "T_SAL_ORDER": {
            "FBillNo": "TEXT",
            "FCustName": "TEXT",
            "FPhone": "TEXT",
            "FIdCard": "TEXT",
            "FAddress": "TEXT",
            "FAmount": "REAL",
            "FCurrency": "TEXT",
            "FDate": "TEXT",
            "FPromiseDate": "TEXT",
            "FStatus": "TEXT",
            "FModifyDate": "TEXT",
        },
        "T_SAL_ORDERENTRY": {
            "FEntryID": "INTEGER",
            "FBillNo": "TEXT",
            "FMaterialId": "TEXT",
            "FQty": "REAL",
            "FPrice": "REAL",
        },
    },
    "finance.db": {
        "收款单": {
            "收款单号": "TEXT",
            "订单编号": "TEXT",
            "金额": "REAL",
            "收款时间": "TEXT",
            "凭证号": "TEXT",
            "状态": "TEXT",
            "修改时间": "TEXT",
        },
    },
    "wms.db": {
        "inv_stock": {
            "item_code": "TEXT",
            "qty_on_hand": "INTEGER",
            "qty_reserved": "INTEGER",
            "safety_qty": "INTEGER",
            "last_modified": "TEXT",
        },
        "inv_lock": {
            "lock_id": "TEXT",
            "ref_order": "TEXT",
            "item_code": "TEXT",
            "lock_qty": "INTEGER",
            "lock_status": "TEXT",
            "lock_time": "TEXT",
            "last_modified": "TEXT",
        },
        "outbound": {
            "ref_order": "TEXT",
            "tracking_no": "TEXT",
            "express_company": "TEXT",
            "gross_weight": "REAL",
            "outbound_time": "TEXT",
            "last_modified": "TEXT",
        },
        "pod": {"tracking_no": "TEXT", "signed_by": "TEXT", "signed_time": "TEXT", "photo": "TEXT"},
    },
}
# Indexes the pipeline's reads need: by high-water mark and by order number.
SOURCE_INDEXES = {
    "T_SAL_ORDER": ("FModifyDate", "FBillNo"),
    "T_SAL_ORDERENTRY": ("FBillNo",),
    "收款单": ("修改时间", "订单编号"),
    "inv_stock": ("last_modified",),
    "inv_lock": ("last_modified", "ref_order"),
    "outbound": ("last_modified", "ref_order"),
    "pod": ("signed_time",),
}

Table = dict[str, list]  # column name -> values, in the table's column order
BadRows = Callable[[Table], list[dict]]  # the rows to add to a rendered table


@dataclass(frozen=True)
class _Plan:
    """Everything random, drawn up front in a fixed order; rendering and writing only read it."""

    clock: int  # now, in local wall-clock seconds
    skus: dict[str, np.ndarray]
    orders: pd.DataFrame
    lines: dict[str, np.ndarray]
    payments: pd.DataFrame
    locks: np.ndarray  # per order line: whether it holds a stock lock
    parcels: pd.DataFrame
    customers: dict[str, np.ndarray]


def build_demo_company(
    target: Path,
    orders: int = 5000,
    days: int = 30,
    *,
    now: datetime,
    seed: int = 7,
    bad_rows: bool = True,
    progress: Callable[[str], None] | None = None,
) -> DemoCompany:
    """Write the demo sources and their config into `target`, replacing an earlier demo there.

    `orders` are placed over the `days` days before `now`; `seed` picks the company; `bad_rows`
    adds a handful of rows that break the source contract; `progress` hears about each step.
    The pipeline's own `warehouse.db` in `target` is removed too: it would hold the rows and
    high-water marks of the sources being replaced.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware, e.g. datetime.now(UTC)")
    if orders < MIN_ORDERS:
        raise ValueError(f"orders must be at least {MIN_ORDERS} for every case to appear")
    if days < MIN_DAYS:
        raise ValueError(f"days must be at least {MIN_DAYS}: stuck parcels and old orders need that much history")
    say = progress or (lambda _msg: None)
    target = Path(target).resolve()
    target.mkdir(parents=True, exist_ok=True)
    for name in (*SOURCE_TABLES, "carrier.db", "warehouse.db"):
        for suffix in ("", "-journal", "-wal", "-shm"):
            (target / f"{name}{suffix}").unlink(missing_ok=True)

    plan = _plan(np.random.Generator(np.random.PCG64(seed)), orders, days, _local_seconds(now))
    say(
        f"planned {len(plan.orders):,} orders, {len(plan.lines['order']):,} lines, "
        f"{len(plan.payments):,} payments, {len(plan.parcels):,} parcels"
    )
    bad = _bad_rows(plan) if bad_rows else {}
    carrier_db = target / "carrier.db"
    jobs = {db: partial(_write_source, target / db, tables, plan, bad) for db, tables in SOURCE_TABLES.items()}
    jobs[carrier_db.name] = partial(_write_carrier, carrier_db, plan)
    counts: dict[str, int] = {}
    for db, write in jobs.items():
        written = write()
        counts |= written
        say(f"{db}: " + ", ".join(f"{count:,} rows in {table}" for table, count in written.items()))

    config_path = target / CONFIG_NAME
    _write_link_secret(target)
    config_path.write_text(_config_text(carrier_db, max_polls=len(plan.parcels)), encoding="utf-8")
    say(f"wrote {config_path}")
    return DemoCompany(target / "erp.db", target / "finance.db", target / "wms.db", carrier_db, config_path, counts)


def _plan(rng: np.random.Generator, orders: int, days: int, clock: int) -> _Plan:
    # One statement per draw: the order of the draws is what makes the demo reproducible.
    skus = _plan_skus(rng, orders)
    o = _plan_orders(rng, orders, days, clock)
    lines = _plan_lines(rng, o, len(skus["code"]))
    o["amount"] = np.bincount(lines["order"], lines["qty"] * skus["price"][lines["sku"]], len(o)).astype(np.int64)
    payments = _plan_payments(rng, o)
    parcels = _plan_parcels(rng, o, clock)
    customers = _plan_customers(rng, len(o))
    return _Plan(clock, skus, o, lines, payments, _plan_locks(o, lines), parcels, customers)


def _write_source(
    path: Path, tables: dict[str, dict[str, str]], plan: _Plan, bad: dict[str, BadRows]
) -> dict[str, int]:
    counts = {}
    with closing(_open(path)) as conn:
        for name, schema in tables.items():
            table = RENDER[name](plan)
            for row in bad[name](table) if name in bad else ():
                _append(table, row)
            counts[name] = _write_table(conn, name, schema, table)
    return counts


# --- the plan: numbers only, one row per order, line, payment, lock and parcel ---------------------------


def _plan_skus(rng: np.random.Generator, orders: int) -> dict[str, np.ndarray]:
    n = int(np.clip(orders // 50, 60, 5000))
    price = np.round(np.exp(rng.normal(4.2, 0.7, n))).astype(np.int64) * 100 - 10  # cents, e.g. 66.90
    safety = rng.integers(5, 60, n)
    return {
        "code": np.strings.add("M", (100_001 + np.arange(n)).astype(str)),
        "price": np.maximum(price, 490),
        "safety": safety,
        "available": safety + rng.integers(10, 400, n),  # on hand minus reserved, normally
        "short_of": (safety * rng.random(n)).astype(np.int64),  # the same for a SKU that runs short
        "counted_ago": random_hours(rng, n, 0.02, 6),  # since the WMS last touched the row
    }


def _assign_cases(rng: np.random.Generator, n: int) -> np.ndarray:
    case = np.full(n, Case.NATURAL, dtype=np.int64)
    picked = rng.permutation(n)
    start = 0
    for c, (share, least) in QUOTAS.items():
        k = max(least, round(share * n))
        case[picked[start : start + k]] = c
        start += k
    return case


def _parcel_gaps(rng: np.random.Generator, n: int) -> np.ndarray:
    """Seconds between carrier events: shipped -> picked up -> hub -> left -> dest hub -> dispatch -> signed.

    No gap reaches 48 h, so only STUCK parcels ever wait that long for an update.
    """
    bounds = ((0.5, 4), (1, 3), (1, 4), (6, 30), (1, 10), (0.3, 4))
    return np.column_stack([random_hours(rng, n, lo, hi) for lo, hi in bounds])


def _plan_orders(rng: np.random.Generator, n: int, days: int, clock: int) -> pd.DataFrame:
    case = _assign_cases(rng, n)
    variant = pd.Series(case).groupby(case).cumcount().to_numpy()  # the n-th order of its case
    n_lines = rng.choice(np.arange(1, 5), n, p=LINE_MIX)
    # A split order ships a parcel per line at most: give it the lines for 2 or 3 parcels.
    n_lines = np.where(case == Case.SPLIT, np.maximum(n_lines, 2 + variant % 2), n_lines)

    lags = np.column_stack(
        [
            np.zeros(n, np.int64),
            random_hours(rng, n, 1 / 60, 1.5),  # ordered -> paid
            random_hours(rng, n, 0.05, 1),  # paid -> stock locked
            random_hours(rng, n, 1, 20),  # locked -> shipped
            _parcel_gaps(rng, n),  # the first parcel's carrier events
        ]
    )
    offset = np.cumsum(lags, axis=1)  # from ordered to each point of the chain
    point, ago = _pins(rng, case, variant, days)
    ordered = clock - ago - offset[np.arange(n), point]
    times = ordered[:, None] + offset

    natural = case == Case.NATURAL
    abandoned = natural & (rng.random(n) < 0.04)  # never paid
    paid = np.isin(case, list(PAID_IN_FULL)) | (natural & ~abandoned & (times[:, PAID] <= clock))
    locked = np.isin(case, list(LOCKING)) | (natural & paid & (times[:, LOCKED] <= clock))
    shipped = np.isin(case, list(SHIPPING)) | (natural & locked & (times[:, SHIPPED] <= clock))
    cancelled = np.isin(case, list(CANCELLING))
    cancelled_at = np.where(case == Case.CANCELLED_UNPAID, times[:, ORDERED], times[:, PAID]) + random_hours(
        rng, n, 1, 24
    )

    today = clock // DAY * DAY
    # 4-7 days out: a natural order ships within a day, so only PROMISE_SOON orders trip rule 4.
    promise = np.where(paid & natural & (rng.random(n) < 0.4), ordered // DAY * DAY + rng.integers(4, 8, n) * DAY, -1)
    promise = np.where(case == Case.PROMISE_SOON, today + variant % 2 * DAY, promise)

    o = pd.DataFrame(
        {
            "case": case,
            "variant": variant,
            "n_lines": n_lines,
            "ordered": ordered,
            "paid_at": times[:, PAID],
            "locked_at": times[:, LOCKED],
            "shipped_at": times[:, SHIPPED],
            "paid": paid,
            "locked": locked,
            "shipped": shipped,
            "cancelled": cancelled,
            "cancelled_at": np.where(cancelled, cancelled_at, -1),
            "promise": promise,
            "event_point": np.where(case == Case.NATURAL, -1, point),
            **dict(zip(EVENT_COLUMNS, (offset[:, SHIPPED + 1 :] - offset[:, [SHIPPED]]).T)),  # the first parcel's
        }
    )
    # ERP rows and order numbers run in time order, as in a real ERP.
    o = o.sort_values("ordered", kind="stable").reset_index(drop=True)
    o["order_no"] = daily_ids("SO", o["ordered"].to_numpy())
    return o


def _pins(rng: np.random.Generator, case: np.ndarray, variant: np.ndarray, days: int) -> tuple[np.ndarray, np.ndarray]:
    """Per order, the point of its timeline that is pinned, and how many seconds before now it lies.

    A natural order's placing lies anywhere in the window; a case's point lies where PINS says.
    """
    n = len(case)
    point = np.full(n, ORDERED)
    ago = random_hours(rng, n, 0, 24 * days)
    for c, (at, lo, hi) in PINS.items():
        mask = case == c
        point[mask] = at
        ago[mask] = random_hours(rng, int(mask.sum()), lo, hi)
    stuck, exception = case == Case.STUCK, case == Case.EXCEPTION
    point[stuck] = SHIPPED + np.array(STUCK_AFTER)[variant[stuck] % len(STUCK_AFTER)]
    point[exception] = SHIPPED + np.array([slot for _, slot in EXCEPTIONS])[variant[exception] % len(EXCEPTIONS)]
    return point, ago


def _plan_lines(rng: np.random.Generator, o: pd.DataFrame, n_skus: int) -> dict[str, np.ndarray]:
    counts = o["n_lines"].to_numpy()
    order = np.repeat(np.arange(len(o)), counts)
    line_no = ranks_in_groups(counts)
    # Popular SKUs first; a stride below a quarter of the catalogue keeps an order's (up to 4) SKUs distinct.
    base = (n_skus * rng.random(len(o)) ** 2).astype(np.int64)
    stride = rng.integers(1, n_skus // 4, len(o))
    sku = (base[order] + line_no * stride[order]) % n_skus
    qty = 1 + (rng.random(len(order)) < 0.25) + (rng.random(len(order)) < 0.08)
    return {"order": order, "line_no": line_no, "sku": sku, "qty": qty.astype(np.int64)}


def _plan_payments(rng: np.random.Generator, o: pd.DataFrame) -> pd.DataFrame:
    """One row per payment: order, amount (cents), time, status (paid | refunded | failed), modified."""
    n = len(o)
    case, amount = o["case"].to_numpy(), o["amount"].to_numpy()
    ordered, at = o["ordered"].to_numpy(), o["paid_at"].to_numpy()
    natural_paid = (case == Case.NATURAL) & o["paid"].to_numpy()
    in_full = np.isin(case, list(PAID_IN_FULL - {Case.REFUNDED})) | natural_paid
    deposit = natural_paid & (rng.random(n) < 0.05)  # paid in two parts: a deposit, then the rest
    retried = natural_paid & (rng.random(n) < 0.03)  # a failed attempt before the successful one
    deposit_cents = (amount * rng.uniform(0.2, 0.5, n)).astype(np.int64)
    short_cents = np.maximum(100, (amount * rng.uniform(0.05, 0.3, n)).astype(np.int64))
    later = at + random_hours(rng, n, 0.2, 6)
    refunded_at = o["cancelled_at"].to_numpy() + random_hours(rng, n, 0.2, 6)
    between = ordered + (at - ordered) // 2  # after the order was placed, before the final payment

    parts = [  # (which orders, amount in cents, time, status, modified: None = the time)
        (in_full, np.where(deposit, amount - deposit_cents, amount), at, "paid", None),
        (deposit, deposit_cents, between, "paid", None),
        (retried, amount, between, "failed", None),
        (case == Case.PARTIAL_TWO, amount * 4 // 10, at, "paid", None),
        (case == Case.PARTIAL_TWO, amount * 3 // 10, later, "paid", None),
        (case == Case.PARTIAL_SHORT, amount - short_cents, at, "paid", None),
        (case == Case.FAILED, amount, at, "failed", None),
        (case == Case.REFUNDED, amount, at, "refunded", refunded_at),
    ]
    frames = []
    for mask, cents, when, status, modified in parts:
        frames.append(
            pd.DataFrame(
                {
                    "order": np.flatnonzero(mask),
                    "cents": np.broadcast_to(cents, n)[mask],
                    "at": when[mask],
                    "status": status,
                    "modified": (when if modified is None else modified)[mask],
                }
            )
        )
    pay = pd.concat(frames, ignore_index=True)
    pay["payment_id"] = daily_ids("SK", pay["at"].to_numpy())
    return pay


def _plan_locks(o: pd.DataFrame, lines: dict[str, np.ndarray]) -> np.ndarray:
    """Which order lines hold a stock lock: every line of a locked order, all but the first of NOT_LOCKED ones."""
    order = lines["order"]
    locked = o["locked"].to_numpy()[order]
    partly = (o["case"].to_numpy()[order] == Case.NOT_LOCKED) & (lines["line_no"] > 0)
    return locked | partly


def _plan_parcels(rng: np.random.Generator, o: pd.DataFrame, clock: int) -> pd.DataFrame:
    order, first, shipped, offsets = _parcel_timelines(rng, o, clock)
    n_events, exception_state = _carrier_progress(o, order, first, shipped, offsets, clock)
    n = len(order)
    shares = np.array([c[5] for c in CARRIERS])
    weight = np.round(rng.uniform(0.3, 6.0, n), 2)
    return pd.DataFrame(
        {
            "order": order,
            "shipped": shipped,
            "n_events": n_events,
            "exception_state": exception_state,
            "state": np.where(exception_state > 0, exception_state, EVENTS_TO_STATE[n_events]),
            **dict(zip(EVENT_COLUMNS, offsets.T)),
            "carrier": rng.choice(len(CARRIERS), n, p=shares / shares.sum()),
            "weight": np.where(rng.random(n) < 0.02, np.nan, weight),  # some parcels leave unweighed
            "warehouse": rng.integers(0, len(WAREHOUSES), n),
            "courier": rng.integers(0, len(SURNAMES), n),
            "courier_phone": mobile_numbers(rng, n),
            "signer": rng.integers(0, len(SIGNERS), n),
            "with_pod": rng.random(n) < 0.85,  # the WMS has proof of delivery for most signed parcels
            "serial": 1 + rng.permutation(n),  # makes the waybill number
        }
    ).assign(waybill=lambda p: waybill_numbers(p["carrier"].to_numpy(), p["serial"].to_numpy()))


def _parcel_timelines(rng: np.random.Generator, o: pd.DataFrame, clock: int):
    """Parcels that left the warehouse by now: order, first of its order?, shipped at, event offsets."""
    case, n_lines = o["case"].to_numpy(), o["n_lines"].to_numpy()
    count = o["shipped"].to_numpy().astype(np.int64)
    count += (case == Case.NATURAL) & (count > 0) & (n_lines >= 2) & (rng.random(len(o)) < 0.05)
    count = np.where(case == Case.SPLIT, np.minimum(n_lines, 2 + o["variant"].to_numpy() % 2), count)

    order = np.repeat(np.arange(len(o)), count)
    first = ranks_in_groups(count) == 0
    later_gaps = _parcel_gaps(rng, len(order))
    offsets = np.where(first[:, None], o[EVENT_COLUMNS].to_numpy()[order], np.cumsum(later_gaps, axis=1))
    # A natural order's second parcel leaves a little later; a split order's others left recently.
    shipped = np.where(
        first,
        o["shipped_at"].to_numpy()[order],
        np.where(
            case[order] == Case.SPLIT,
            clock - random_hours(rng, len(order), 4, 20),
            o["shipped_at"].to_numpy()[order] + random_hours(rng, len(order), 0.2, 4),
        ),
    )
    keep = shipped <= clock  # a second parcel may still be on the packing table
    return order[keep], first[keep], shipped[keep], offsets[keep]


def _carrier_progress(
    o: pd.DataFrame, order: np.ndarray, first: np.ndarray, shipped: np.ndarray, offsets: np.ndarray, clock: int
) -> tuple[np.ndarray, np.ndarray]:
    """How many carrier events each parcel has had by now, and the Kuaidi100 trouble state (0: none) of the last."""
    case, point, variant = (o[c].to_numpy()[order] for c in ("case", "event_point", "variant"))
    n_events = (shipped[:, None] + offsets <= clock).sum(axis=1)
    # A pinned case's first parcel stops at its pinned event; a split order's others do not get delivered yet.
    n_events = np.where(first & (case != Case.NATURAL), point - SHIPPED, n_events)
    n_events = np.where((case == Case.SPLIT) & ~first, np.minimum(n_events, AT_DEST_HUB), n_events)
    trouble = np.array([state for state, _ in EXCEPTIONS])[variant % len(EXCEPTIONS)]
    return n_events, np.where(first & (case == Case.EXCEPTION), trouble, 0)


def _plan_customers(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    names = concat_strings(
        np.array(SURNAMES)[:, None, None],
        np.array(GIVEN_NAMES)[None, :, None],
        np.array(["", *GIVEN_NAMES])[None, None, :],
    )
    city = rng.integers(0, len(CITIES), n)
    district = rng.integers(0, 3, n)
    return {
        "name": names.ravel()[rng.integers(0, names.size, n)],
        "phone": mobile_numbers(rng, n),
        "id_card": _id_cards(rng, city, district),
        "with_id": rng.random(n) < 0.9,
        "city": city,
        "district": district,
        "address": _addresses(rng, city, district),
    }


def _addresses(rng: np.random.Generator, city: np.ndarray, district: np.ndarray) -> np.ndarray:
    """浙江省杭州市西湖区文三路123号, half of them with a unit such as 5幢1203室."""
    prefix = np.array([[[_place(c) + d + s for s in c[3]] for d in c[2]] for c in CITIES])
    n = len(city)
    number = rng.integers(1, 800, n).astype(str)
    unit = concat_strings(
        rng.integers(1, 30, n).astype(str),
        "幢",
        (rng.integers(1, 30, n) * 100 + rng.integers(1, 6, n)).astype(str),
        "室",
    )
    unit = np.where(rng.random(n) < 0.5, unit, "")
    return concat_strings(prefix[city, district, rng.integers(0, 3, n)], number, "号", unit)


def _id_cards(rng: np.random.Generator, city: np.ndarray, district: np.ndarray) -> np.ndarray:
    """18-character resident ID numbers with a valid ISO 7064 check character."""
    n = len(city)
    region = np.array([c[4] for c in CITIES])[city] * 100 + district + 2
    born = np.datetime64("1965-01-01") + rng.integers(0, 40 * 365, n).astype("timedelta64[D]")
    body = (region * 10**8 + yyyymmdd(born)) * 1000 + rng.integers(1, 1000, n)
    digits = body[:, None] // 10 ** np.arange(16, -1, -1) % 10
    weights = np.array([7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2])
    check = np.array(list("10X98765432"))[(digits * weights).sum(axis=1) % 11]
    return np.strings.add(body.astype(str), check)


# --- rendering: the plan in each system's own names and formats ----------------------------------------


def _order_table(plan: _Plan) -> Table:
    o, customers = plan.orders, plan.customers
    promise = o["promise"].to_numpy()
    modified = np.maximum(o["ordered"].to_numpy(), o["cancelled_at"].to_numpy())
    return {
        "FBillNo": o["order_no"].tolist(),
        "FCustName": customers["name"].tolist(),
        "FPhone": customers["phone"].tolist(),
        "FIdCard": _nullable(customers["id_card"], customers["with_id"]),
        "FAddress": customers["address"].tolist(),
        "FAmount": (o["amount"] / 100).tolist(),
        "FCurrency": ["CNY"] * len(o),
        "FDate": timestamp_text(o["ordered"].to_numpy()).tolist(),
        "FPromiseDate": _nullable(date_text(promise), promise >= 0),
        "FStatus": np.where(o["cancelled"], "C", "A").tolist(),
        "FModifyDate": timestamp_text(modified).tolist(),
    }


def _line_table(plan: _Plan) -> Table:
    lines, skus = plan.lines, plan.skus
    return {
        "FEntryID": (1 + np.arange(len(lines["order"]))).tolist(),
        "FBillNo": plan.orders["order_no"].to_numpy()[lines["order"]].tolist(),
        "FMaterialId": skus["code"][lines["sku"]].tolist(),
        "FQty": lines["qty"].astype(float).tolist(),
        "FPrice": (skus["price"][lines["sku"]] / 100).tolist(),
    }


def _payment_table(plan: _Plan) -> Table:
    pay = plan.payments
    booked = pay["status"].ne("failed").to_numpy()
    voucher = np.full(len(pay), "", dtype=object)
    voucher[booked] = daily_ids("记", pay["at"].to_numpy()[booked])
    # A few booked payments lack their voucher number, a fact the pipeline reports as missing.
    has_voucher = booked & (np.arange(len(pay)) % 50 != 7)
    return {
        "收款单号": pay["payment_id"].tolist(),
        "订单编号": plan.orders["order_no"].to_numpy()[pay["order"].to_numpy()].tolist(),
        "金额": (pay["cents"] / 100).tolist(),
        "收款时间": timestamp_text(pay["at"].to_numpy()).tolist(),
        "凭证号": _nullable(voucher, has_voucher),
        "状态": pay["status"].map({"paid": "已收款", "refunded": "已退款", "failed": "失败"}).tolist(),
        "修改时间": timestamp_text(pay["modified"].to_numpy()).tolist(),
    }


def _stock_table(plan: _Plan) -> Table:
    """Stock per SKU; reserved is what active locks hold back for orders still in the warehouse."""
    o, lines, skus = plan.orders, plan.lines, plan.skus
    order = lines["order"]
    held = plan.locks & ~o["shipped"].to_numpy()[order] & ~o["cancelled"].to_numpy()[order]
    reserved = np.bincount(lines["sku"][held], lines["qty"][held], minlength=len(skus["code"])).astype(np.int64)
    # The SKUs NOT_LOCKED orders wait for run short: available below safety stock (rule 2).
    waiting = (o["case"].to_numpy()[order] == Case.NOT_LOCKED) & (lines["line_no"] == 0)
    short = pd.unique(lines["sku"][waiting])[: max(2, len(skus["code"]) // 20)]
    available = skus["available"].copy()
    available[short] = skus["short_of"][short]
    return {
        "item_code": skus["code"].tolist(),
        "qty_on_hand": (reserved + available).tolist(),
        "qty_reserved": reserved.tolist(),
        "safety_qty": skus["safety"].tolist(),
        "last_modified": timestamp_text(plan.clock - skus["counted_ago"]).tolist(),
    }


def _lock_table(plan: _Plan) -> Table:
    o, lines, locks = plan.orders, plan.lines, plan.locks
    order = lines["order"][locks]
    at = o["locked_at"].to_numpy()[order] + lines["line_no"][locks]  # one line a second
    released = o["cancelled"].to_numpy()[order]
    modified = np.where(released, o["cancelled_at"].to_numpy()[order], at)
    return {
        "lock_id": daily_ids("LK", at).tolist(),
        "ref_order": o["order_no"].to_numpy()[order].tolist(),
        "item_code": plan.skus["code"][lines["sku"][locks]].tolist(),
        "lock_qty": lines["qty"][locks].tolist(),
        "lock_status": np.where(released, "RELEASED", "LOCKED").tolist(),
        "lock_time": timestamp_text(at).tolist(),
        "last_modified": timestamp_text(modified).tolist(),
    }


def _outbound_table(plan: _Plan) -> Table:
    parcels = plan.parcels
    shipped = timestamp_text(parcels["shipped"].to_numpy()).tolist()
    weight = parcels["weight"].to_numpy()
    return {
        "ref_order": plan.orders["order_no"].to_numpy()[parcels["order"].to_numpy()].tolist(),
        "tracking_no": parcels["waybill"].tolist(),
        "express_company": CARRIER_CODE[parcels["carrier"].to_numpy()].tolist(),
        "gross_weight": _nullable(weight, ~np.isnan(weight)),
        "outbound_time": shipped,
        "last_modified": shipped,
    }


def _pod_table(plan: _Plan) -> Table:
    p = plan.parcels[(plan.parcels["state"] == 3) & plan.parcels["with_pod"]]
    waybill = p["waybill"].to_numpy().astype(str)
    return {
        "tracking_no": waybill.tolist(),
        "signed_by": np.array(SIGNERS)[p["signer"].to_numpy()].tolist(),
        "signed_time": timestamp_text((p["shipped"] + p[f"event_{SIGNED}"]).to_numpy()).tolist(),
        "photo": concat_strings("https://wms.demo.example/pod/", waybill, ".jpg").tolist(),
    }


RENDER: dict[str, Callable[[_Plan], Table]] = {
    "T_SAL_ORDER": _order_table,
    "T_SAL_ORDERENTRY": _line_table,
    "收款单": _payment_table,
    "inv_stock": _stock_table,
    "inv_lock": _lock_table,
    "outbound": _outbound_table,
    "pod": _pod_table,
}


def _bad_rows(plan: _Plan) -> dict[str, BadRows]:
    """Rows that break the source contract, as real systems deliver now and then, around one shipped order.

    Per table, a function of the rendered rows: most bad rows are a good row with one thing wrong.
    """
    o = plan.orders
    victim = int(np.flatnonzero((o["case"] == Case.NATURAL) & o["shipped"] & (o["n_lines"] == 1))[0])
    line = int(np.flatnonzero(plan.lines["order"] == victim)[0])
    payment = int(np.flatnonzero(plan.payments["order"].to_numpy() == victim)[0])
    parcel = int(np.flatnonzero(plan.parcels["order"].to_numpy() == victim)[0])
    stamp = str(timestamp_text(np.array([plan.clock - HOUR]))[0])
    unknown_order = _successor(o["order_no"].iloc[-1])
    other_sku = str(plan.skus["code"][(plan.lines["sku"][line] + 1) % len(plan.skus["code"])])
    # A serial past the last parcel's: a waybill number no parcel has.
    stray_waybill = str(
        waybill_numbers(plan.parcels["carrier"].to_numpy()[[parcel]], np.array([len(plan.parcels) + 1]))[0]
    )

    def receipts(t: Table) -> list[dict]:
        good = _row(t, payment)
        new_id = _successor(max(t["收款单号"]))
        return [
            good | {"收款单号": new_id, "金额": -50.0, "修改时间": stamp},
            good | {"收款单号": _successor(new_id), "状态": "处理中", "修改时间": stamp},
            # The same 收款单号 and 修改时间 with another amount: a contradiction, not an update.
            good | {"金额": good["金额"] + 100},
        ]

    return {
        "T_SAL_ORDER": lambda t: [
            _row(t, victim) | {"FBillNo": "", "FModifyDate": stamp},
            _row(t, victim) | {"FBillNo": unknown_order, "FDate": f"{stamp[:4]}-13-45 99:00", "FModifyDate": stamp},
        ],
        "T_SAL_ORDERENTRY": lambda t: [
            _row(t, line) | {"FEntryID": len(t["FEntryID"]) + 1, "FMaterialId": other_sku, "FQty": -1.0},
        ],
        "收款单": receipts,
        "outbound": lambda t: [
            _row(t, parcel)
            | {"ref_order": _successor(unknown_order), "tracking_no": stray_waybill, "last_modified": stamp},
        ],
    }


def _row(table: Table, i: int) -> dict:
    return {column: values[i] for column, values in table.items()}


def _append(table: Table, row: dict) -> None:
    for column, values in table.items():
        values.append(row[column])


def _successor(number: str) -> str:
    """SO20261125000123 -> SO20261125000124: an id that does not exist yet."""
    digits = len(number.rstrip("0123456789"))
    return number[:digits] + str(int(number[digits:]) + 1)


# --- the carrier sandbox --------------------------------------------------------------------------------


def _write_carrier(path: Path, plan: _Plan) -> dict[str, int]:
    """Waybills the carrier knows (at least one event) and their events; the rest answer 'no record'."""
    tracked = plan.parcels[plan.parcels["n_events"] > 0].reset_index(drop=True)
    order = tracked["order"].to_numpy()
    customers = plan.customers
    with closing(_open(path)) as conn:
        carrier_sandbox.create_schema(conn)
        # Filling is faster without the index; create_schema puts it back afterwards.
        conn.execute("DROP INDEX carrier_events_waybill")
        with conn:
            waybills = conn.executemany(
                "INSERT INTO carrier_waybills (waybill_no, com, phone_tail, state, ischeck) VALUES (?, ?, ?, ?, ?)",
                zip(
                    tracked["waybill"].tolist(),
                    CARRIER_CODE[tracked["carrier"].to_numpy()].tolist(),
                    np.strings.slice(customers["phone"][order], -4, None).tolist(),
                    tracked["state"].tolist(),
                    (tracked["state"] == 3).astype(int).tolist(),
                ),
            ).rowcount
        batches = (
            _event_rows(
                tracked.iloc[i : i + EVENT_CHUNK],
                customers["city"][order[i : i + EVENT_CHUNK]],
                customers["district"][order[i : i + EVENT_CHUNK]],
            )
            for i in range(0, len(tracked), EVENT_CHUNK)
        )
        with conn:
            events = conn.executemany(
                "INSERT INTO carrier_events (waybill_no, time, context, area_name, status) VALUES (?, ?, ?, ?, ?)",
                chain.from_iterable(batches),
            ).rowcount
        carrier_sandbox.create_schema(conn)
    return {"carrier_waybills": waybills, "carrier_events": events}


def _event_rows(p: pd.DataFrame, dest: np.ndarray, district: np.ndarray) -> Iterable[tuple]:
    """The events of a batch of parcels, oldest first: (waybill, time, context, area, status)."""
    n = p["n_events"].to_numpy()
    i = np.repeat(np.arange(len(p)), n)
    k = ranks_in_groups(n) + 1
    time = p["shipped"].to_numpy()[i] + p[EVENT_COLUMNS].to_numpy()[i, k - 1]
    trouble = p["exception_state"].to_numpy()[i]
    kind = np.where((k == n[i]) & (trouble > 0), -trouble, k)  # carrier trouble takes the last event's place
    where = {
        "warehouse": p["warehouse"].to_numpy()[i],
        "carrier": p["carrier"].to_numpy()[i],
        "dest": dest[i],
        "district": district[i],
        "courier": p["courier"].to_numpy()[i],
        "phone": p["courier_phone"].to_numpy()[i],
        "signer": p["signer"].to_numpy()[i],
    }
    context, area, status = (np.empty(len(i), dtype=object) for _ in range(3))
    for kd in np.unique(kind):
        m = kind == kd
        context[m], area[m] = _event_text(int(kd), {name: v[m] for name, v in where.items()})
        status[m] = kuaidi100.STATE_LABEL[int(-kd if kd < 0 else EVENTS_TO_STATE[kd])]
    return zip(
        p["waybill"].to_numpy()[i].tolist(),
        timestamp_text(time).tolist(),
        context.tolist(),
        area.tolist(),
        status.tolist(),
    )


def _event_text(kind: int, q: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Context and areaName of one kind of event, worded as Chinese carriers do; some carry the courier's mobile.

    `kind` is the event's place on the way (PICKUP ... SIGNED), or minus the Kuaidi100 state of carrier trouble.
    """
    origin, dest = WAREHOUSE_CITY[q["warehouse"]], q["dest"]
    at_origin, at_dest = concat_strings("【", CITY[origin], "】"), concat_strings("【", CITY[dest], "】")

    def courier() -> np.ndarray:
        return concat_strings("快递员", np.array(SURNAMES)[q["courier"]], "师傅")

    if kind == PICKUP:
        site = WAREHOUSE_DISTRICT[q["warehouse"]]
        return concat_strings(at_origin, CARRIER_NAME[q["carrier"]], " ", site, "营业部 已揽收"), AREA[origin]
    if kind == AT_ORIGIN_HUB:
        return concat_strings(at_origin, "快件已到达 ", HUB[origin]), AREA[origin]
    if kind == LEFT_ORIGIN_HUB:
        return concat_strings(at_origin, "快件已从 ", HUB[origin], " 发出，下一站 ", HUB[dest]), AREA[origin]
    if kind == AT_DEST_HUB:
        return concat_strings(at_dest, "快件已到达 ", HUB[dest]), AREA[dest]
    if kind == DISPATCH:
        site = DISTRICT[dest, q["district"]]
        return concat_strings(at_dest, site, "营业部 ", courier(), "正在派件，电话：", q["phone"]), AREA[dest]
    if kind == SIGNED:
        signer = np.array(SIGNERS)[q["signer"]]
        return concat_strings(
            at_dest, "快件已签收，签收人：", signer, "。如有疑问请联系", courier(), "，电话：", q["phone"]
        ), AREA[dest]
    if kind == -2:
        site = DISTRICT[dest, q["district"]]
        return concat_strings(at_dest, "收件人电话无人接听，快件暂存", site, "营业部，待联系后再派送"), AREA[dest]
    if kind == -4:
        return concat_strings(at_origin, "退回件已由寄件人签收，原因：收件人拒收"), AREA[origin]
    if kind == -6:
        return concat_strings(at_dest, "收件地址不详，快件正在退回寄件人"), AREA[dest]
    return concat_strings(at_dest, "收件人拒收，原因：不想要了。", courier(), "电话：", q["phone"]), AREA[dest]  # -14


# --- the config -----------------------------------------------------------------------------------------


def _config_text(carrier_db: Path, max_polls: int) -> str:
    from order_pipeline.domain.passwords import hash_password

    # The sandbox path is written absolute: the config resolves relative paths in database URLs only.
    return _config_template().format(
        endpoint=json.dumps(f"sandbox://{carrier_db}"),
        max_polls=max_polls,
        customer=DEMO_CUSTOMER,
        key_env=DEMO_KEY_ENV,
        key=DEMO_KEY,
        link_secret=LINK_SECRET_FILE,
        staff_user=DEMO_STAFF[0],
        staff_password=DEMO_STAFF[1],
        staff_hash=hash_password(DEMO_STAFF[1]),
    )


def _config_template() -> str:
    """The commented config, with str.format placeholders for what each demo differs in."""
    return resources.files("order_pipeline.demo").joinpath(CONFIG_TEMPLATE_FILE).read_text(encoding="utf-8")


def _write_link_secret(target: Path) -> None:
    """A fresh random secret for signing the demo's tracking links, readable by its owner only."""
    path = target / LINK_SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(secrets.token_urlsafe(32), encoding="utf-8")
    path.chmod(0o600)


# --- small utilities --------------------------------------------------------------------------------------


def _place(city: tuple) -> str:
    """浙江省杭州市, or 上海市 for a city that is its own province."""
    province, name = city[0], city[1]
    return name if province == name else province + name


def _open(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    # Nothing to protect while a file is being generated: no rollback journal, no fsync.
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    return conn


def _write_table(conn: sqlite3.Connection, name: str, schema: dict[str, str], table: Table) -> int:
    columns = ", ".join(f'"{column}" {kind}' for column, kind in schema.items())
    conn.execute(f'CREATE TABLE "{name}" ({columns})')
    marks = ", ".join("?" * len(schema))
    with conn:
        count = conn.executemany(f'INSERT INTO "{name}" VALUES ({marks})', zip(*(table[c] for c in schema))).rowcount
    # Indexed after loading: building an index once is faster than keeping it up to date row by row.
    for column in SOURCE_INDEXES.get(name, ()):
        conn.execute(f'CREATE INDEX "ix_{name}_{column}" ON "{name}" ("{column}")')
    return count


def _local_seconds(now: datetime) -> int:
    local = now.astimezone(ZoneInfo(TIMEZONE)).replace(tzinfo=None)
    return (local - datetime(1970, 1, 1)) // timedelta(seconds=1)


def _nullable(values: np.ndarray, present: np.ndarray) -> list:
    out = np.asarray(values).astype(object)
    out[~present] = None
    return out.tolist()
