"""Drain the alert queue through the configured channels.

Per channel: start a rate budget from what the channel took in the last minute (recorded in
`alert_deliveries`), let `plan` fold what does not fit into digests, then for each message claim
its rows, send (`deliver`) and record every attempt. A channel that fails keeps its rows
pending with a retry time; the other channels are not held up by it.

By default a message gets one attempt per drain and a failure waits for its retry time, a later
drain: a sensor tick never sleeps. `retries` > 0 retries within the drain, with backoff, for a
caller that has no later drain (`order-pipeline run`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pandas as pd
import sqlalchemy as sa

from order_pipeline.alerts import queue
from order_pipeline.alerts.channels.delivery import Attempt, RateBudget, deliver, digest, plan
from order_pipeline.alerts.channels.message import AlertMessage, Channel
from order_pipeline.alerts.messages import MessageText

log = logging.getLogger(__name__)

# Channels without a platform limit (outbox, e-mail, a plain webhook) still fold a flood into
# digests rather than writing thousands of single messages in one round.
DEFAULT_PER_MINUTE = 120
RETRY_AFTER_OUTAGE = timedelta(minutes=1)


@dataclass(frozen=True)
class Sent:
    channel: str
    targets: str  # the groups (or channels) the rules named
    title: str
    alerts: int  # queue rows the message carried (a digest carries several)
    ok: bool
    attempts: int
    error: str | None = None


@dataclass
class DrainResult:
    sent: list[Sent] = field(default_factory=list)
    waiting: int = 0  # ready rows left for the next round (rate limits)

    @property
    def delivered(self) -> int:
        return sum(s.alerts for s in self.sent if s.ok)

    @property
    def failed(self) -> int:
        return sum(s.alerts for s in self.sent if not s.ok)


class Dispatcher:
    def __init__(
        self,
        engine: sa.Engine,
        channels: Mapping[str, Channel],
        *,
        retries: int = 0,
        backoff: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.engine, self.channels = engine, dict(channels)
        self.retries, self.backoff, self.sleep = retries, backoff, sleep

    def drain(self, now: datetime) -> DrainResult:
        result = DrainResult()
        started = time.monotonic()
        clock = lambda: now + timedelta(seconds=time.monotonic() - started)  # noqa: E731 - attempts keep their order
        with self.engine.connect() as conn:
            rows = queue.ready(conn, now)
            used = queue.sends_in_last_minute(conn, now) if len(rows) else {}
        for key, group in rows.groupby("channel", sort=False):
            name = str(key)  # the queue's channel column is text
            channel = self.channels.get(name)
            if channel is None:
                # The config no longer has this channel: the rows wait (and say why) until it is back.
                attempt = Attempt(False, clock(), f"channel {name!r} is not configured", False)
                queue.record_outcome(self.engine, group, name, [attempt], now)
                result.sent.append(Sent(name, _targets(group), "-", len(group), False, 1, attempt.error))
                continue
            self._drain_channel(channel, group, used.get(name, 0), now, clock, result)
        return result

    def _drain_channel(
        self,
        channel: Channel,
        group: pd.DataFrame,
        used: int,
        now: datetime,
        clock: Callable[[], datetime],
        result: DrainResult,
    ) -> None:
        budget = RateBudget(channel.max_per_minute or DEFAULT_PER_MINUTE, clock=time.monotonic)
        budget.record(min(used, budget.per_minute))
        messages = {m.keys[0]: m for m in (_message(r) for r in group.itertuples(index=False))}
        batch = plan(channel, list(messages.values()), budget)
        result.waiting += len(group) - sum(len(m.keys) for m in batch)
        for n, planned in enumerate(batch):
            # Each message is claimed just before it goes, not the whole batch up front: a crash
            # while it is on the wire leaves only it in doubt, and the rest goes out next round.
            ids = [int(k) for k in planned.keys]
            won = queue.claim(self.engine, group[group["id"].isin(ids)], now)
            result.waiting += len(ids) - len(won)  # another dispatcher is sending those
            if not won:
                continue
            piece = planned if len(won) == len(ids) else _refold(channel, [messages[str(i)] for i in won])
            rows = group[group["id"].isin(won)]
            last = self._send(channel, piece, rows, budget, now, clock, result)
            if not last.ok and last.retryable and n + 1 < len(batch):
                # The platform is down or throttling: the rest waits for the next round
                # instead of each message waiting for its own answer (or retries) now.
                rest = [int(k) for m in batch[n + 1 :] for k in m.keys]
                queue.defer(self.engine, rest, now + RETRY_AFTER_OUTAGE, now)
                result.waiting += len(rest)
                break

    def _send(
        self,
        channel: Channel,
        piece: AlertMessage,
        rows: pd.DataFrame,
        budget: RateBudget,
        now: datetime,
        clock: Callable[[], datetime],
        result: DrainResult,
    ) -> Attempt:
        """Send one claimed message and record every attempt; returns the last."""
        try:
            attempts = deliver(
                channel,
                piece,
                retries=self.retries,
                backoff=self.backoff,
                sleep=self.sleep,
                budget=budget,
                now=clock,
            )
        except Exception as e:  # a bug in a channel must not stop the others
            log.exception("channel %s failed unexpectedly", channel.name)
            attempts = [Attempt(False, clock(), f"{type(e).__name__}: {e}", True)]
        queue.record_outcome(self.engine, rows, channel.name, attempts, now)
        last = attempts[-1]
        result.sent.append(
            Sent(channel.name, _targets(rows), piece.title, len(rows), last.ok, len(attempts), last.error)
        )
        if not last.ok:
            log.warning(
                "alert %r via %s failed after %d attempt(s): %s", piece.title, channel.name, len(attempts), last.error
            )
        return last


def _refold(channel: Channel, messages: list[AlertMessage]) -> AlertMessage:
    """The digest of the part of a planned digest this dispatcher won. The part's sections are
    the whole's, fewer of them, so they fit in one digest where the whole did."""
    return digest(messages, channel.max_bytes)[0]


def _message(row) -> AlertMessage:
    text = MessageText.from_json(row.payload)
    return AlertMessage(
        title=text.title,
        body_markdown=text.body_markdown,
        body_text=text.body_text,
        mentions=text.mentions,
        severity=text.severity,
        keys=(str(int(row.id)),),
    )


def _targets(rows: pd.DataFrame) -> str:
    names = []
    for t in rows.get("target", pd.Series(dtype=object)).dropna():
        names += [n for n in str(t).split(",") if n not in names]
    return ",".join(names)


def build_channels(settings, engine: sa.Engine) -> dict[str, Channel]:
    """Every configured channel plus the outbox, ready to send (settings: AlertSettings)."""
    from order_pipeline.alerts.channels.config import build_channel
    from order_pipeline.alerts.channels.outbox import OutboxChannel
    from order_pipeline.alerts.settings import OUTBOX

    built: dict[str, Channel] = {OUTBOX: OutboxChannel(engine, name=OUTBOX)}
    for name, spec in settings.channel_specs.items():
        built[name] = build_channel(name, spec, engine, settings.config_path)
    return built
