"""The outbox channel: a row in `alert_outbox` and a line in the log, and never a failure."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from helpers import MSG, Sleeps

from order_pipeline.alerts.channels.delivery import deliver
from order_pipeline.alerts.channels.outbox import OutboxChannel
from order_pipeline.contract.schema import alert_outbox, metadata

# --- outbox --------------------------------------------------------------------------------------


def test_outbox_writes_a_row_and_logs(caplog):
    engine = sa.create_engine("sqlite://")
    metadata.create_all(engine)
    with caplog.at_level(logging.INFO, logger="order_pipeline.alerts.channels.outbox"):
        (attempt,) = deliver(OutboxChannel(engine, name="demo", mentions=["ops"]), MSG, sleep=Sleeps())
    assert attempt.ok
    with engine.connect() as conn:
        (row,) = conn.execute(sa.select(alert_outbox)).mappings()
    assert (row["channel"], row["recipient"], row["title"], row["body"]) == (
        "demo",
        "ops",
        MSG.title,
        MSG.body_markdown,
    )
    assert MSG.title in caplog.text


def test_outbox_never_fails(caplog):
    engine = sa.create_engine("sqlite://")  # no tables
    with caplog.at_level(logging.INFO, logger="order_pipeline.alerts.channels.outbox"):
        OutboxChannel(engine).send(MSG)
    assert MSG.body_text in caplog.text and "could not write" in caplog.text
