"""One round of customer messages: plan what is due, then send what may go now.

`Notifier.run(now)` is what the `customer_notifications` asset calls after each publish (and the
notification sensor when a held message or a retry falls due):

1. Plan: the snapshot rows published since the last round (and the open orders whose link is
   about to expire) against the ledger, by `events.plan_events`; record what is new, drop what
   became moot. One transaction; the ledger's unique key keeps a rerun from recording twice.
2. Sweep the claims a crashed sender left (see `ledger`).
3. Send each ready row: nothing for a cancelled order or a suppressed number; held until the
   morning in quiet hours or past the number's daily cap; else through the event's channels in
   turn (the next when one cannot reach the customer: no openid, not a follower, a bad number
   for SMS), claimed before the send and recorded after.

Messages are rendered from the order as it is when they go, so a held one is current.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pandas as pd
import sqlalchemy as sa

from order_pipeline.contract.schema import RAW_TABLES, order_tracking_snapshot
from order_pipeline.domain.masking import mask_phone
from order_pipeline.domain.times import aware_utc, utc
from order_pipeline.notify import ledger
from order_pipeline.notify.channels.message import CustomerChannel, Failure, SendError
from order_pipeline.notify.events import LINK_RENEWED, RESEND, plan_events, renewal_key
from order_pipeline.notify.phones import PhoneKey, suppress_hash, suppressed
from order_pipeline.notify.render import Links, fields, message
from order_pipeline.notify.settings import EventSettings, NotifySettings
from order_pipeline.notify.timing import day_start, next_morning, quiet_until
from order_pipeline.warehouse.frames import read_frame, read_keyed
from order_pipeline.warehouse.state import get_state, set_state

log = logging.getLogger(__name__)

CURSOR = "notifications_planned_through"  # pipeline_state: the newest published_at planned
BATCH = 500
DOWN_AFTER = 5  # retryable failures in a row after which a channel rests for the round
MAX_RETRY_DELAY = timedelta(minutes=30)
_ORDER_COLUMNS = (
    "order_no",
    "stage",
    "stage_label",
    "status",
    "customer_phone",
    "ordered_at",
    "shipped_at",
    "delivered_at",
    "out_for_delivery",
    "latest_event_at",
    "exception_reason",
    "eta",
    "promised_date",
    "waybill_nos",
    "carrier_codes",
    "published_at",
)
_TIMES = ["ordered_at", "shipped_at", "delivered_at", "latest_event_at", "eta", "published_at"]


@dataclass
class RoundResult:
    recorded: int = 0  # new ledger rows
    superseded: int = 0
    too_old: int = 0  # events not news any more at first sight
    in_doubt: int = 0  # claims a crashed sender left, marked by the sweep
    outcomes: Counter = field(default_factory=Counter)  # (event, channel, status) -> messages

    def count(self, status: str) -> int:
        return sum(n for (_, _, s), n in self.outcomes.items() if s == status)

    @property
    def failure_rate(self) -> float:
        tried = sum(self.count(s) for s in (ledger.SENT, ledger.FAILED, ledger.INVALID))
        return (self.count(ledger.FAILED) + self.count(ledger.INVALID)) / tried if tried else 0.0


class Notifier:
    def __init__(
        self,
        engine: sa.Engine,
        settings: NotifySettings,
        channels: Mapping[str, CustomerChannel],
        links: Links,
        key: PhoneKey,
    ):
        self.engine, self.settings, self.channels, self.links, self.key = engine, settings, channels, links, key

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()

    # -- planning ------------------------------------------------------------------------------

    def plan(self, now: datetime, result: RoundResult) -> None:
        s = order_tracking_snapshot
        with self.engine.begin() as conn:
            since = get_state(conn, CURSOR)
            query = sa.select(*(s.c[c] for c in _ORDER_COLUMNS))
            if since:
                query = query.where(s.c.published_at >= datetime.fromisoformat(since))
            orders = read_frame(conn, query, _TIMES)
            told = ledger.told(conn, orders["order_no"].tolist()) if len(orders) else _no_rows()
            plan = plan_events(orders, told, dict(self.settings.events), now, self.settings.timezone)
            if LINK_RENEWED in self.settings.events:
                due = ledger.renewals(conn, now, self.settings.renew_link_before)
                plan.new += [
                    {"order_no": o, "event": LINK_RENEWED, "event_key": renewal_key(e.to_pydatetime())}
                    for o, e in zip(due["order_no"], due["expires_at"], strict=True)
                ]
            result.recorded += ledger.record(conn, plan.new, now)
            result.superseded += ledger.drop(conn, plan.moot)
            result.too_old += plan.too_old
            if len(orders):
                newest = pd.Timestamp(orders["published_at"].max()).to_pydatetime()
                set_state(conn, CURSOR, utc(newest).isoformat(), now)

    # -- sending -------------------------------------------------------------------------------

    def run(self, now: datetime) -> RoundResult:
        now = aware_utc(now)
        result = RoundResult()
        self.plan(now, result)
        wechat = {n for n, c in self.channels.items() if c.kind == "wechat"}
        result.in_doubt = ledger.sweep(self.engine, now, wechat)
        self.send_ready(now, result)
        return result

    def send_ready(self, now: datetime, result: RoundResult) -> None:
        with self.engine.connect() as writer:
            self._send_ready(_Round(self, writer, now, result))

    def _send_ready(self, round_: _Round) -> None:
        now = round_.now
        # A row is tried once per round: one that is still ready after its try (another sender
        # changed it under us) is left for the next round rather than tried in a loop.
        seen: set[int] = set()
        while True:
            with self.engine.connect() as conn:
                rows = ledger.ready(conn, now, BATCH)
                rows = rows[~rows["id"].isin(seen)]
                if rows.empty:
                    return
                orders = _orders(conn, rows["order_no"].unique().tolist())
            seen.update(int(i) for i in rows["id"])
            round_.send_batch(rows, orders)


@dataclass
class _Round:
    notifier: Notifier
    writer: sa.Connection  # claims, outcomes and short codes, each committed in its own transaction
    now: datetime
    result: RoundResult
    failures_in_a_row: Counter = field(default_factory=Counter)  # channel -> retryable failures
    sent_today: Counter = field(default_factory=Counter)  # phone hash -> messages sent today

    def send_batch(self, rows: pd.DataFrame, orders: dict[str, dict]) -> None:
        n = self.notifier
        hashes = {o: n.key.hash(r.get("customer_phone")) for o, r in orders.items()}
        known = [h for h in hashes.values() if h]
        with n.engine.connect() as conn:
            blocked = suppressed(conn, known)
            counted = ledger.sent_since(conn, [h for h in known if h not in self.sent_today], self._day_start())
        for h in known:
            self.sent_today.setdefault(h, counted.get(h, 0))
        for row in rows.itertuples(index=False):
            order = orders.get(str(row.order_no))
            phone_hash = hashes.get(str(row.order_no))
            self.send_row(row, order, phone_hash, phone_hash in blocked)

    def _day_start(self) -> datetime:
        return day_start(self.now, self.notifier.settings.timezone)

    def _finish(self, row, token: str | None, status: str, channel: str | None = None, **values) -> None:
        ledger.finish(self.writer, int(row.id), token, status=status, **values)
        self.result.outcomes[(row.event, channel or "-", status)] += 1

    def send_row(self, row, order: dict | None, phone_hash: str | None, blocked: bool) -> None:
        now, s = self.now, self.notifier.settings
        ev = s.resend if row.event == RESEND else s.events.get(row.event)
        if ev is None:
            return self._finish(row, None, ledger.SUPERSEDED, reason="the event is turned off")
        if order is None or order.get("status") == "cancelled":
            why = "the order was cancelled" if order else "the order is not in the snapshot"
            return self._finish(row, None, ledger.SUPERSEDED, reason=why)
        who = {"phone_hash": phone_hash, "phone_masked": mask_phone(order.get("customer_phone")) or None}
        if blocked:
            return self._finish(row, None, ledger.SUPPRESSED, reason="the number opted out", **who)
        quiet = quiet_until(now, s.timezone, s.quiet_hours)
        if quiet is not None:
            return self._finish(row, None, ledger.HELD, reason="quiet hours", due_at=quiet, **who)
        if phone_hash and self.sent_today[phone_hash] >= s.daily_cap:
            later = next_morning(now, s.timezone, s.quiet_hours)
            return self._finish(row, None, ledger.HELD, reason=f"daily cap of {s.daily_cap}", due_at=later, **who)
        if int(row.attempts) and utc(row.created_at.to_pydatetime()) < now - s.retry_for:
            return self._finish(row, None, ledger.FAILED, reason=f"not sent within {s.retry_for}", **who)
        self._through_channels(row, order, ev, who)

    def _through_channels(self, row, order: dict, ev: EventSettings, who: dict) -> None:
        n, now = self.notifier, self.now
        link = n.links.link(row.order_no, now)
        values = fields(
            order,
            row.event,
            link,
            now,
            n.settings.timezone,
            lambda: n.links.short_code(self.writer, row.order_no, link.expires_at),
        )
        token, problems = None, []
        for name in ev.send:
            channel = n.channels[name]
            if self.failures_in_a_row[name] >= DOWN_AFTER:
                # The vendor is down or throttling: the message waits a minute rather than a reply now.
                retry = now + timedelta(minutes=1)
                return self._finish(
                    row, token, ledger.PENDING, name, reason=f"{name} is not answering", due_at=retry, **who
                )
            msg = message(f"op-{int(row.id)}", ev.templates[name], values, order)
            problem = channel.problem(msg)
            if problem:
                problems.append(f"{name}: {problem}")
                continue
            token = ledger.claim(self.writer, int(row.id), name, now, token)
            if token is None:
                return  # another sender has it
            try:
                sent = channel.send(msg)
            except SendError as e:
                if e.failure in (Failure.UNREACHABLE, Failure.PERMANENT):
                    problems.append(f"{name}: {e}")
                    continue
                return self._failed(row, token, name, e, who)
            except Exception as e:  # a bug in a channel must not stop the round
                log.exception("customer channel %s failed unexpectedly", name)
                err = SendError(f"{name}: {type(e).__name__}: {e}", failure=Failure.RETRY_LATER, code="error")
                return self._failed(row, token, name, err, who)
            self.failures_in_a_row[name] = 0
            if who["phone_hash"]:
                self.sent_today[who["phone_hash"]] += 1
            return self._finish(
                row,
                token,
                ledger.SENT,
                name,
                sent_at=now,
                provider_id=sent.provider_id,
                attempts=int(row.attempts) + 1,
                link_expires_at=link.expires_at,
                reason=None,
                error_code=None,
                **who,
            )
        status = ledger.FAILED if token is not None else ledger.INVALID
        attempts = int(row.attempts) + (1 if token is not None else 0)
        self._finish(row, token, status, reason="; ".join(problems)[:500], attempts=attempts, **who)

    def _failed(self, row, token: str, name: str, e: SendError, who: dict) -> None:
        now = self.now
        attempts = int(row.attempts) + 1
        if e.failure == Failure.OPTED_OUT:
            with self.writer.begin():
                if who["phone_hash"]:
                    suppress_hash(self.writer, who["phone_hash"], who["phone_masked"] or "", name, e.code, now)
            return self._finish(
                row, token, ledger.SUPPRESSED, name, reason=str(e)[:500], error_code=e.code, attempts=attempts, **who
            )
        self.failures_in_a_row[name] += 1
        delay = min(timedelta(minutes=1) * 2 ** min(attempts - 1, 5), MAX_RETRY_DELAY)
        if e.retry_after:
            delay = max(delay, timedelta(seconds=e.retry_after))
        log.warning("customer message %s via %s failed (attempt %d): %s", row.event, name, attempts, e)
        self._finish(
            row,
            token,
            ledger.PENDING,
            name,
            reason=str(e)[:500],
            error_code=e.code,
            attempts=attempts,
            due_at=now + delay,
            **who,
        )


def _no_rows() -> pd.DataFrame:
    return pd.DataFrame(columns=["id", "order_no", "event", "event_key", "status"])


def _orders(conn: sa.Connection, order_nos: list[str]) -> dict[str, dict]:
    """The orders the messages are about, as they are now, with the openid from the ERP's rows."""
    s, o = order_tracking_snapshot, RAW_TABLES["orders"]
    query = sa.select(*(s.c[c] for c in _ORDER_COLUMNS), o.c.customer_openid).outerjoin(o, o.c.order_no == s.c.order_no)
    frame = read_keyed(conn, query, s.c.order_no, order_nos, _TIMES)
    frame = frame.astype(object).where(frame.notna(), None)
    return {r["order_no"]: r for r in frame.to_dict("records")}
