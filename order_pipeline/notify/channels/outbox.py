"""The customer outbox: messages written to `customer_outbox` instead of a vendor.

For the demo, and for a company that hands customer messages to its own sender: that sender reads
the rows (and the number, from `order_tracking_snapshot` by `order_no`: the outbox keeps only the
masked one). The message key is unique, so a message written again after a crash is one row.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from order_pipeline.contract.customer_schema import customer_outbox
from order_pipeline.domain.masking import mask_phone
from order_pipeline.notify.channels.message import CustomerMessage, Sent


class CustomerOutbox:
    kind = "outbox"

    def __init__(self, engine: sa.Engine, *, name: str = "outbox", clock: Callable[[], datetime] | None = None):
        self.name, self.engine = name, engine
        self._clock = clock or (lambda: datetime.now(UTC))

    def problem(self, msg: CustomerMessage) -> str | None:
        return None if msg.phone or msg.openid else "no mobile number and no openid"

    def send(self, msg: CustomerMessage) -> Sent:
        order_no = next((v for k, v in msg.params if k == "order_no"), "")
        insert = sqlite_insert if self.engine.dialect.name == "sqlite" else postgresql_insert
        row = {
            "created_at": self._clock(),
            "channel": self.name,
            "message_key": msg.key,
            "order_no": order_no,
            "template": msg.template,
            "params": json.dumps(dict(msg.params), ensure_ascii=False),
            "url": msg.url,
            "phone_masked": mask_phone(msg.phone) if msg.phone else None,
        }
        with self.engine.begin() as conn:
            conn.execute(insert(customer_outbox).values(row).on_conflict_do_nothing(index_elements=["message_key"]))
        return Sent(msg.key)

    def close(self) -> None:
        pass
