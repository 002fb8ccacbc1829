"""Sending: retries (`deliver`), per-minute budgets (`RateBudget`), and digests of a burst (`digest`, `plan`)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from order_pipeline.alerts.channels.message import AlertMessage, Channel, ChannelError, Clock, nbytes, truncate

_SEPARATOR = "\n\n"
_SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


@dataclass(frozen=True)
class Attempt:
    ok: bool
    at: datetime
    error: str | None = None
    retryable: bool = False  # for a failure: whether sending again later may succeed


class RateBudget:
    """A channel's per-minute allowance over a sliding 60 s window."""

    WINDOW = 60.0

    def __init__(self, per_minute: int, clock: Clock = time.monotonic):
        self.per_minute, self._clock = per_minute, clock
        self._sent: deque[float] = deque()

    def available(self) -> int:
        """How many messages may go now."""
        cutoff = self._clock() - self.WINDOW
        while self._sent and self._sent[0] <= cutoff:
            self._sent.popleft()
        return max(0, self.per_minute - len(self._sent))

    def record(self, n: int = 1) -> None:
        self._sent.extend([self._clock()] * n)


def deliver(
    channel: Channel,
    msg: AlertMessage,
    retries: int = 3,
    backoff: float = 1.0,
    max_delay: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    budget: RateBudget | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> list[Attempt]:
    """Send `msg`, retrying retryable errors; every attempt is returned, the last tells the outcome.

    Waits `backoff`, 2×, 4×, ... between attempts, or what the platform asked for (Retry-After).
    A wait longer than `max_delay` (DingTalk mutes a robot for 10 minutes) is not slept through:
    the failed attempt is returned and the alert waits for the next round. A `budget`, when given,
    is charged for every attempt, since each one reaches the platform's counter.
    """
    attempts: list[Attempt] = []
    for n in range(retries + 1):
        at = now()
        if budget is not None:
            budget.record(channel.posts(msg))
        try:
            channel.send(msg)
        except ChannelError as e:
            attempts.append(Attempt(False, at, str(e), e.retryable))
            delay = e.retry_after if e.retry_after is not None else backoff * 2**n
            if not e.retryable or n == retries or delay > max_delay:
                break
            sleep(delay)
        else:
            attempts.append(Attempt(True, at))
            break
    return attempts


def digest(messages: Sequence[AlertMessage], max_bytes: int | None) -> list[AlertMessage]:
    """Fold `messages`, in order, into as few messages as keep each body within `max_bytes`.

    Nothing is dropped: every message's title and body land in one digest (a body too large
    for any digest is cut to fit), and the digest carries the union of mentions and keys.
    A digest of one message is that message, its body cut to fit.
    """
    digests: list[_Digest] = []
    for m in messages:
        md, text = f"**{m.title}**\n{m.body_markdown}", f"【{m.title}】\n{m.body_text}"
        if max_bytes is not None:
            md, text = truncate(md, max_bytes), truncate(text, max_bytes)
        if not digests or not digests[-1].has_room(md, text, max_bytes):
            digests.append(_Digest())
        digests[-1].add(m, md, text)
    return [d.message(max_bytes) for d in digests]


@dataclass
class _Digest:
    """The messages of one digest and their sections, in markdown and in plain text."""

    messages: list[AlertMessage] = field(default_factory=list)
    markdown: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)

    def has_room(self, md: str, text: str, max_bytes: int | None) -> bool:
        return max_bytes is None or (
            nbytes(_SEPARATOR.join([*self.markdown, md])) <= max_bytes
            and nbytes(_SEPARATOR.join([*self.text, text])) <= max_bytes
        )

    def add(self, msg: AlertMessage, md: str, text: str) -> None:
        self.messages.append(msg)
        self.markdown.append(md)
        self.text.append(text)

    def message(self, max_bytes: int | None) -> AlertMessage:
        if len(self.messages) == 1:
            m = self.messages[0]
            if max_bytes is None:
                return m
            return replace(
                m, body_markdown=truncate(m.body_markdown, max_bytes), body_text=truncate(m.body_text, max_bytes)
            )
        return AlertMessage(
            title=f"{len(self.messages)} 条告警汇总",
            body_markdown=_SEPARATOR.join(self.markdown),
            body_text=_SEPARATOR.join(self.text),
            mentions=tuple(dict.fromkeys(p for m in self.messages for p in m.mentions)),
            severity=max((m.severity for m in self.messages), key=lambda s: _SEVERITY_RANK.get(s, 1)),
            keys=tuple(dict.fromkeys(k for m in self.messages for k in m.keys)),
        )


def plan(channel: Channel, messages: Sequence[AlertMessage], budget: RateBudget) -> list[AlertMessage]:
    """What to send to `channel` now: the messages themselves when the budget allows, else digests
    of them, as many as the budget allows. Alerts whose keys are not in the result wait for the
    next round."""
    slots = budget.available()
    if sum(channel.posts(m) for m in messages) <= slots:
        return list(messages)
    batch: list[AlertMessage] = []
    for piece in digest(messages, channel.max_bytes):
        slots -= channel.posts(piece)
        if slots < 0:
            break
        batch.append(piece)
    return batch
