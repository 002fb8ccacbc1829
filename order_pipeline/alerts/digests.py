"""Status digests: per group, on its schedule, the orders whose stage moved since its last digest.

Alerts cover the exceptions; a digest covers the routine. At each slot of `alerts.digests`
(`alerts.schedules`) a group gets one message: how many of its orders reached each stage since
its last digest, the longest-waiting of them by name, and a link to the ops board's list of
exactly those orders (`/ops/orders?role=…&changed_since=…&changed_until=…`, which the board
resolves with `changed_between`, the same condition as here).

Which orders: those that reached a stage in the window and that the group owns *now*
(`responsible_role`), i.e. the work that arrived on its desk. An order that left the group's
hands in the window (the warehouse locked it, logistics owns it now) is in the new owner's
digest, not the old one's. `role: all` covers every order whatever its owner.

The window is (the group's last digest's slot, this slot]: a slot missed while nothing ran is
covered by the next digest, at most `MAX_WINDOW` back; the first digest counts from the previous
slot. A group with no changes gets no message (a "nothing happened" post twice a day is noise),
but its period is recorded all the same, so the next window starts after it.

Stage times are the snapshot's own (`ordered_at` … `delivered_at`, a cancellation's update), the
same values the timeline's stage rows are published from (`pipeline.publish`), plus 配送异常 at
the carrier event that put the order there, which has no timeline row. Reading the snapshot is
one scan of one table, where the timeline has no index by time. A stage time that reaches the
warehouse after its window's digest went out (a payment synced late) is in no digest; the board
shows it.

Once per period: the digest's row in `alert_digests` (one per group and period) is inserted
with ON CONFLICT DO NOTHING in the transaction that queues its messages, so a rerun, a crash
before commit or a second evaluator queues it once. The dispatcher then claims and sends it like
any alert (`alerts.dispatch`). Each channel gets a text that fits its size limit: the names go
before the counts do, and the counts and the link always fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from order_pipeline.alerts import queue
from order_pipeline.alerts.channels.config import build_channel
from order_pipeline.alerts.channels.message import nbytes, truncate
from order_pipeline.alerts.messages import MessageText, order_link, short_time
from order_pipeline.alerts.schedules import DigestSchedule, period_key
from order_pipeline.alerts.settings import OUTBOX, AlertSettings
from order_pipeline.contract.roles import role_label
from order_pipeline.contract.schema import alert_digests, alert_queue, order_tracking_snapshot
from order_pipeline.domain.stages import STAGE_LABELS
from order_pipeline.domain.times import as_utc, utc, waited_text, zone
from order_pipeline.pipeline.publish import STAGE_TIMES
from order_pipeline.warehouse.frames import insert_frame

RULE_PREFIX = "digest:"  # + group: the queue's rule_id; the entity_key is the period's key
KIND = "digest"
MAX_NAMED = 10  # orders named in a digest, the longest-waiting first
MAX_WINDOW = timedelta(days=7)  # a digest never counts further back than this
MAX_HOLD = timedelta(hours=1)  # a digest in doubt after a crash is sent again after this (or its period)
BOARD_LIST = "/ops/orders"  # the ops board's order list (order_pipeline.web.ops.board.order_list)

snap = order_tracking_snapshot


@dataclass(frozen=True)
class DigestResult:
    queued: int  # queue rows (one per channel of each digest)
    next_due: datetime | None  # the next slot of any schedule: evaluate again then


@dataclass(frozen=True)
class Digest:
    """What one group's digest of one period says, before a channel's size limit shapes it."""

    group: str
    label: str  # the group's name as people read it (仓库)
    role: str | None  # whose orders; None: every order
    since: datetime  # the window (since, until], UTC
    until: datetime
    counts: dict[str, int]  # stage -> orders that reached it in the window, in stage order, zeros left out
    orders: int  # orders that reached any stage in the window
    named: list[dict]  # the longest-waiting of them: order_no, stage, responsible_role, waiting_since
    link: str  # the board's list of exactly these orders
    board_url: str


# --- which orders ------------------------------------------------------------------------------


def stage_times(t: sa.Table = snap) -> list[tuple[str, sa.ColumnElement]]:
    """(stage, when an order of `t` reached it; NULL: not reached) for every stage a digest counts."""
    return [
        *((stage, t.c[col]) for stage, col in STAGE_TIMES),
        ("exception", sa.case((t.c.stage == "exception", t.c.latest_event_at))),
        ("cancelled", sa.case((t.c.stage == "cancelled", t.c.source_updated_at))),
    ]


def _within(at: sa.ColumnElement, since: datetime | None, until: datetime | None) -> sa.ColumnElement[bool]:
    bounds = [*([at > utc(since)] if since else []), *([at <= utc(until)] if until else [])]
    return sa.and_(*bounds) if bounds else at.is_not(None)


def changed_between(since: datetime | None, until: datetime | None) -> sa.ColumnElement[bool]:
    """Orders that reached a stage in (since, until] (an open end when None): a digest's orders and
    the board's `changed_since`/`changed_until` filter, one condition for both."""
    return sa.or_(*(_within(at, since, until) for _, at in stage_times()))


def digest_orders(role: str | None, since: datetime, until: datetime) -> list[sa.ColumnElement[bool]]:
    return [changed_between(since, until), *([snap.c.responsible_role == role] if role else [])]


def board_link(board_url: str, role: str | None, since: datetime, until: datetime, tz: str) -> str:
    """The board's list filtered to a digest's orders: bounded whatever their number."""
    params = {**({"role": role} if role else {}), "changed_since": _iso(since, tz), "changed_until": _iso(until, tz)}
    return f"{board_url.rstrip('/')}{BOARD_LIST}?{urlencode(params, safe=':', quote_via=quote)}"


def _iso(t: datetime, tz: str) -> str:
    local = utc(t).astimezone(zone(tz))
    return local.isoformat(timespec="minutes" if local.second == local.microsecond == 0 else "seconds")


def read_digest(
    conn: sa.Connection,
    schedule: DigestSchedule,
    label: str,
    since: datetime,
    until: datetime,
    board_url: str,
    tz: str,
) -> Digest:
    """Count and name the orders of `schedule`'s role that reached a stage in (since, until]."""
    where = digest_orders(schedule.role, since, until)
    times = stage_times()
    reached = [sa.func.coalesce(sa.func.sum(sa.case((_within(at, since, until), 1), else_=0)), 0) for _, at in times]
    total, *per_stage = conn.execute(sa.select(sa.func.count(), *reached).where(*where)).one()
    named = conn.execute(
        sa.select(snap.c.order_no, snap.c.stage, snap.c.responsible_role, snap.c.waiting_since)
        .where(*where, snap.c.responsible_role.is_not(None))  # an order someone has to move
        .order_by(snap.c.waiting_since.asc(), snap.c.order_no)
        .limit(MAX_NAMED)
    ).mappings()
    counts = {stage: int(n) for (stage, _), n in zip(times, per_stage, strict=True) if n}
    link = board_link(board_url, schedule.role, since, until, tz)
    return Digest(
        schedule.group,
        label,
        schedule.role,
        since,
        until,
        counts,
        int(total),
        [dict(r) for r in named],
        link,
        board_url,
    )


# --- what it says ------------------------------------------------------------------------------


def title_of(d: Digest, tz: str) -> str:
    return f"【订单动态】{d.label} {short_time(d.until, tz)}"


def render(d: Digest, now: datetime, tz: str, max_bytes: int | None) -> MessageText:
    """The digest as a message whose body fits `max_bytes` together with its title, as a channel
    and a burst digest (`channels.delivery.digest`) lay them out: names are dropped from the end
    until it fits; the counts and the board link are kept."""
    title = title_of(d, tz)
    md_room = None if max_bytes is None else max_bytes - nbytes(f"**{title}**\n")
    text_room = None if max_bytes is None else max_bytes - nbytes(f"【{title}】\n")
    for k in range(len(d.named), -1, -1):
        md, text = _bodies(d, k, now, tz)
        if md_room is None or text_room is None or (nbytes(md) <= md_room and nbytes(text) <= text_room):
            break
    else:  # not even the counts fit: a limit far below any channel's, cut rather than refuse
        md, text = truncate(md, max(md_room or 0, 0)), truncate(text, max(text_room or 0, 0))
    return MessageText(title, md, text, "info")


def _bodies(d: Digest, k: int, now: datetime, tz: str) -> tuple[str, str]:
    """Markdown and plain text naming the first `k` orders."""
    whose = f"{role_label(d.role)}负责的订单" if d.role else "全部订单"
    head = f"{short_time(d.since, tz)} 至 {short_time(d.until, tz)}，{whose}中有 {d.orders} 单进入新阶段："
    counts = [f"{STAGE_LABELS.get(s, s)}：{n} 单" for s, n in d.counts.items()]
    md, text = [head, *(f"> {c}" for c in counts)], [head, *counts]
    if k:
        md.append(f"等待最久的 {k} 单：")
        text.append(f"等待最久的 {k} 单：")
        for row in d.named[:k]:
            facts = _facts(d, row, now)
            md.append(f"- [{row['order_no']}]({order_link(d.board_url, row['order_no'])}) {facts}")
            text.append(f"- {row['order_no']} {facts}")
    if d.orders > k:
        rest = f"其余 {d.orders - k} 单见看板。" if k else "订单明细见看板。"
        md.append(rest)
        text.append(rest)
    md.append(f"[在看板查看这 {d.orders} 单]({d.link})")
    text.append(f"看板：{d.link}")
    return "\n".join(md), "\n".join(text)


def _facts(d: Digest, row: dict[str, Any], now: datetime) -> str:
    since = as_utc(row.get("waiting_since"))
    facts = (
        f"{STAGE_LABELS.get(row['stage'], row['stage'])}，已等待 {waited_text(None if since is None else now - since)}"
    )
    return facts if d.role else f"{facts}，负责人：{role_label(row.get('responsible_role'))}"


# --- once per period ---------------------------------------------------------------------------


def queue_digests(conn: sa.Connection, settings: AlertSettings, board_url: str, now: datetime, tz: str) -> DigestResult:
    """Queue each group's digest of the current period unless it is queued already; in the caller's
    transaction (`Alerting.evaluate`), so the period's row and its messages commit together."""
    now = utc(now)
    queued = sum(_queue_period(conn, settings, s, board_url, now, tz) for s in settings.digests)
    dues = [s.next_start(now, tz) for s in settings.digests]
    return DigestResult(queued, min(dues) if dues else None)


def _queue_period(
    conn: sa.Connection, settings: AlertSettings, schedule: DigestSchedule, board_url: str, now: datetime, tz: str
) -> int:
    start = schedule.period_start(now, tz)
    d = alert_digests
    last = as_utc(
        conn.execute(sa.select(sa.func.max(d.c.period_start)).where(d.c.group_name == schedule.group)).scalar()
    )
    if last is not None and last >= start:
        return 0  # this period's digest is queued (or a later one: the clock went back)
    since = max(last or schedule.previous_start(start, tz), start - MAX_WINDOW)
    group = settings.group(schedule.group)
    digest = read_digest(conn, schedule, group.label, since, start, board_url, tz)
    key = period_key(start, tz)
    insert = sqlite_insert(d) if conn.dialect.name == "sqlite" else postgresql_insert(d)
    row = dict(group_name=schedule.group, period=key, period_start=start, window_start=since, orders=digest.orders)
    if not conn.execute(insert.values(**row, queued_at=now).on_conflict_do_nothing()).rowcount:
        return 0  # another evaluator queued it meanwhile
    if not digest.orders:
        return 0
    hold = min(MAX_HOLD, schedule.next_start(start, tz) - start)
    rows = []
    for channel, mentions in settings.route(schedule.group):
        msg = render(digest, now, tz, channel_max_bytes(settings, channel))
        one = lambda _target, c=channel, m=mentions: [(c, m)]  # noqa: E731 - this channel only
        rows += queue.alert_rows(RULE_PREFIX + schedule.group, key, KIND, 0, [schedule.group], msg, one, now, hold)
    return insert_frame(conn, alert_queue, pd.DataFrame(rows))


def channel_max_bytes(settings: AlertSettings, name: str) -> int | None:
    """The body size a channel takes (`Channel.max_bytes`), from its `channels:` entry; no secret is read."""
    spec = settings.channel_specs.get(name)
    if name == OUTBOX or spec is None:
        return None
    return build_channel(name, spec, None, settings.config_path, read_secrets=False).max_bytes
