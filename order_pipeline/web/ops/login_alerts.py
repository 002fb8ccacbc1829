"""A staff account locked by repeated wrong passwords: its message, queued by `security.burst_alerts`."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.engine import Engine

from order_pipeline.alerts.messages import MessageText
from order_pipeline.contract.config import Config
from order_pipeline.domain.times import local_time
from order_pipeline.web.security.burst_alerts import queue_burst

LOGIN_BURST = "staff_login_burst"
# How long a dispatcher's claim on the message holds: a lock lasts an hour at most.
HOLD = timedelta(hours=1)


def burst_message(username: str, failures: int, until: datetime, tz: str) -> MessageText:
    """The text of a lock; `username` is a configured staff name (letters, digits and . _ @ - only)."""
    when = local_time(until, tz)
    return MessageText(
        title=f"运维看板账号 {username} 登录失败过多，已暂时锁定",
        body_markdown=(
            f"**{username}**: {failures} wrong passwords within 15 minutes; logins refused until {when}.\n\n"
            "If this was not them, someone is guessing the password: check `tracking_access_log` "
            "(outcome login_failed, login_burst)."
        ),
        body_text=(
            f"{username}: {failures} wrong passwords within 15 minutes; logins refused until {when}. "
            "If this was not them, someone is guessing the password (tracking_access_log: login_failed, login_burst)."
        ),
        severity="warning",
    )


def queue_login_burst(
    engine: Engine, config: Config, username: str, failures: int, until: datetime, now: datetime
) -> int:
    """Queue the message of one lock; returns the queue rows written (0, logged, when it cannot be queued)."""
    return queue_burst(
        engine,
        config,
        LOGIN_BURST,
        username,
        lambda tz: burst_message(username, failures, until, tz),
        HOLD,
        now,
        f"the staff account {username}",
    )
