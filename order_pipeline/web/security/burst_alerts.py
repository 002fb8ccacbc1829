"""One message per lock of a guessing burst (a staff login, a customer lookup), to the team that hears of failures.

The message goes into the alert queue (`alert_queue`) like any alert, routed to the groups of
`alerts.run_failures_to` (the data team by default), and the alert sensor sends it on its next
evaluation. One message per lock, so a long attack is a handful of messages, not one per guess.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine

from order_pipeline.alerts import queue
from order_pipeline.alerts.messages import MessageText
from order_pipeline.alerts.settings import load_alert_settings
from order_pipeline.contract.config import Config
from order_pipeline.contract.schema import alert_queue

log = logging.getLogger(__name__)


def queue_burst(
    engine: Engine,
    config: Config,
    rule_id: str,
    key: str,
    message: Callable[[str], MessageText],
    hold: timedelta,
    now: datetime,
    what: str,
) -> int:
    """Queue `message(business time zone)` for the lock of `key`; returns the queue rows written
    (0, logged as the lock of `what`, when it cannot be queued)."""
    try:
        settings = load_alert_settings(config)
        rows = queue.alert_rows(
            rule_id,
            key,
            queue.NOTIFY,
            0,
            settings.run_failures_to,
            message(settings.timezone),
            settings.route,
            now,
            hold,
        )
        with engine.begin() as conn:
            conn.execute(alert_queue.insert(), rows)
        return len(rows)
    except Exception:  # the lock itself holds; only the message is missing, and the audit has the burst
        log.error("the alert of the lock of %s could not be queued", what, exc_info=True)
        return 0
