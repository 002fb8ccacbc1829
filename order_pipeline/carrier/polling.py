"""One polling pass over the due waybills: ask Kuaidi100 about each and store what it says.

A carrier that is down costs every waybill all of the client's attempts, each a timeout plus
its backoff: at the default settings about 45 s a waybill, so a run over 500 due waybills
would take six hours. After `max_consecutive_failures` such failures in a row the pass stops
(the circuit is open): the waybills not asked keep their place, never polled or polled longest
ago, and are first in line at the next run.

Answers are stored as they come, every `STORE_SECONDS`, so a run that is killed loses no more
than the last few seconds of them, and one that crashes loses none.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import pandas as pd
import sqlalchemy as sa

from order_pipeline.carrier.protocol import Kuaidi100Error, Kuaidi100Unavailable, TrackingAnswer
from order_pipeline.carrier.store import store_poll_errors, store_tracking_answers

Query = Callable[[str, str, str | None], TrackingAnswer]  # (carrier code, waybill, phone) -> answer

# How long answers wait to be written: what a killed run loses at most. A write is a transaction
# whose commit costs tens of milliseconds on a busy disk, so one per answer would make a run
# against a fast carrier (the sandbox answers 4,675 waybills in 6 s) take eight times as long.
STORE_SECONDS = 5.0


@dataclass(frozen=True)
class PollResult:
    asked: int
    answers: int
    errors: dict[str, str]  # waybill -> why it got no answer
    skipped: int  # due waybills not asked because the circuit opened
    circuit_open: bool


def poll_due(
    engine: sa.Engine,
    due: pd.DataFrame,
    query: Query,
    now: datetime,
    max_consecutive_failures: int = 5,
    clock: Callable[[], float] = time.monotonic,
) -> PollResult:
    """Ask about each of `due` (waybill_no, carrier_code, phone) in order; 0 failures means never stop."""
    answers: list[TrackingAnswer] = []
    pending: dict[str, str] = {}
    errors: dict[str, str] = {}
    asked = answered = in_a_row = 0
    stored_at = clock()

    def store() -> None:
        nonlocal stored_at
        store_tracking_answers(engine, answers, via="poll", now=now)
        store_poll_errors(engine, pending, now)
        answers.clear()
        pending.clear()
        stored_at = clock()

    try:
        for waybill_no, carrier_code, phone in zip(due["waybill_no"], due["carrier_code"], due["phone"], strict=True):
            if max_consecutive_failures and in_a_row >= max_consecutive_failures:
                break
            asked += 1
            try:
                answers.append(query(carrier_code, waybill_no, phone))
                answered += 1
                in_a_row = 0
            except Kuaidi100Error as e:
                pending[waybill_no] = errors[waybill_no] = f"{e.return_code or 'transport'}: {e.message}"
                # An error answer about the waybill (no record yet, bad phone ...) means the carrier is up.
                in_a_row = in_a_row + 1 if isinstance(e, Kuaidi100Unavailable) else 0
            if clock() - stored_at >= STORE_SECONDS:
                store()
    finally:
        store()
    return PollResult(asked, answered, errors, len(due) - asked, asked < len(due))
