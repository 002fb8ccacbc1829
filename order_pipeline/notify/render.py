"""A customer message from an order's row: its link, its fields, its template's parameters.

A message is rendered when it is sent, not when it is recorded: one held overnight carries the
morning's stage and a link that is valid seven days from the morning.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import pandas as pd
import sqlalchemy as sa

from order_pipeline.contract.customer_schema import tracking_short_links
from order_pipeline.domain.carrier_states import CARRIER_NAMES
from order_pipeline.domain.links import LinkSigning, make_token
from order_pipeline.domain.times import as_utc, utc, zone
from order_pipeline.notify.channels.message import CustomerMessage
from order_pipeline.notify.events import EVENT_WORDS, trouble_words
from order_pipeline.notify.settings import Template

SHORT_CODE_LEN = 10  # 62^10: a code cannot be guessed, and fits any SMS variable
_ALPHABET = string.ascii_letters + string.digits
EMPTY = "-"  # WeChat refuses an empty keyword; a template that names a field the order lacks gets this


@dataclass(frozen=True)
class Link:
    url: str
    expires_at: datetime


class Links:
    """Signed tracking links, and the short codes an SMS carries in their place."""

    def __init__(self, signing: LinkSigning, url_template: str | None = None):
        self.signing = signing
        self.url_template = url_template or signing.base_url.rstrip("/") + "/order/{order_no}"

    def link(self, order_no: str, now: datetime) -> Link:
        expires = utc(now) + self.signing.link_ttl
        token = make_token(order_no, expires, self.signing.link_secret)
        return Link(f"{self.url_template.format(order_no=quote(order_no, safe=''))}?t={token}", expires)

    @staticmethod
    def short_code(conn: sa.Connection, order_no: str, expires_at: datetime) -> str:
        """A code for `/s/{code}`, committed on `conn` (outside a transaction) before the message goes,
        valid as long as the link."""
        code = "".join(secrets.choice(_ALPHABET) for _ in range(SHORT_CODE_LEN))
        with conn.begin():
            conn.execute(tracking_short_links.insert().values(code=code, order_no=order_no, expires_at=expires_at))
        return code


class _Fields(Mapping[str, str]):
    """The fields a template may name; the short code is made only when a template asks for it."""

    def __init__(self, values: dict[str, str], code):
        self._values, self._code = values, code

    def __getitem__(self, key: str) -> str:
        if key == "link_code" and key not in self._values:
            self._values[key] = self._code()
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _text(value: Any) -> str:
    if value is None or (not isinstance(value, str) and value != value):  # None or NaN
        return ""
    return str(value).strip()


def _day(value: Any, tz: str, *, instant: bool) -> str:
    """A date as the customer reads it (12月05日); an instant is read in the business's zone first."""
    if value is None or pd.isna(value):
        return ""
    if instant:
        t = as_utc(value)
        return "" if t is None else t.astimezone(zone(tz)).strftime("%m月%d日")
    return pd.Timestamp(value).strftime("%m月%d日")


def fields(order: Mapping[str, Any], event: str, link: Link, now: datetime, tz: str, code) -> _Fields:
    """What the `{field}`s of a template stand for, for one order and event."""
    waybills = [w for w in _text(order.get("waybill_nos")).split(",") if w.strip()]
    carriers = [c for c in _text(order.get("carrier_codes")).split(",") if c.strip()]
    carrier = carriers[-1].strip().lower() if carriers else ""
    values = {
        "order_no": _text(order.get("order_no")),
        "link": link.url,
        "stage": _text(order.get("stage_label")),
        "event": EVENT_WORDS.get(event, event),
        "carrier": CARRIER_NAMES.get(carrier, (carrier,))[0] if carrier else "",
        "waybill": waybills[-1].strip() if waybills else "",
        "reason": trouble_words(order.get("exception_reason")) if order.get("stage") == "exception" else "",
        "eta": _day(order.get("eta"), tz, instant=True),
        "promised_date": _day(order.get("promised_date"), tz, instant=False),
        "time": utc(now).astimezone(zone(tz)).strftime("%m-%d %H:%M"),
    }
    return _Fields(values, code)


def message(key: str, template: Template, values: Mapping[str, str], order: Mapping[str, Any]) -> CustomerMessage:
    params = tuple((name, text.format_map(values) or EMPTY) for name, text in template.params)
    return CustomerMessage(
        key=key,
        template=template.id,
        params=params,
        phone=_text(order.get("customer_phone")) or None,
        openid=_text(order.get("customer_openid")) or None,
        url=values["link"],
    )
