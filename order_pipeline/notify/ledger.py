"""The customer-message ledger (`customer_notifications`): one row per (order, event), ever.

A customer must never get the same message twice, and never lose one. The discipline is the
alert ledger's, record-then-claim-then-send:

1. The planner records what is due as `pending` rows. The table's unique (order, event key)
   makes a rerun, or two runs at once, record each message once (INSERT … ON CONFLICT DO NOTHING).
2. Just before a message goes out, `claim` marks its row with a token and the channel about to
   carry it, and commits. Two senders racing for a row both run the conditional UPDATE; one wins.
3. The channel sends it.
4. `finish` records the outcome (sent with the vendor's id, or why not) and drops the claim.

A crash between 3 and 4 leaves a claim without an outcome: the message may or may not have gone
out. After `CLAIM_TIMEOUT` the sweep decides. A WeChat message is sent again with the same
`client_msg_id`, which WeChat keeps for ten minutes and answers without sending a second one, so
it is neither lost nor doubled. An SMS has no such key: it is marked `in_doubt`, counted, shown
on the ops board (where staff can resend the link), and never re-sent by itself: a customer may
miss one message, never receive two.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from order_pipeline.contract.customer_schema import (
    customer_notifications,
    customer_outbox,
    customer_suppressions,
    tracking_short_links,
    wechat_access_tokens,
)
from order_pipeline.contract.schema import metadata, order_tracking_snapshot
from order_pipeline.domain.times import utc
from order_pipeline.warehouse.frames import IN_CHUNK, read_frame, read_keyed

PENDING, HELD, SENT, FAILED = "pending", "held", "sent", "failed"
INVALID, SUPPRESSED, SUPERSEDED, IN_DOUBT = "invalid", "suppressed", "superseded", "in_doubt"
STATUSES = (PENDING, HELD, SENT, FAILED, INVALID, SUPPRESSED, SUPERSEDED, IN_DOUBT)
WAITING = (PENDING, HELD)
# Longer than any channel's request can take: a claim older than this lost its sender.
CLAIM_TIMEOUT = timedelta(minutes=2)
# WeChat answers a repeated client_msg_id without sending again for ten minutes; a margin is kept.
WECHAT_DEDUP_WINDOW = timedelta(minutes=9)
TABLES = (
    customer_notifications,
    customer_suppressions,
    customer_outbox,
    tracking_short_links,
    wechat_access_tokens,
)
n = customer_notifications


def ensure_schema(engine: sa.Engine) -> None:
    metadata.create_all(engine, tables=list(TABLES))


def exists(conn: sa.Connection) -> bool:
    """The warehouse has the ledger: a notifier ran here (the sensor, the check and the CLI only read)."""
    return sa.inspect(conn).has_table(n.name)


def _insert(conn: sa.Connection, table: sa.Table):
    return (sqlite_insert if conn.dialect.name == "sqlite" else postgresql_insert)(table)


def record(conn: sa.Connection, rows: list[dict], now: datetime, *, requested_by: str | None = None) -> int:
    """Record due messages (order_no, event, event_key) as pending; returns how many were new."""
    if not rows:
        return 0
    now = utc(now)
    values = [
        {**r, "status": PENDING, "attempts": 0, "created_at": now, "due_at": now, "requested_by": requested_by}
        for r in rows
    ]
    stmt = _insert(conn, n).on_conflict_do_nothing(index_elements=["order_no", "event_key"])
    added = 0
    for i in range(0, len(values), 1000):
        added += conn.execute(stmt, values[i : i + 1000]).rowcount or 0
    return added


def drop(conn: sa.Connection, moot: list[tuple[int, str]]) -> int:
    """Waiting rows that are not to be sent any more (superseded, or the order was cancelled)."""
    if not moot:
        return 0
    stmt = (
        n.update()
        .where(n.c.id == sa.bindparam("i"))
        .where(n.c.status.in_(WAITING))
        .where(n.c.claim_token.is_(None))
        .values(status=SUPERSEDED, reason=sa.bindparam("why"))
    )
    return conn.execute(stmt, [{"i": i, "why": why} for i, why in moot]).rowcount or 0


def told(conn: sa.Connection, order_nos: list[str]) -> pd.DataFrame:
    """The ledger's rows for these orders: id, order_no, event, event_key, status."""
    query = sa.select(n.c.id, n.c.order_no, n.c.event, n.c.event_key, n.c.status)
    return read_keyed(conn, query, n.c.order_no, order_nos)


def renewals(conn: sa.Connection, now: datetime, before: timedelta) -> pd.DataFrame:
    """Open orders on their way whose newest sent link expires within `before` (or just did):
    order_no, expires_at."""
    s, now = order_tracking_snapshot, utc(now)
    newest = sa.func.max(n.c.link_expires_at)
    query = (
        sa.select(n.c.order_no, newest.label("expires_at"))
        .join(s, s.c.order_no == n.c.order_no)
        .where(n.c.status == SENT)
        .where(n.c.link_expires_at > now - before)
        .where(s.c.status == "open")
        .where(s.c.stage.notin_(("delivered", "exception", "cancelled")))
        .group_by(n.c.order_no)
        .having(newest <= now + before)
    )
    return read_frame(conn, query, ["expires_at"])


def ready(conn: sa.Connection, now: datetime, limit: int) -> pd.DataFrame:
    """Waiting rows whose time has come and that nobody is sending, oldest first."""
    query = (
        sa.select(n.c.id, n.c.order_no, n.c.event, n.c.event_key, n.c.status, n.c.attempts, n.c.created_at)
        .where(n.c.status.in_(WAITING))
        .where(n.c.due_at <= utc(now))
        .where(n.c.claim_token.is_(None))
        .order_by(n.c.due_at, n.c.id)
        .limit(limit)
    )
    return read_frame(conn, query, ["created_at"])


def next_due(conn: sa.Connection) -> datetime | None:
    """When a round next has something to do, or None: a waiting message falls due (a quiet-hours
    end, a retry), or a claim a crashed sender left is old enough for the sweep (soon enough, for
    a WeChat message, to be sent again within WeChat's de-duplication window)."""
    waiting = sa.select(sa.func.min(n.c.due_at)).where(n.c.status.in_(WAITING)).where(n.c.claim_token.is_(None))
    claimed = sa.select(sa.func.min(n.c.claimed_at)).where(n.c.claim_token.is_not(None))
    times = [conn.execute(waiting).scalar(), conn.execute(claimed).scalar()]
    found = [
        utc(pd.Timestamp(t).to_pydatetime()) + (CLAIM_TIMEOUT if i else timedelta(0))
        for i, t in enumerate(times)
        if t is not None
    ]
    return min(found) if found else None


def claim(conn: sa.Connection, row_id: int, channel: str, now: datetime, token: str | None = None) -> str | None:
    """Claim a row for sending through `channel`, committed before the send; the token, or None
    when another sender has it. A sender moving to the next channel claims again with its token.
    `conn` is the sender's own connection, outside any transaction: each call commits its own."""
    now = utc(now)
    new = token or uuid.uuid4().hex
    owner = n.c.claim_token.is_(None) if token is None else n.c.claim_token == token
    with conn.begin():
        won = conn.execute(
            n.update()
            .where(n.c.id == row_id)
            .where(n.c.status.in_(WAITING))
            .where(owner)
            .values(claim_token=new, claimed_at=now, channel=channel)
        ).rowcount
    return new if won else None


def finish(conn: sa.Connection, row_id: int, token: str | None, **values) -> None:
    """Record a row's outcome and release its claim (token None: a row that was never claimed),
    in a transaction of its own on the sender's connection."""
    owner = n.c.claim_token.is_(None) if token is None else n.c.claim_token == token
    with conn.begin():
        conn.execute(n.update().where(n.c.id == row_id).where(owner).values(claim_token=None, **values))


def sweep(engine: sa.Engine, now: datetime, wechat_channels: set[str]) -> int:
    """Claims older than CLAIM_TIMEOUT lost their sender (a crash between send and record). A
    WeChat claim within WeChat's de-duplication window is released to be sent again with the
    same client_msg_id; any other becomes `in_doubt`. Returns the rows marked in doubt."""
    now = utc(now)
    stale = n.c.claimed_at <= now - CLAIM_TIMEOUT
    with engine.begin() as conn:
        if wechat_channels:
            conn.execute(
                n.update()
                .where(n.c.claim_token.is_not(None))
                .where(stale)
                .where(n.c.claimed_at > now - WECHAT_DEDUP_WINDOW)
                .where(n.c.channel.in_(sorted(wechat_channels)))
                .values(claim_token=None)
            )
        return (
            conn.execute(
                n.update()
                .where(n.c.claim_token.is_not(None))
                .where(stale)
                .values(
                    claim_token=None,
                    status=IN_DOUBT,
                    reason="the sender stopped between sending and recording: it may have gone out",
                )
            ).rowcount
            or 0
        )


def sent_since(conn: sa.Connection, hashes: list[str], since: datetime) -> dict[str, int]:
    """Messages sent to each number (by hash) since `since`, for the daily cap."""
    out: dict[str, int] = {}
    for i in range(0, len(hashes), IN_CHUNK):
        part = hashes[i : i + IN_CHUNK]
        rows = conn.execute(
            sa.select(n.c.phone_hash, sa.func.count())
            .where(n.c.phone_hash.in_(part))
            .where(n.c.status == SENT)
            .where(n.c.sent_at >= utc(since))
            .group_by(n.c.phone_hash)
        ).all()
        out.update({h: int(c) for h, c in rows})
    return out


def messages_for(conn: sa.Connection, order_no: str) -> list[dict]:
    """An order's messages for the ops board, newest first."""
    cols = (n.c.created_at, n.c.sent_at, n.c.event, n.c.channel, n.c.status, n.c.reason, n.c.phone_masked)
    query = sa.select(n.c.id, *cols, n.c.attempts, n.c.requested_by).where(n.c.order_no == order_no)
    return [dict(r._mapping) for r in conn.execute(query.order_by(n.c.id.desc()).limit(50))]


def status_counts(conn: sa.Connection, since: datetime | None = None) -> pd.DataFrame:
    """Messages per event, channel and status (created since `since`): event, channel, status, messages."""
    query = sa.select(n.c.event, sa.func.coalesce(n.c.channel, "-"), n.c.status, sa.func.count())
    if since is not None:
        query = query.where(n.c.created_at >= utc(since))
    result = conn.execute(query.group_by(n.c.event, n.c.channel, n.c.status).order_by(n.c.event, n.c.status))
    return pd.DataFrame(result.all(), columns=["event", "channel", "status", "messages"])
