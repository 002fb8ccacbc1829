"""The local outbox: the `alert_outbox` table and the log."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from order_pipeline.alerts.channels.message import AlertMessage, Channel, ChannelError
from order_pipeline.contract.schema import alert_outbox

log = logging.getLogger(__name__)


class OutboxChannel(Channel):
    """Writes what would have been sent to `alert_outbox` and to the log: for the demo and for audits."""

    def __init__(self, engine: sa.Engine | None, *, name: str = "outbox", mentions: Sequence[str] = ()):
        super().__init__(name, mentions)
        self.engine = engine  # None only where a config entry is checked, never sent through

    def send(self, msg: AlertMessage) -> None:
        if self.engine is None:
            raise ChannelError(f"the outbox {self.name} has no warehouse to write to", retryable=False)
        mentions = self._mentions(msg)
        log.info("alert for %s via %s: %s\n%s", ", ".join(mentions) or "everyone", self.name, msg.title, msg.body_text)
        row = {
            "created_at": datetime.now(UTC),
            "channel": self.name,
            "recipient": ", ".join(mentions) or None,
            "title": msg.title,
            "body": msg.body_markdown,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(alert_outbox.insert().values(**row))
        except SQLAlchemyError:
            # The message is in the log already; a broken outbox must not hold up the other channels.
            log.exception("could not write the alert %r to %s", msg.title, alert_outbox.name)
