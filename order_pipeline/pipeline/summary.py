"""A readable summary of the published snapshot, for the terminal."""

from __future__ import annotations

from collections import Counter

import sqlalchemy as sa

from order_pipeline.contract.roles import ROLE_LABELS
from order_pipeline.contract.schema import (
    carrier_subscriptions,
    order_tracking_snapshot,
    pipeline_rejects,
    raw_tracking,
)
from order_pipeline.domain.stages import HAPPY_PATH, MISSING_LABELS, STAGE_LABELS


def _bar(n: int, total: int, width: int = 30) -> str:
    return "█" * (round(width * n / total) if total else 0)


def summarize(engine: sa.Engine) -> str:
    s, r = order_tracking_snapshot, pipeline_rejects
    with engine.connect() as conn:
        stages = dict(conn.execute(sa.select(s.c.stage, sa.func.count()).group_by(s.c.stage)).all())
        roles = dict(
            conn.execute(
                sa.select(s.c.responsible_role, sa.func.count())
                .where(s.c.responsible_role.is_not(None))
                .group_by(s.c.responsible_role)
            ).all()
        )
        missing = Counter()
        for text, n in conn.execute(
            sa.select(s.c.missing_info, sa.func.count()).where(s.c.missing_info.is_not(None)).group_by(s.c.missing_info)
        ):
            for code in text.split(";"):
                missing[code] += n
        via = dict(conn.execute(sa.select(raw_tracking.c.via, sa.func.count()).group_by(raw_tracking.c.via)).all())
        subscribed = dict(
            conn.execute(
                sa.select(carrier_subscriptions.c.state, sa.func.count()).group_by(carrier_subscriptions.c.state)
            ).all()
        )
        rejects = conn.execute(
            sa.select(r.c.source, r.c.reason, sa.func.count()).group_by(r.c.source, r.c.reason).order_by(r.c.source)
        ).all()
    total = sum(stages.values())
    lines = [f"订单总数 orders: {total}", "", "各阶段 orders per stage:"]
    for stage in (*HAPPY_PATH, "exception", "cancelled"):
        n = stages.get(stage, 0)
        lines.append(f"  {STAGE_LABELS[stage]:<6}{stage:<11}{n:>7}  {_bar(n, total)}")
    lines += ["", "缺失信息 what is missing:"]
    lines += [f"  {MISSING_LABELS.get(code, code):<10}{code:<18}{n:>7}" for code, n in missing.most_common()] or [
        "  (nothing)"
    ]
    lines += ["", "下一步负责人 whose turn it is:"]
    lines += [
        f"  {ROLE_LABELS.get(role, role):<6}{role:<17}{n:>7}" for role, n in sorted(roles.items(), key=lambda x: -x[1])
    ]
    states = ", ".join(f"{state} {n}" for state, n in sorted(subscribed.items())) or "none"
    lines += [
        "",
        f"快递100 carrier: {sum(via.values())} waybills tracked, last heard by push {via.get('push', 0)}, "
        f"by poll {via.get('poll', 0)}; subscriptions: {states}",
    ]
    lines += ["", f"拒收行 rejected source rows: {sum(n for *_, n in rejects)} (table pipeline_rejects)"]
    lines += [f"  {source:<13}{reason:<50}{n:>5}" for source, reason, n in rejects]
    return "\n".join(lines)
