"""Who looked at what: the fields of an access-log row that come from the request."""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

_PURPOSE = b"client-ip\x00"
MAX_USER_AGENT = 300
MAX_ORDER_NO = 64


def ip_hash(ip: str | None, secret: bytes) -> str | None:
    """A keyed hash of the client address: equal addresses give equal hashes, but it cannot be reversed."""
    if not ip:
        return None
    return hmac.new(secret, _PURPOSE + ip.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def client_ip(request: Request) -> str:
    """The client address (uvicorn already applied X-Forwarded-For from trusted proxies)."""
    return request.client.host if request.client else ""


def user_agent(request: Request) -> str | None:
    return request.headers.get("user-agent", "")[:MAX_USER_AGENT] or None


def logged_order_no(order_no: str | None) -> str | None:
    return order_no[:MAX_ORDER_NO] if order_no else None
