"""The alert ledger (`order_alerts`) and the delivery queue (`alert_queue`).

One ledger row per (rule, entity): first seen, last seen, when it was last queued and last
delivered, its escalation level, when it was resolved, and the delivery attempts. Messages do
not go out from here: `sync` decides what is due and queues it, in the same transaction that
updates the ledger, and a dispatcher drains the queue.

Crash safety is record-then-send with a claim:

1. `sync` commits the ledger change and the queued rows together (a crash before that commit
   leaves nothing half done; the next evaluation decides again).
2. `claim` marks the rows about to go out (token, claimed_at, claim_expires_at = now + the
   rule's cool-down) and commits.
3. The dispatcher sends.
4. `record_outcome` writes every attempt to `alert_deliveries`, marks the rows sent (or failed,
   with a retry time) and updates the ledger, in one transaction.

A crash between 3 and 4 leaves a claim without its mark: the message may or may not have gone
out. Such a row is not sent again until its claim expires, one cool-down later, which is the
promise: never the same alert twice within a cool-down, and never lost. When the cool-down
passes and the alert is still open, the re-notification supersedes the in-doubt row, so even
then one message goes out, not two.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import numpy as np
import pandas as pd
import sqlalchemy as sa

from order_pipeline.alerts.messages import MessageText, resolved_message
from order_pipeline.alerts.rules import fetch_frame
from order_pipeline.contract.schema import alert_deliveries, alert_queue, metadata, order_alerts
from order_pipeline.domain.times import utc
from order_pipeline.warehouse.frames import insert_frame, read_frame

log = logging.getLogger(__name__)

PENDING, SENT, SUPERSEDED = "pending", "sent", "superseded"
NOTIFY, ESCALATE, RESOLVE, LINK = "notify", "escalate", "resolve", "link"
CHUNK = 500  # keys per IN (...) list
MAX_RETRY_DELAY = timedelta(minutes=30)

Route = Callable[[str], list[tuple[str, tuple[str, ...]]]]  # target -> [(channel, mentions)]
# (row of the breach or of the ledger, kind, first_seen) -> (ledger summary, message)
Render = Callable[[dict, str, Any], tuple[str, MessageText]]


@dataclass(frozen=True)
class AlertSpec:
    """How the ledger treats the alerts of one rule (or of freshness, or of run failures)."""

    rule_id: str
    scope: str  # order | sku | source | run
    title: str
    severity: str
    notify: tuple[str, ...]
    cooldown: timedelta
    escalate_to: tuple[str, ...] = ()
    escalate_after: timedelta | None = None
    max_escalations: int = 0
    resolve_note: bool = True
    risk: str | None = None


@dataclass
class SyncResult:
    rule_id: str
    open: int = 0  # open after this sync
    opened: int = 0
    resolved: int = 0
    queued: dict[str, int] = field(default_factory=dict)  # kind -> queue rows
    next_due: datetime | None = None  # the earliest time a re-send or escalation falls due


class AttemptLike(Protocol):
    ok: bool
    at: datetime
    error: str | None


# --- schema ------------------------------------------------------------------------------------


def ensure_schema(engine: sa.Engine) -> None:
    """Create the alert tables that are missing (the ledger, the queue, the attempts, the outbox)."""
    metadata.create_all(
        engine,
        tables=[
            order_alerts,
            alert_deliveries,
            alert_queue,
            metadata.tables["tracking_link_sends"],
            metadata.tables["alert_outbox"],
        ],
    )


# --- sync: ledger and queue --------------------------------------------------------------------


def sync(
    conn: sa.Connection,
    spec: AlertSpec,
    breaches: pd.DataFrame,
    now: datetime,
    render: Render,
    route: Route,
    board_url: str,
    scope_keys: Collection[str] | None = None,
) -> SyncResult:
    """Bring the ledger of `spec.rule_id` in line with `breaches` (one row per offending entity,
    with `entity_key` and `order_no`) and queue what is due.

    `scope_keys` limits what this call speaks for: only open alerts among those keys are
    resolved when absent from `breaches` (None: every alert of the rule).
    """
    now = utc(now)
    result = SyncResult(spec.rule_id)
    a = order_alerts
    breaches = breaches.drop_duplicates("entity_key").reset_index(drop=True)
    rows_by_key = {k: i for i, k in enumerate(breaches["entity_key"].astype(str))}
    open_rows = read_frame(
        conn,
        sa.select(
            a.c.entity_key,
            a.c.order_no,
            a.c.title,
            a.c.message,
            a.c.first_seen,
            a.c.notified_at,
            a.c.queued_at,
            a.c.escalation_level,
        )
        .where(a.c.rule_id == spec.rule_id)
        .where(a.c.resolved_at.is_(None)),
        ["first_seen", "notified_at", "queued_at"],
    )
    open_keys = set(open_rows["entity_key"])
    speaks_for = open_keys if scope_keys is None else open_keys & set(scope_keys)
    cleared = open_rows[open_rows["entity_key"].isin(speaks_for - rows_by_key.keys())]
    new_keys = [k for k in rows_by_key if k not in open_keys]
    queue: list[dict] = []

    # Cleared: resolve, drop what has not gone out yet, and say so where it was heard.
    if len(cleared):
        keys = cleared["entity_key"].tolist()
        conn.execute(
            a.update()
            .where(a.c.rule_id == spec.rule_id)
            .where(a.c.entity_key == sa.bindparam("k"))
            .values(resolved_at=now, last_seen=a.c.last_seen),
            [{"k": k} for k in keys],
        )
        _supersede(conn, spec.rule_id, keys, (NOTIFY, ESCALATE))
        if spec.resolve_note:
            told = cleared[cleared["notified_at"].notna()]
            for r in told.to_dict("records"):
                msg = resolved_message(
                    r["title"] or spec.title,
                    r["entity_key"],
                    r["message"],
                    r["first_seen"],
                    now,
                    r["order_no"],
                    board_url,
                )
                targets = spec.notify + (spec.escalate_to if r["escalation_level"] else ())
                queue += _queue_rows(spec, r["entity_key"], RESOLVE, 0, targets, msg, route, now)
        result.resolved = len(cleared)

    # New (or back after being resolved): a fresh ledger row, queued at once unless it is a
    # reopened alert still within the cool-down of its last notification (a flapping condition).
    reopened = _existing(conn, spec.rule_id, new_keys)
    if new_keys:
        frame = breaches.iloc[[rows_by_key[k] for k in new_keys]]
        old = reopened.set_index("entity_key").reindex(new_keys)
        carried = pd.to_datetime(old["queued_at"], utc=True)
        due_new = (carried.isna() | (carried <= now - spec.cooldown)).to_numpy()
        summaries = []
        for key, row, due_now in zip(new_keys, frame.to_dict("records"), due_new):
            summary, msg = render(row, NOTIFY, now)
            summaries.append(summary)
            if due_now:
                queue += _queue_rows(spec, key, NOTIFY, 0, spec.notify, msg, route, now)
        if len(reopened):
            keys = reopened["entity_key"].tolist()
            _supersede(conn, spec.rule_id, keys, (NOTIFY, ESCALATE))
            conn.execute(
                a.delete().where(a.c.rule_id == spec.rule_id).where(a.c.entity_key == sa.bindparam("k")),
                [{"k": k} for k in keys],
            )
        queued_at = carried.where(~due_new, pd.Timestamp(now))
        insert_frame(
            conn,
            a,
            pd.DataFrame(
                {
                    "rule_id": spec.rule_id,
                    "entity_key": new_keys,
                    "scope": spec.scope,
                    "order_no": frame["order_no"].where(frame["order_no"].notna(), None).to_numpy(),
                    "severity": spec.severity,
                    "title": spec.title,
                    "message": summaries,
                    "details": [_details(r) for r in frame.to_dict("records")],
                    "first_seen": now,
                    "last_seen": now,
                    "notified_at": old["notified_at"].to_numpy(),
                    "queued_at": queued_at.to_numpy(),
                    "escalation_level": 0,
                    "resolved_at": None,
                    "attempts": old["attempts"].fillna(0).astype(int).to_numpy(),
                    "risk": spec.risk,
                }
            ),
        )
        result.opened = len(new_keys)
        new_rows = pd.DataFrame(
            {
                "entity_key": new_keys,
                "first_seen": pd.Timestamp(now),
                "escalation_level": 0,
                "queued_at": queued_at.to_numpy(),
            }
        )
    else:
        new_rows = pd.DataFrame(columns=["entity_key", "first_seen", "escalation_level", "queued_at"])

    # Still open and a cool-down since it was last queued: notify again, with today's numbers.
    still = open_rows[open_rows["entity_key"].isin(rows_by_key.keys())]
    due = still[still["queued_at"].isna() | (still["queued_at"] <= now - spec.cooldown)]
    if len(due):
        keys = due["entity_key"].tolist()
        _supersede(conn, spec.rule_id, keys, (NOTIFY,))
        updates = []
        for key in keys:
            summary, msg = render(breaches.iloc[rows_by_key[key]].to_dict(), NOTIFY, now)
            queue += _queue_rows(spec, key, NOTIFY, 0, spec.notify, msg, route, now)
            updates.append({"k": key, "m": summary})
        conn.execute(
            a.update()
            .where(a.c.rule_id == spec.rule_id)
            .where(a.c.entity_key == sa.bindparam("k"))
            .values(queued_at=now, message=sa.bindparam("m")),
            updates,
        )
        still = still.copy()
        still.loc[due.index, "queued_at"] = pd.Timestamp(now)

    current = pd.concat([still[new_rows.columns], new_rows], ignore_index=True)
    current["queued_at"] = pd.to_datetime(current["queued_at"], utc=True)
    current["first_seen"] = pd.to_datetime(current["first_seen"], utc=True)

    # Due for escalation: open for escalate_after × (level + 1).
    if spec.escalate_after and spec.max_escalations and spec.escalate_to:
        level = current["escalation_level"].astype(int)
        deadline = current["first_seen"] + spec.escalate_after * (level + 1)
        esc = current[(level < spec.max_escalations) & (deadline <= now)]
        updates = []
        for r in esc.to_dict("records"):
            _, msg = render(breaches.iloc[rows_by_key[r["entity_key"]]].to_dict(), ESCALATE, r["first_seen"])
            queue += _queue_rows(
                spec, r["entity_key"], ESCALATE, int(r["escalation_level"]) + 1, spec.escalate_to, msg, route, now
            )
            updates.append({"k": r["entity_key"]})
        if updates:
            conn.execute(
                a.update()
                .where(a.c.rule_id == spec.rule_id)
                .where(a.c.entity_key == sa.bindparam("k"))
                .values(escalation_level=a.c.escalation_level + 1),
                updates,
            )
            current.loc[current["entity_key"].isin([u["k"] for u in updates]), "escalation_level"] += 1

    # Seen now: every open alert this call speaks for that still breaches.
    if scope_keys is None:
        conn.execute(
            a.update().where(a.c.rule_id == spec.rule_id).where(a.c.resolved_at.is_(None)).values(last_seen=now)
        )
    elif rows_by_key:
        conn.execute(
            a.update()
            .where(a.c.rule_id == spec.rule_id)
            .where(a.c.entity_key == sa.bindparam("k"))
            .values(last_seen=now),
            [{"k": k} for k in rows_by_key],
        )

    if queue:
        insert_frame(conn, alert_queue, pd.DataFrame(queue))
    for row in queue:
        result.queued[row["kind"]] = result.queued.get(row["kind"], 0) + 1
    result.open = len(current)
    result.next_due = _next_due(spec, current, now)
    return result


def _next_due(spec: AlertSpec, current: pd.DataFrame, now: datetime) -> datetime | None:
    if current.empty:
        return None
    times = [(current["queued_at"] + spec.cooldown).min()]
    if spec.escalate_after and spec.max_escalations and spec.escalate_to:
        level = current["escalation_level"].astype(int)
        pending = current[level < spec.max_escalations]
        if len(pending):
            times.append(
                (pending["first_seen"] + spec.escalate_after * (pending["escalation_level"].astype(int) + 1)).min()
            )
    times = [t for t in times if t is not None and not pd.isna(t)]
    return min(times).to_pydatetime() if times else None


def _queue_rows(
    spec: AlertSpec,
    key: str,
    kind: str,
    level: int,
    targets: Sequence[str],
    msg: MessageText,
    route: Route,
    now: datetime,
    hold: timedelta | None = None,
) -> list[dict]:
    """One queue row per channel; a channel two targets share gets one message with both's mentions."""
    by_channel: dict[str, tuple[list[str], tuple[str, ...]]] = {}
    for target in targets:
        for channel, mentions in route(target):
            names, ments = by_channel.get(channel, ([], ()))
            by_channel[channel] = (names + [target], ments + tuple(m for m in mentions if m not in ments))
    return [
        {
            "rule_id": spec.rule_id,
            "entity_key": key,
            "kind": kind,
            "level": level,
            "target": ",".join(names),
            "channel": channel,
            "payload": msg.with_mentions(mentions).to_json(),
            "status": PENDING,
            "created_at": now,
            "hold": (hold or spec.cooldown).total_seconds(),
            "attempts": 0,
        }
        for channel, (names, mentions) in by_channel.items()
    ]


def queue_messages(
    conn: sa.Connection,
    rule_id: str,
    kind: str,
    items: Sequence[tuple[str, str, MessageText]],
    now: datetime,
    hold: timedelta,
) -> int:
    """Queue messages that are not ledger alerts (customer tracking links): (entity, channel, message)."""
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


def _supersede(conn: sa.Connection, rule_id: str, keys: Sequence[str], kinds: Sequence[str]) -> None:
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


def _existing(conn: sa.Connection, rule_id: str, keys: Sequence[str]) -> pd.DataFrame:
    a = order_alerts
    parts = [
        read_frame(
            conn,
            sa.select(a.c.entity_key, a.c.notified_at, a.c.queued_at, a.c.attempts)
            .where(a.c.rule_id == rule_id)
            .where(a.c.entity_key.in_(keys[i : i + CHUNK])),
            ["notified_at", "queued_at"],
        )
        for i in range(0, len(keys), CHUNK)
    ]
    if not parts:
        return pd.DataFrame(columns=["entity_key", "notified_at", "queued_at", "attempts"])
    return pd.concat(parts, ignore_index=True)


def _details(row: dict) -> str:
    clean = {}
    for k, v in row.items():
        if k in ("entity_key",) or v is None or (not isinstance(v, str) and pd.isna(v)):
            continue
        clean[k] = v.isoformat() if hasattr(v, "isoformat") else (v.item() if isinstance(v, np.generic) else v)
    return json.dumps(clean, ensure_ascii=False, default=str)


# --- the queue: claim, record ------------------------------------------------------------------


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
    """Claim queue rows for sending, in its own committed transaction; returns the ids won.

    Two dispatchers racing for a row both run the conditional UPDATE; only one matches.
    """
    q, now = alert_queue, utc(now)
    token = uuid.uuid4().hex
    with engine.begin() as conn:
        for hold, group in rows.groupby("hold"):
            ids = group["id"].astype(int).tolist()
            for i in range(0, len(ids), CHUNK):
                conn.execute(
                    q.update()
                    .where(q.c.id.in_(ids[i : i + CHUNK]))
                    .where(q.c.status == PENDING)
                    .where(sa.or_(q.c.claim_expires_at.is_(None), q.c.claim_expires_at <= now))
                    .values(claim_token=token, claimed_at=now, claim_expires_at=now + timedelta(seconds=float(hold)))
                )
        won = conn.execute(sa.select(q.c.id).where(q.c.claim_token == token)).scalars()
        return sorted(int(i) for i in won)


def release(engine: sa.Engine, ids: Sequence[int], retry_at: datetime) -> None:
    """Give back claimed rows that were not sent (the channel is down): they wait until `retry_at`."""
    q = alert_queue
    with engine.begin() as conn:
        for i in range(0, len(ids), CHUNK):
            conn.execute(
                q.update()
                .where(q.c.id.in_(list(ids[i : i + CHUNK])))
                .where(q.c.status == PENDING)
                .values(claim_token=None, claim_expires_at=None, next_attempt_at=utc(retry_at))
            )


def record_outcome(
    engine: sa.Engine, rows: pd.DataFrame, channel: str, attempts: Sequence[AttemptLike], now: datetime
) -> None:
    """After a send: every attempt into `alert_deliveries`, the queue rows marked, the ledger updated."""
    if rows.empty or not attempts:
        return
    q, a, d = alert_queue, order_alerts, alert_deliveries
    now = utc(now)
    last = attempts[-1]
    ids = rows["id"].astype(int).tolist()
    with engine.begin() as conn:
        conn.execute(
            d.insert(),
            [
                {
                    "rule_id": r.rule_id,
                    "entity_key": r.entity_key,
                    "channel": channel,
                    "kind": r.kind,
                    "attempted_at": utc(t.at),
                    "ok": bool(t.ok),
                    "error": t.error,
                    "queue_id": int(r.id),
                }
                for r in rows.itertuples(index=False)
                for t in attempts
            ],
        )
        if last.ok:
            values = dict(status=SENT, sent_at=utc(last.at), last_error=None, claim_token=None, claim_expires_at=None)
        else:
            earlier = int(rows["attempts"].max())  # attempts of earlier rounds: 1 min, then 2, 4, ... up to 30
            hold = timedelta(seconds=float(rows["hold"].min()))
            delay = min(timedelta(minutes=1) * 2 ** min(earlier, 5), MAX_RETRY_DELAY, hold)
            values = dict(last_error=last.error, next_attempt_at=now + delay, claim_token=None, claim_expires_at=None)
        for i in range(0, len(ids), CHUNK):
            conn.execute(
                q.update().where(q.c.id.in_(ids[i : i + CHUNK])).values(attempts=q.c.attempts + len(attempts), **values)
            )
        alerts = rows[rows["kind"].isin([NOTIFY, ESCALATE, RESOLVE])]
        if len(alerts):
            values = dict(attempts=a.c.attempts + len(attempts), last_error=None if last.ok else last.error)
            if last.ok:
                # A resolution note is delivered too, but the alert was notified when it was open.
                told = a.c.resolved_at.is_(None)
                values["notified_at"] = sa.case(
                    (told, sa.bindparam("at", type_=a.c.notified_at.type)), else_=a.c.notified_at
                )
            conn.execute(
                a.update()
                .where(a.c.rule_id == sa.bindparam("r"))
                .where(a.c.entity_key == sa.bindparam("k"))
                .values(**values),
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


def open_alerts(conn: sa.Connection, rule_ids: Iterable[str] | None = None) -> pd.DataFrame:
    a = order_alerts
    q = sa.select(a).where(a.c.resolved_at.is_(None))
    if rule_ids is not None:
        q = q.where(a.c.rule_id.in_(list(rule_ids)))
    return read_frame(
        conn,
        q.order_by(a.c.rule_id, a.c.first_seen, a.c.entity_key),
        ["first_seen", "last_seen", "notified_at", "resolved_at", "queued_at"],
    )
