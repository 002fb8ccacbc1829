"""The plan of a demo company: numbers only, one row per order, line, payment, lock and parcel.

Everything random is drawn here, up front and in a fixed order: the same seed gives the same
plan. Rendering the plan into each system's tables and writing them only read it. The bulk is
numpy arrays, one element per order, line, payment or parcel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from order_pipeline.demo.cases import (
    AT_DEST_HUB,
    CANCELLING,
    EVENT_COLUMNS,
    EVENTS_TO_STATE,
    EXCEPTIONS,
    LOCKED,
    LOCKING,
    ORDERED,
    PAID,
    PAID_IN_FULL,
    SHIPPED,
    SHIPPING,
    Case,
    assign_cases,
    pinned_points,
)
from order_pipeline.demo.customers import draw_customers
from order_pipeline.demo.random_data import DAY, daily_ids, mobile_numbers, random_hours, ranks_in_groups
from order_pipeline.demo.reference_data import CARRIERS, SIGNERS, SURNAMES, WAREHOUSES, waybill_numbers

LINE_MIX = (0.4, 0.3, 0.2, 0.1)  # share of orders with 1, 2, 3, 4 lines


@dataclass(frozen=True)
class Plan:
    """Everything random, drawn up front in a fixed order; rendering and writing only read it."""

    clock: int  # now, in local wall-clock seconds
    skus: dict[str, np.ndarray]
    orders: pd.DataFrame
    lines: dict[str, np.ndarray]
    payments: pd.DataFrame
    locks: np.ndarray  # per order line: whether it holds a stock lock
    parcels: pd.DataFrame
    customers: dict[str, np.ndarray]


def draw_plan(rng: np.random.Generator, orders: int, days: int, clock: int) -> Plan:
    """The plan of a company with `orders` orders over the `days` days before `clock` (local seconds)."""
    # One statement per draw: the order of the draws is what makes the demo reproducible.
    skus = _plan_skus(rng, orders)
    o = _plan_orders(rng, orders, days, clock)
    lines = _plan_lines(rng, o, len(skus["code"]))
    o["amount"] = np.bincount(lines["order"], lines["qty"] * skus["price"][lines["sku"]], len(o)).astype(np.int64)
    payments = _plan_payments(rng, o)
    parcels = _plan_parcels(rng, o, clock)
    customers = draw_customers(rng, len(o))
    return Plan(clock, skus, o, lines, payments, _plan_locks(o, lines), parcels, customers)


def _plan_skus(rng: np.random.Generator, orders: int) -> dict[str, np.ndarray]:
    """The catalogue, one SKU per 50 orders within bounds: code, price in cents, stock figures."""
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


def _parcel_gaps(rng: np.random.Generator, n: int) -> np.ndarray:
    """Seconds between carrier events: shipped -> picked up -> hub -> left -> dest hub -> dispatch -> signed.

    No gap reaches 48 h, so only STUCK parcels ever wait that long for an update.
    """
    bounds = ((0.5, 4), (1, 3), (1, 4), (6, 30), (1, 10), (0.3, 4))
    return np.column_stack([random_hours(rng, n, lo, hi) for lo, hi in bounds])


def _timeline_offsets(rng: np.random.Generator, n: int) -> np.ndarray:
    """Per order, seconds from its placing to each point of its timeline, the first parcel's events last."""
    lags = np.column_stack(
        [
            np.zeros(n, np.int64),
            random_hours(rng, n, 1 / 60, 1.5),  # ordered -> paid
            random_hours(rng, n, 0.05, 1),  # paid -> stock locked
            random_hours(rng, n, 1, 20),  # locked -> shipped
            _parcel_gaps(rng, n),  # the first parcel's carrier events
        ]
    )
    return np.cumsum(lags, axis=1)


def _plan_orders(rng: np.random.Generator, n: int, days: int, clock: int) -> pd.DataFrame:
    """One row per order: case, timeline, the stages reached by now, promised date; in time order, numbered."""
    case = assign_cases(rng, n)
    variant = pd.Series(case).groupby(case).cumcount().to_numpy()  # the n-th order of its case
    n_lines = rng.choice(np.arange(1, 5), n, p=LINE_MIX)
    # A split order ships a parcel per line at most: give it the lines for 2 or 3 parcels.
    n_lines = np.where(case == Case.SPLIT, np.maximum(n_lines, 2 + variant % 2), n_lines)

    offset = _timeline_offsets(rng, n)
    point, ago = pinned_points(rng, case, variant, days)
    ordered = clock - ago - offset[np.arange(n), point]
    times = ordered[:, None] + offset

    natural = case == Case.NATURAL
    abandoned = natural & (rng.random(n) < 0.04)  # never paid
    paid = np.isin(case, list(PAID_IN_FULL)) | (natural & ~abandoned & (times[:, PAID] <= clock))
    locked = np.isin(case, list(LOCKING)) | (natural & paid & (times[:, LOCKED] <= clock))
    shipped = np.isin(case, list(SHIPPING)) | (natural & locked & (times[:, SHIPPED] <= clock))
    cancelled = np.isin(case, list(CANCELLING))
    cancelling_from = np.where(case == Case.CANCELLED_UNPAID, times[:, ORDERED], times[:, PAID])
    cancelled_at = cancelling_from + random_hours(rng, n, 1, 24)

    today = clock // DAY * DAY
    # 4-7 days out: a natural order ships within a day, so only PROMISE_SOON orders trip rule 4.
    promise = np.where(paid & natural & (rng.random(n) < 0.4), ordered // DAY * DAY + rng.integers(4, 8, n) * DAY, -1)
    promise = np.where(case == Case.PROMISE_SOON, today + variant % 2 * DAY, promise)

    first_parcel = offset[:, SHIPPED + 1 :] - offset[:, [SHIPPED]]  # its carrier events, from shipped
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
            **dict(zip(EVENT_COLUMNS, first_parcel.T, strict=True)),
        }
    )
    # ERP rows and order numbers run in time order, as in a real ERP.
    o = o.sort_values("ordered", kind="stable").reset_index(drop=True)
    o["order_no"] = daily_ids("SO", o["ordered"].to_numpy())
    return o


def _plan_lines(rng: np.random.Generator, o: pd.DataFrame, n_skus: int) -> dict[str, np.ndarray]:
    """One element per order line: its order's row, line number within the order, SKU index, quantity."""
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
    """One row per parcel shipped by now: its order, timeline, carrier state and what the WMS records."""
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
            **dict(zip(EVENT_COLUMNS, offsets.T, strict=True)),
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


def _parcel_timelines(
    rng: np.random.Generator, o: pd.DataFrame, clock: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
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
