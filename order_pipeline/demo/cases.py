"""What the demo's orders are made to show, and where on its timeline each case's order is pinned.

Most orders follow the happy path as far as their age allows. A share of them is made to show
one of the cases in `Case`, each at least `QUOTAS[case][1]` times, so that every stage, every
alert rule and every carrier state appears at any size.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from order_pipeline.demo.random_data import random_hours

MIN_DAYS = 10  # how far back the pinned cases (PINS) reach


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


def assign_cases(rng: np.random.Generator, n: int) -> np.ndarray:
    """Per order, its Case: each case takes its quota of randomly picked orders, the rest are NATURAL."""
    case = np.full(n, Case.NATURAL, dtype=np.int64)
    picked = rng.permutation(n)
    start = 0
    for c, (share, least) in QUOTAS.items():
        k = max(least, round(share * n))
        case[picked[start : start + k]] = c
        start += k
    return case


def pinned_points(
    rng: np.random.Generator, case: np.ndarray, variant: np.ndarray, days: int
) -> tuple[np.ndarray, np.ndarray]:
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
