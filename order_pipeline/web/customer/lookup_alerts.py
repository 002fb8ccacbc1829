"""An order number whose lookups were locked by wrong phone tails: one message to the team that hears of failures.

Queued by `security.burst_alerts`, like a locked staff account's. One message per lock, and only for an
order that exists: an invented number has no customer to look after, and its bursts are in the access log.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.engine import Engine

from order_pipeline.alerts.messages import MessageText
from order_pipeline.contract.config import Config
from order_pipeline.domain.times import local_time
from order_pipeline.web.security.burst_alerts import queue_burst

LOOKUP_BURST = "customer_lookup_burst"
# How long a dispatcher's claim on the message holds: a lock lasts four hours at most.
HOLD = timedelta(hours=4)


def burst_message(order_no: str, failures: int, until: datetime, tz: str) -> MessageText:
    """The text of a lock; `order_no` passed the page's order-number check (letters, digits and _ . - only).

    It names no digit of the phone, neither the right tail nor the ones tried.
    """
    when = local_time(until, tz)
    return MessageText(
        title=f"订单 {order_no} 的客户查询多次输错手机尾号，已暂时锁定",
        body_markdown=(
            f"**{order_no}**: {failures} wrong phone tails within 15 minutes on the customer lookup form; "
            f"its lookups are refused until {when}. The customer's own link still works.\n\n"
            "If the customer did not do this, someone is guessing: check `tracking_access_log` "
            "(outcome lookup_wrong_tail, lookup_burst)."
        ),
        body_text=(
            f"{order_no}: {failures} wrong phone tails within 15 minutes on the customer lookup form; "
            f"lookups refused until {when}. The customer's own link still works. If the customer did not do this, "
            "someone is guessing (tracking_access_log: lookup_wrong_tail, lookup_burst)."
        ),
        severity="warning",
    )


def queue_lookup_burst(
    engine: Engine, config: Config, order_no: str, failures: int, until: datetime, now: datetime
) -> int:
    """Queue the message of one lock; returns the queue rows written (0, logged, when it cannot be queued)."""
    return queue_burst(
        engine,
        config,
        LOOKUP_BURST,
        order_no,
        lambda tz: burst_message(order_no, failures, until, tz),
        HOLD,
        now,
        f"the lookups of order {order_no}",
    )
