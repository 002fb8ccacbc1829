"""The alert ledger (`order_alerts`), and what it queues for delivery (`alert_queue`, see `queue`).

One ledger row per (rule, entity): first seen, last seen, when it was last queued and last
delivered, its escalation level, when it was resolved, and the delivery attempts. Messages do
not go out from here: `sync` decides what is due and queues it, in the same transaction that
updates the ledger, and a dispatcher drains the queue.

Crash safety is record-then-send with a claim:

1. `sync` commits the ledger change and the queued rows together (a crash before that commit
   leaves nothing half done; the next evaluation decides again).
2. Just before a message is sent, `queue.claim` marks its rows (token, claimed_at,
   claim_expires_at = now + the rule's cool-down) and commits; the other messages of the round
   are claimed each in its turn.
3. The dispatcher sends that message.
4. `queue.record_outcome` writes every attempt to `alert_deliveries`, marks the rows sent (or
   failed, with a retry time) and updates the ledger, in one transaction.

A crash between 3 and 4 leaves a claim without its mark: the message may or may not have gone
out. Such a row is not sent again until its claim expires, one cool-down later, which is the
promise: never the same alert twice within a cool-down, and never lost. Only the message on the
wire is in that state; the ones not yet tried were never claimed and go out on the next round.
When the cool-down passes and the alert is still open, the re-notification supersedes the
in-doubt row, so even then one message goes out, not two.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from order_pipeline.alerts.messages import MessageText, resolved_message
from order_pipeline.alerts.queue import ESCALATE, NOTIFY, RESOLVE, Route, alert_rows, one_per_channel, supersede
from order_pipeline.contract.schema import alert_deliveries, alert_queue, metadata, order_alerts
from order_pipeline.domain.times import utc
from order_pipeline.warehouse.frames import insert_frame, read_frame, read_keyed

log = logging.getLogger(__name__)

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
    # The resolution's (name in the title, what recovered) from the alert's ledger row (its `details`
    # parsed); None: the entity key and the summary the alert was raised with.
    resolved_text: Callable[[dict], tuple[str, str]] | None = None


@dataclass
class SyncResult:
    rule_id: str
    open: int = 0  # open after this sync
    opened: int = 0
    resolved: int = 0
    queued: dict[str, int] = field(default_factory=dict)  # kind -> queue rows
    next_due: datetime | None = None  # the earliest time a re-send or escalation falls due


# --- schema ------------------------------------------------------------------------------------


def ensure_schema(engine: sa.Engine) -> None:
    """Create the alert tables that are missing (the ledger, the queue, the attempts, the outbox, the digests)."""
    metadata.create_all(
        engine,
        tables=[
            order_alerts,
            alert_deliveries,
            alert_queue,
            metadata.tables["alert_digests"],
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

    The phases run in this order, each adding the messages it finds due: resolve what cleared,
    open what is new, notify again what is still open a cool-down later, escalate, mark the rest
    seen. The queue rows go in last, in the caller's transaction, with the ledger's changes; a
    channel that would get both an alert's notification and its escalation gets the escalation.
    """
    now = utc(now)
    result = SyncResult(spec.rule_id)
    breaches = breaches.drop_duplicates("entity_key").reset_index(drop=True)
    rows_by_key = {k: i for i, k in enumerate(breaches["entity_key"].astype(str))}
    ctx = _Sync(conn, spec, now, render, route, breaches, rows_by_key)
    open_rows = _open_rows(conn, spec.rule_id)
    open_keys = set(open_rows["entity_key"])
    speaks_for = open_keys if scope_keys is None else open_keys & set(scope_keys)
    cleared = open_rows[open_rows["entity_key"].isin(speaks_for - rows_by_key.keys())]
    new_keys = [k for k in rows_by_key if k not in open_keys]

    if len(cleared):
        _resolve(ctx, cleared, board_url)
        result.resolved = len(cleared)
    new_rows = _open_new(ctx, new_keys)
    result.opened = len(new_keys)
    still = _notify_again(ctx, open_rows[open_rows["entity_key"].isin(rows_by_key.keys())])
    current = pd.concat([still[new_rows.columns], new_rows], ignore_index=True)
    current["queued_at"] = pd.to_datetime(current["queued_at"], utc=True)
    current["first_seen"] = pd.to_datetime(current["first_seen"], utc=True)
    if spec.escalate_after and spec.max_escalations and spec.escalate_to:
        _escalate(ctx, current, spec.escalate_after)
    _mark_seen(ctx, scope_keys)

    ctx.queue = one_per_channel(ctx.queue)
    if ctx.queue:
        insert_frame(conn, alert_queue, pd.DataFrame(ctx.queue))
    for row in ctx.queue:
        result.queued[row["kind"]] = result.queued.get(row["kind"], 0) + 1
    result.open = len(current)
    result.next_due = _next_due(spec, current, now)
    return result


# The columns of an open alert the escalation phase and `_next_due` read.
_CURRENT = ["entity_key", "first_seen", "escalation_level", "queued_at"]


@dataclass
class _Sync:
    """What the phases of one `sync` share, and the queue rows they add, in order."""

    conn: sa.Connection
    spec: AlertSpec
    now: datetime
    render: Render
    route: Route
    breaches: pd.DataFrame
    rows_by_key: dict[str, int]  # entity_key -> its row in `breaches`
    queue: list[dict] = field(default_factory=list)

    def breach(self, key: str) -> dict:
        return self.breaches.iloc[self.rows_by_key[key]].to_dict()

    def enqueue(self, key: str, kind: str, level: int, targets: Sequence[str], msg: MessageText) -> None:
        spec = self.spec
        self.queue += alert_rows(spec.rule_id, key, kind, level, targets, msg, self.route, self.now, spec.cooldown)


def _open_rows(conn: sa.Connection, rule_id: str) -> pd.DataFrame:
    a = order_alerts
    return read_frame(
        conn,
        sa.select(
            a.c.entity_key,
            a.c.order_no,
            a.c.title,
            a.c.message,
            a.c.details,
            a.c.first_seen,
            a.c.notified_at,
            a.c.queued_at,
            a.c.escalation_level,
        )
        .where(a.c.rule_id == rule_id)
        .where(a.c.resolved_at.is_(None)),
        ["first_seen", "notified_at", "queued_at"],
    )


def _resolve(ctx: _Sync, cleared: pd.DataFrame, board_url: str) -> None:
    """Cleared: resolve, drop what has not gone out yet, and say so where it was heard."""
    spec, now, a = ctx.spec, ctx.now, order_alerts
    keys = cleared["entity_key"].tolist()
    _update_each(ctx, [{"k": k} for k in keys], resolved_at=now, last_seen=a.c.last_seen)
    supersede(ctx.conn, spec.rule_id, keys, (NOTIFY, ESCALATE))
    if spec.resolve_note:
        told = cleared[cleared["notified_at"].notna()]
        for r in told.to_dict("records"):
            title = r["title"] or spec.title
            name, summary = r["entity_key"], r["message"]
            if spec.resolved_text is not None:
                name, summary = spec.resolved_text({**r, "details": json.loads(r["details"] or "{}")})
            msg = resolved_message(title, name, summary, r["first_seen"], now, r["order_no"], board_url)
            targets = spec.notify + (spec.escalate_to if r["escalation_level"] else ())
            ctx.enqueue(r["entity_key"], RESOLVE, 0, targets, msg)


def _open_new(ctx: _Sync, new_keys: list[str]) -> pd.DataFrame:
    """New (or back after being resolved): a fresh ledger row, queued at once unless it is a
    reopened alert still within the cool-down of its last notification (a flapping condition).

    Returns the new alerts' `_CURRENT` columns.
    """
    spec, now, a = ctx.spec, ctx.now, order_alerts
    reopened = _existing(ctx.conn, spec.rule_id, new_keys)
    if not new_keys:
        return pd.DataFrame(columns=_CURRENT)
    frame = ctx.breaches.iloc[[ctx.rows_by_key[k] for k in new_keys]]
    old = reopened.set_index("entity_key").reindex(new_keys)
    carried = pd.to_datetime(old["queued_at"], utc=True)
    due_new = (carried.isna() | (carried <= now - spec.cooldown)).to_numpy()
    summaries = []
    for key, row, due_now in zip(new_keys, frame.to_dict("records"), due_new, strict=True):
        summary, msg = ctx.render(row, NOTIFY, now)
        summaries.append(summary)
        if due_now:
            ctx.enqueue(key, NOTIFY, 0, spec.notify, msg)
    if len(reopened):
        keys = reopened["entity_key"].tolist()
        supersede(ctx.conn, spec.rule_id, keys, (NOTIFY, ESCALATE))
        ctx.conn.execute(
            a.delete().where(a.c.rule_id == spec.rule_id).where(a.c.entity_key == sa.bindparam("k")),
            [{"k": k} for k in keys],
        )
    queued_at = carried.where(~due_new, pd.Timestamp(now))
    _insert_alerts(ctx, new_keys, frame, old, summaries, queued_at)
    return pd.DataFrame(
        {
            "entity_key": new_keys,
            "first_seen": pd.Timestamp(now),
            "escalation_level": 0,
            "queued_at": queued_at.to_numpy(),
        }
    )


def _insert_alerts(
    ctx: _Sync, keys: list[str], frame: pd.DataFrame, old: pd.DataFrame, summaries: list[str], queued_at: pd.Series
) -> None:
    """The ledger rows of new alerts; a reopened one keeps when it was notified, queued and tried."""
    spec, now = ctx.spec, ctx.now
    insert_frame(
        ctx.conn,
        order_alerts,
        pd.DataFrame(
            {
                "rule_id": spec.rule_id,
                "entity_key": keys,
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


def _notify_again(ctx: _Sync, still: pd.DataFrame) -> pd.DataFrame:
    """Still open and a cool-down since it was last queued: notify again, with today's numbers.

    Returns `still` with the new queue times.
    """
    spec, now = ctx.spec, ctx.now
    due = still[still["queued_at"].isna() | (still["queued_at"] <= now - spec.cooldown)]
    if not len(due):
        return still
    keys = due["entity_key"].tolist()
    supersede(ctx.conn, spec.rule_id, keys, (NOTIFY,))
    updates = []
    for key in keys:
        summary, msg = ctx.render(ctx.breach(key), NOTIFY, now)
        ctx.enqueue(key, NOTIFY, 0, spec.notify, msg)
        updates.append({"k": key, "m": summary})
    _update_each(ctx, updates, queued_at=now, message=sa.bindparam("m"))
    still = still.copy()
    still.loc[due.index, "queued_at"] = pd.Timestamp(now)
    return still


def _escalate(ctx: _Sync, current: pd.DataFrame, escalate_after: timedelta) -> None:
    """Due for escalation: open for escalate_after × (level + 1). Raises the levels in `current` too."""
    spec, a = ctx.spec, order_alerts
    level = current["escalation_level"].astype(int)
    deadline = current["first_seen"] + escalate_after * (level + 1)
    esc = current[(level < spec.max_escalations) & (deadline <= ctx.now)]
    updates = []
    for r in esc.to_dict("records"):
        _, msg = ctx.render(ctx.breach(r["entity_key"]), ESCALATE, r["first_seen"])
        ctx.enqueue(r["entity_key"], ESCALATE, int(r["escalation_level"]) + 1, spec.escalate_to, msg)
        updates.append({"k": r["entity_key"]})
    if updates:
        _update_each(ctx, updates, escalation_level=a.c.escalation_level + 1)
        current.loc[current["entity_key"].isin([u["k"] for u in updates]), "escalation_level"] += 1


def _mark_seen(ctx: _Sync, scope_keys: Collection[str] | None) -> None:
    """Seen now: every open alert this call speaks for that still breaches."""
    rule_id, now, a = ctx.spec.rule_id, ctx.now, order_alerts
    if scope_keys is None:
        ctx.conn.execute(
            a.update().where(a.c.rule_id == rule_id).where(a.c.resolved_at.is_(None)).values(last_seen=now)
        )
    elif ctx.rows_by_key:
        _update_each(ctx, [{"k": k} for k in ctx.rows_by_key], last_seen=now)


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


def _update_each(ctx: _Sync, params: list[dict], **values) -> None:
    """One UPDATE of the rule's ledger rows per parameter set, each naming its row's entity key as `k`."""
    a = order_alerts
    ctx.conn.execute(
        a.update().where(a.c.rule_id == ctx.spec.rule_id).where(a.c.entity_key == sa.bindparam("k")).values(**values),
        params,
    )


def _existing(conn: sa.Connection, rule_id: str, keys: Sequence[str]) -> pd.DataFrame:
    a = order_alerts
    query = sa.select(a.c.entity_key, a.c.notified_at, a.c.queued_at, a.c.attempts).where(a.c.rule_id == rule_id)
    return read_keyed(conn, query, a.c.entity_key, list(keys), ["notified_at", "queued_at"])


def _details(row: dict) -> str:
    clean = {}
    for k, v in row.items():
        if k in ("entity_key",) or v is None or (not isinstance(v, str) and pd.isna(v)):
            continue
        isoformat = getattr(v, "isoformat", None)  # datetime, date, pd.Timestamp, pd.Timedelta
        clean[k] = isoformat() if isoformat is not None else (v.item() if isinstance(v, np.generic) else v)
    return json.dumps(clean, ensure_ascii=False, default=str)


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
