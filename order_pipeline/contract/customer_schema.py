"""The customer-message tables: the ledger, the opt-outs, the short links, the outbox, WeChat's token.

Defined on the warehouse's one `metadata` (contract/schema.py), which imports this module so that
creating the schema creates them too.
"""

from __future__ import annotations

import sqlalchemy as sa

from order_pipeline.contract.schema import metadata

# The customer-message ledger (notify/ledger.py): one row per (order, event), whatever carried it.
# Its rows hold no phone number: a keyed hash (for the daily cap and the opt-outs) and a masked one.
customer_notifications = sa.Table(
    "customer_notifications",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("order_no", sa.Text, nullable=False),
    sa.Column("event", sa.Text, nullable=False),  # order_created | shipped | … | link_renewed | resend
    sa.Column("event_key", sa.Text, nullable=False),  # the event, or event@time for the ones that repeat
    # pending | held | sent | failed | invalid | suppressed | superseded | in_doubt
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("reason", sa.Text),  # why held, failed, invalid, suppressed or superseded
    sa.Column("channel", sa.Text),  # the channel that carried it, or the last one tried
    sa.Column("phone_hash", sa.Text, index=True),
    sa.Column("phone_masked", sa.Text),
    sa.Column("provider_id", sa.Text),  # Aliyun BizId, Tencent SerialNo, WeChat msgid
    sa.Column("error_code", sa.Text),  # the vendor's code of the last failure
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),  # not before this: quiet hours, a retry
    sa.Column("claim_token", sa.Text),
    sa.Column("claimed_at", sa.DateTime(timezone=True)),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
    sa.Column("link_expires_at", sa.DateTime(timezone=True)),  # of the link the sent message carried
    sa.Column("requested_by", sa.Text),  # the staff member who asked for a resend
    sa.UniqueConstraint("order_no", "event_key", name="uq_customer_notifications_event"),
    sa.Index("ix_customer_notifications_due", "status", "due_at"),
)


# Numbers that must not be messaged: added by hand (`order-pipeline notify optout`) or by a vendor's answer.
customer_suppressions = sa.Table(
    "customer_suppressions",
    metadata,
    sa.Column("phone_hash", sa.Text, primary_key=True),
    sa.Column("phone_masked", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),  # manual, or the channel whose vendor reported it
    sa.Column("reason", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


# Short tracking links for SMS, whose template variables are too short for a signed URL: /s/{code}
# opens the order's signed link, valid until the same expiry.
tracking_short_links = sa.Table(
    "tracking_short_links",
    metadata,
    sa.Column("code", sa.Text, primary_key=True),
    sa.Column("order_no", sa.Text, nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
)


# The customer outbox channel: what a company's own sender picks up (it reads the number from the
# snapshot by order_no), and what the demo shows.
customer_outbox = sa.Table(
    "customer_outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("message_key", sa.Text, nullable=False, unique=True),  # the ledger row: one entry per message
    sa.Column("order_no", sa.Text, nullable=False),
    sa.Column("template", sa.Text, nullable=False),
    sa.Column("params", sa.Text, nullable=False),  # JSON object: the template's parameters
    sa.Column("url", sa.Text),
    sa.Column("phone_masked", sa.Text),
)


# The WeChat Official Account's access token, one row per account, shared by every process that sends
# template messages: a token is fetched (stable_token) only when none here stays valid five more minutes.
# A warehouse from before this table gets it at the next start (create_all adds missing tables).
wechat_access_tokens = sa.Table(
    "wechat_access_tokens",
    metadata,
    sa.Column("app_id", sa.Text, primary_key=True),  # the account's AppID
    sa.Column("access_token", sa.Text, nullable=False),  # a credential: never logged or shown
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),  # fetched at + expires_in
    # The last fetch, or a process's claim to force a refresh: none is forced within 30 s of it.
    sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=False),
)
