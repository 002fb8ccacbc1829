"""A staff account locked by repeated wrong passwords: one message to the team that hears of failures.

The message goes into the alert queue (`alert_queue`) like any alert, routed to the groups of
`alerts.run_failures_to` (the data team by default), and the alert sensor sends it on its next
evaluation. One message per lock, so a long attack is a handful of messages, not one per guess.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine

from order_pipeline.alerts import queue
from order_pipeline.alerts.messages import MessageText
from order_pipeline.alerts.settings import load_alert_settings
from order_pipeline.contract.config import Config
from order_pipeline.contract.schema import alert_queue
from order_pipeline.domain.times import local_time

log = logging.getLogger(__name__)

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


def queue_login_burst(engine: Engine, config: Config, username: str, failures: int, until: datetime, now: datetime):
    """Queue the message of one lock; returns the queue rows written (0, logged, when it cannot be queued)."""
    try:
        settings = load_alert_settings(config)
        msg = burst_message(username, failures, until, settings.timezone)
        rows = queue.alert_rows(
            LOGIN_BURST, username, queue.NOTIFY, 0, settings.run_failures_to, msg, settings.route, now, HOLD
        )
        with engine.begin() as conn:
            conn.execute(alert_queue.insert(), rows)
        return len(rows)
    except Exception:  # the lock itself holds; only the message is missing, and the audit has the burst
        log.error("the alert of the locked staff account %s could not be queued", username, exc_info=True)
        return 0
