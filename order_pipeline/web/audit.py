"""Who looked at what: the fields of an access-log row that come from the request."""

from __future__ import annotations

import hashlib
import hmac
import logging

from sqlalchemy.engine import Engine
from starlette.requests import Request

from . import queries

log = logging.getLogger(__name__)

_PURPOSE = b"client-ip\x00"
MAX_USER_AGENT = 300
MAX_ORDER_NO = 64
MAX_ACTOR = 64
ANONYMOUS = "anonymous"


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


def logged_actor(username: str | None) -> str:
    """The actor of a row about someone not (yet) logged in: the name they typed, or "anonymous"."""
    name = (username or "").strip()[:MAX_ACTOR]
    return name or ANONYMOUS


def write_audit(engine: Engine, access: queries.Access) -> bool:
    """Record one access in its own short transaction.

    A row that cannot be written (the pipeline holding the write lock past the busy
    timeout, the database down) does not fail the request: it goes to the error log
    in full instead, so that it can still be accounted for. False in that case.
    """
    try:
        queries.write_access(engine, access)
    except Exception:
        log.error("access log row not written, recorded here instead: %r", access, exc_info=True)
        return False
    return True
