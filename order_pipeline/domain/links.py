"""Signed, expiring customer links: `/order/{order_no}?t=TOKEN`.

TOKEN is `<expiry as Unix seconds>.<signature>`, the signature being the
URL-safe base64 HMAC-SHA256 of the order number and the expiry under the link
secret. Changing either the order number or the expiry breaks the signature, so
a tampered link is refused before its expiry is even looked at. A genuine token
whose expiry lies further ahead than the link TTL allows (it was never issued by
this configuration, or the TTL has since been shortened) is refused as invalid.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol
from urllib.parse import quote

# Domain separation: the same secret may also sign staff sessions.
_PURPOSE = b"order-link\x00"
# How far the clock of whoever signed a link (the pipeline's host) may run ahead of the verifier's.
CLOCK_SKEW = timedelta(minutes=5)


class LinkSigning(Protocol):
    """What signing a customer link needs (the `web:` section's link settings)."""

    @property
    def link_secret(self) -> bytes: ...
    @property
    def base_url(self) -> str: ...
    @property
    def link_ttl(self) -> timedelta: ...


class TokenCheck(StrEnum):
    VALID = "valid"
    INVALID = "invalid"  # missing, malformed or not signed by us
    EXPIRED = "expired"  # signed by us, but past its expiry


def _signature(order_no: str, expires: int, secret: bytes | str) -> str:
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    message = _PURPOSE + order_no.encode("utf-8") + b"\x00" + str(expires).encode("ascii")
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def make_token(order_no: str, expires_at: datetime, secret: bytes | str) -> str:
    """The `t` parameter of a link for `order_no` that stops working at `expires_at`."""
    expires = int(expires_at.timestamp())
    return f"{expires}.{_signature(order_no, expires, secret)}"


def verify_token(
    order_no: str, token: str | None, secret: bytes | str, now: datetime, *, max_ttl: timedelta | None = None
) -> TokenCheck:
    """VALID, INVALID (bad, tampered, or expiring later than `max_ttl` from now) or EXPIRED (genuine but too old)."""
    head, dot, sig = (token or "").partition(".")
    if not dot or not head.isdigit() or len(head) > 12 or len(sig) > 64:
        return TokenCheck.INVALID
    expected = _signature(order_no, int(head), secret)
    if not hmac.compare_digest(expected.encode("ascii"), sig.encode("ascii", "replace")):
        return TokenCheck.INVALID
    if max_ttl is not None and int(head) > (now + max_ttl + CLOCK_SKEW).timestamp():
        return TokenCheck.INVALID
    if now.timestamp() >= int(head):
        return TokenCheck.EXPIRED
    return TokenCheck.VALID


def customer_link(settings: LinkSigning, order_no: str, now: datetime) -> str:
    """The full URL to send a customer, valid for `settings.link_ttl` from `now`."""
    token = make_token(order_no, now + settings.link_ttl, settings.link_secret)
    return f"{settings.base_url.rstrip('/')}/order/{quote(order_no, safe='')}?t={token}"
