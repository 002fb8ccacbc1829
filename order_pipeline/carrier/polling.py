"""One polling pass over the due waybills: ask Kuaidi100 about each and store what it says.

A carrier that is down costs every waybill all of the client's attempts, each a timeout plus
its backoff: at the default settings about 45 s a waybill, so a run over 500 due waybills
would take six hours. After `max_consecutive_failures` such failures in a row the pass stops
(the circuit is open): the waybills not asked keep their place, never polled or polled longest
ago, and are first in line at the next run.

Answers are stored a few at a time while the pass goes on, so a run that is killed keeps what
it was told, and one that crashes keeps all of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import pandas as pd
import sqlalchemy as sa

from order_pipeline.carrier.protocol import Kuaidi100Error, Kuaidi100Unavailable, TrackingAnswer
from order_pipeline.carrier.store import store_poll_errors, store_tracking_answers

Query = Callable[[str, str, str | None], TrackingAnswer]  # (carrier code, waybill, phone) -> answer

# Answers and errors held before they are written: what a killed run loses at most. Each write
# is one transaction (a few milliseconds); a query is a round trip to Kuaidi100.
STORE_EVERY = 20


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
    store_every: int = STORE_EVERY,
) -> PollResult:
    """Ask about each of `due` (waybill_no, carrier_code, phone) in order; 0 failures means never stop."""
    answers: list[TrackingAnswer] = []
    pending: dict[str, str] = {}
    errors: dict[str, str] = {}
    asked = answered = in_a_row = 0

    def store() -> None:
        store_tracking_answers(engine, answers, via="poll", now=now)
        store_poll_errors(engine, pending, now)
        answers.clear()
        pending.clear()

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
            if len(answers) + len(pending) >= store_every:
                store()
    finally:
        store()
    return PollResult(asked, answered, errors, len(due) - asked, asked < len(due))
