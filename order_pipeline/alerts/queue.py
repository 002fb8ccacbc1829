"""The delivery queue (`alert_queue`): what may be sent now, claims, and the record of every send.

`ledger.sync` fills the queue in the transaction that updates the ledger; a dispatcher drains it
with `ready`, then per message `claim`, the send itself and `record_outcome` (or `defer` for the
rest of the round when the channel is down). The ledger's docstring explains why that order loses
no alert and sends none twice within a cool-down.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Protocol, cast

import pandas as pd
import sqlalchemy as sa

from order_pipeline.alerts.messages import MessageText
from order_pipeline.alerts.rules.sql import fetch_frame
from order_pipeline.contract.schema import alert_deliveries, alert_queue, order_alerts
from order_pipeline.domain.times import utc
from order_pipeline.warehouse.frames import IN_CHUNK, insert_frame

PENDING, SENT, SUPERSEDED = "pending", "sent", "superseded"
NOTIFY, ESCALATE, RESOLVE = "notify", "escalate", "resolve"
MAX_RETRY_DELAY = timedelta(minutes=30)


Route = Callable[[str], list[tuple[str, tuple[str, ...]]]]  # target -> [(channel, mentions)]


class AttemptLike(Protocol):
    """One try at sending, as the queue records it (read only: a channel's attempts are frozen)."""

    @property
    def ok(self) -> bool: ...
    @property
    def at(self) -> datetime: ...
    @property
    def error(self) -> str | None: ...


def alert_rows(
    rule_id: str,
    key: str,
    kind: str,
    level: int,
    targets: Sequence[str],
    msg: MessageText,
    route: Route,
    now: datetime,
    hold: timedelta,
) -> list[dict]:
    """The queue rows of a ledger alert's message, one per channel; a channel two targets share gets
    one message with both's mentions. A claim on them stays valid for `hold` (the rule's cool-down)."""
    by_channel: dict[str, tuple[list[str], tuple[str, ...]]] = {}
    for target in targets:
        for channel, mentions in route(target):
            names, ments = by_channel.get(channel, ([], ()))
            by_channel[channel] = ([*names, target], ments + tuple(m for m in mentions if m not in ments))
    return [
        {
            "rule_id": rule_id,
            "entity_key": key,
            "kind": kind,
            "level": level,
            "target": ",".join(names),
            "channel": channel,
            "payload": msg.with_mentions(mentions).to_json(),
            "status": PENDING,
            "created_at": now,
            "hold": hold.total_seconds(),
            "attempts": 0,
        }
        for channel, (names, mentions) in by_channel.items()
    ]


def one_per_channel(rows: list[dict]) -> list[dict]:
    """Queue rows with an alert's notification folded into its escalation where both reach the same
    channel at the same instant (the rule tells the group it escalates to): one message, the
    escalation, carrying the notification's targets and mentions too."""
    escalations = {(r["entity_key"], r["channel"]): i for i, r in enumerate(rows) if r["kind"] == ESCALATE}
    out = list(rows)
    dropped = set()
    for i, r in enumerate(rows):
        e = escalations.get((r["entity_key"], r["channel"])) if r["kind"] == NOTIFY else None
        if e is None:
            continue
        esc = out[e]
        told, text = MessageText.from_json(r["payload"]), MessageText.from_json(esc["payload"])
        out[e] = {
            **esc,
            "target": ",".join(dict.fromkeys([*r["target"].split(","), *esc["target"].split(",")])),
            "payload": replace(text, mentions=tuple(dict.fromkeys(told.mentions + text.mentions))).to_json(),
        }
        dropped.add(i)
    return [r for i, r in enumerate(out) if i not in dropped]


def supersede(conn: sa.Connection, rule_id: str, keys: Sequence[str], kinds: Sequence[str]) -> None:
    """Pending rows of these alerts and kinds are not to be sent: a newer message replaces them, or none is due."""
    q = alert_queue
    conn.execute(
        q.update()
        .where(q.c.rule_id == rule_id)
        .where(q.c.entity_key == sa.bindparam("k"))
        .where(q.c.status == PENDING)
        .where(sa.or_(*(q.c.kind == k for k in kinds)))
        .values(status=SUPERSEDED),
        [{"k": k} for k in keys],
    )


def queue_messages(
    conn: sa.Connection,
    rule_id: str,
    kind: str,
    items: Sequence[tuple[str, str, MessageText]],
    now: datetime,
    hold: timedelta,
) -> int:
    """Queue messages that are not ledger alerts (status digests): (entity, channel, message)."""
    if not items:
        return 0
    rows = [
        {
            "rule_id": rule_id,
            "entity_key": key,
            "kind": kind,
            "level": 0,
            "target": channel,
            "channel": channel,
            "payload": msg.to_json(),
            "status": PENDING,
            "created_at": utc(now),
            "hold": hold.total_seconds(),
            "attempts": 0,
        }
        for key, channel, msg in items
    ]
    return insert_frame(conn, alert_queue, pd.DataFrame(rows))


def ready(conn: sa.Connection, now: datetime) -> pd.DataFrame:
    """Queue rows that may be sent now: pending, not waiting for a retry, not claimed (or the claim expired)."""
    q, now = alert_queue, utc(now)
    return fetch_frame(
        conn,
        sa.select(
            q.c.id,
            q.c.rule_id,
            q.c.entity_key,
            q.c.kind,
            q.c.target,
            q.c.channel,
            q.c.payload,
            q.c.hold,
            q.c.attempts,
            q.c.claimed_at,
        )
        .where(q.c.status == PENDING)
        .where(sa.or_(q.c.next_attempt_at.is_(None), q.c.next_attempt_at <= now))
        .where(sa.or_(q.c.claim_expires_at.is_(None), q.c.claim_expires_at <= now))
        .order_by(q.c.id),
        ["claimed_at"],
    )


def next_ready_at(conn: sa.Connection, now: datetime) -> datetime | None:
    """When a pending queue row can next be sent: now, after a retry delay, or when a claim expires."""
    q, now = alert_queue, utc(now)
    pending = sa.select(sa.literal(1)).where(q.c.status == PENDING)
    if conn.execute(
        pending.where(sa.or_(q.c.next_attempt_at.is_(None), q.c.next_attempt_at <= now))
        .where(sa.or_(q.c.claim_expires_at.is_(None), q.c.claim_expires_at <= now))
        .limit(1)
    ).first():
        return now
    t = conn.execute(
        sa.select(sa.func.min(sa.func.coalesce(q.c.claim_expires_at, q.c.next_attempt_at))).where(q.c.status == PENDING)
    ).scalar()
    return None if t is None else utc(pd.Timestamp(t).to_pydatetime())


def claim(engine: sa.Engine, rows: pd.DataFrame, now: datetime) -> list[int]:
    """Claim the queue rows of the message about to be sent, in its own committed transaction;
    returns the ids won. The claim holds for the row's `hold` (its cool-down) from `now`.

    Two dispatchers racing for a row both run the conditional UPDATE; only one matches.
    """
    q, now = alert_queue, utc(now)
    token = uuid.uuid4().hex
    with engine.begin() as conn:
        for hold, group in rows.groupby("hold"):
            ids = group["id"].astype(int).tolist()
            expires = now + timedelta(seconds=float(cast(float, hold)))  # `hold` is a Float column
            for i in range(0, len(ids), IN_CHUNK):
                conn.execute(
                    q.update()
                    .where(q.c.id.in_(ids[i : i + IN_CHUNK]))
                    .where(q.c.status == PENDING)
                    .where(sa.or_(q.c.claim_expires_at.is_(None), q.c.claim_expires_at <= now))
                    .values(claim_token=token, claimed_at=now, claim_expires_at=expires)
                )
        won = conn.execute(sa.select(q.c.id).where(q.c.claim_token == token)).scalars()
        return sorted(int(i) for i in won)


def defer(engine: sa.Engine, ids: Sequence[int], retry_at: datetime, now: datetime) -> None:
    """Rows not sent this round (the channel is down) wait until `retry_at`; a row another
    dispatcher has claimed meanwhile is its to send and is left alone."""
    q, now = alert_queue, utc(now)
    with engine.begin() as conn:
        for i in range(0, len(ids), IN_CHUNK):
            conn.execute(
                q.update()
                .where(q.c.id.in_(list(ids[i : i + IN_CHUNK])))
                .where(q.c.status == PENDING)
                .where(sa.or_(q.c.claim_expires_at.is_(None), q.c.claim_expires_at <= now))
                .values(next_attempt_at=utc(retry_at))
            )


def record_outcome(
    engine: sa.Engine, rows: pd.DataFrame, channel: str, attempts: Sequence[AttemptLike], now: datetime
) -> None:
    """After a send: every attempt into `alert_deliveries`, the queue rows marked, the ledger updated."""
    if rows.empty or not attempts:
        return
    q = alert_queue
    now = utc(now)
    ids = rows["id"].astype(int).tolist()
    with engine.begin() as conn:
        conn.execute(
            alert_deliveries.insert(),
            [
                {
                    "rule_id": rule_id,
                    "entity_key": key,
                    "channel": channel,
                    "kind": kind,
                    "attempted_at": utc(t.at),
                    "ok": bool(t.ok),
                    "error": t.error,
                    "queue_id": queue_id,
                }
                for rule_id, key, kind, queue_id in zip(
                    rows["rule_id"], rows["entity_key"], rows["kind"], ids, strict=True
                )
                for t in attempts
            ],
        )
        values = _outcome(rows, attempts[-1], now)
        for i in range(0, len(ids), IN_CHUNK):
            conn.execute(
                q.update()
                .where(q.c.id.in_(ids[i : i + IN_CHUNK]))
                .values(attempts=q.c.attempts + len(attempts), **values)
            )
        _note_in_ledger(conn, rows, attempts)


def _outcome(rows: pd.DataFrame, last: AttemptLike, now: datetime) -> dict:
    """The queue rows' new state: sent, or pending with the time of the next try."""
    if last.ok:
        return dict(status=SENT, sent_at=utc(last.at), last_error=None, claim_token=None, claim_expires_at=None)
    earlier = int(rows["attempts"].max())  # attempts of earlier rounds: 1 min, then 2, 4, ... up to 30
    hold = timedelta(seconds=float(rows["hold"].min()))
    delay = min(timedelta(minutes=1) * 2 ** min(earlier, 5), MAX_RETRY_DELAY, hold)
    return dict(last_error=last.error, next_attempt_at=now + delay, claim_token=None, claim_expires_at=None)


def _note_in_ledger(conn: sa.Connection, rows: pd.DataFrame, attempts: Sequence[AttemptLike]) -> None:
    """The ledger rows of the alerts among `rows`: attempts counted, and when they were last told."""
    a, last = order_alerts, attempts[-1]
    alerts = rows[rows["kind"].isin([NOTIFY, ESCALATE, RESOLVE])]
    if not len(alerts):
        return
    values = dict(attempts=a.c.attempts + len(attempts), last_error=None if last.ok else last.error)
    if last.ok:
        # A resolution note is delivered too, but the alert was notified when it was open.
        told = a.c.resolved_at.is_(None)
        values["notified_at"] = sa.case((told, sa.bindparam("at", type_=a.c.notified_at.type)), else_=a.c.notified_at)
    conn.execute(
        a.update().where(a.c.rule_id == sa.bindparam("r")).where(a.c.entity_key == sa.bindparam("k")).values(**values),
        [
            {"r": r, "k": k, "at": utc(last.at)}
            for r, k in alerts[["rule_id", "entity_key"]].drop_duplicates().itertuples(index=False)
        ],
    )


def sends_in_last_minute(conn: sa.Connection, now: datetime) -> dict[str, int]:
    """Messages each channel took in the minute before `now`, to start a rate budget from.

    A digest is recorded once per alert it carries, all with the same time: distinct times count messages.
    """
    d, now = alert_deliveries, utc(now)
    rows = conn.execute(
        sa.select(d.c.channel, sa.func.count(sa.distinct(d.c.attempted_at)))
        .where(d.c.attempted_at > now - timedelta(minutes=1))
        .group_by(d.c.channel)
    ).all()
    return dict(rows)
