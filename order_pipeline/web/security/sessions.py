"""Staff sessions and CSRF tokens: signed values.

A session cookie is `<payload>.<signature>`, the payload being URL-safe base64
JSON `{"u": user, "exp": unix seconds, "n": nonce, "p": password mark}`. The
password mark is a keyed hash of the user's stored password hash, so a new
password ends every session made with the old one; a logout records the nonce
(`revocations`), which ends that session on the server too. The CSRF token of a
form is derived from the session's nonce, so it changes with every login. The
login form itself is protected the same way with a nonce in a short-lived
pre-login cookie, and so is the customer's lookup form (`/track`), with a cookie of its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime

SESSION_COOKIE = "ops_session"
LOGIN_COOKIE = "ops_login"

_SESSION = b"ops-session\x00"
_CSRF = b"ops-csrf\x00"
_LOGIN_CSRF = b"ops-login-csrf\x00"
_LOOKUP_CSRF = b"track-lookup-csrf\x00"
_PASSWORD = b"ops-password\x00"


@dataclass(frozen=True)
class Session:
    username: str
    expires: int  # Unix seconds
    nonce: str
    password: str  # password_mark of the user's password hash when the session was made


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, purpose: bytes, data: str) -> str:
    return _b64(hmac.new(secret, purpose + data.encode("utf-8"), hashlib.sha256).digest())


def new_nonce() -> str:
    return secrets.token_urlsafe(16)


def password_mark(password_hash: str, secret: bytes) -> str:
    """What a session carries of its user's password hash: it changes with the hash and reveals nothing of it."""
    return _mac(secret, _PASSWORD, password_hash)[:22]


def sign_session(session: Session, secret: bytes) -> str:
    doc = {"u": session.username, "exp": session.expires, "n": session.nonce, "p": session.password}
    payload = _b64(json.dumps(doc, separators=(",", ":")).encode("utf-8"))
    return f"{payload}.{_mac(secret, _SESSION, payload)}"


def read_session(cookie: str | None, secret: bytes, now: datetime) -> Session | None:
    """The session in a cookie, or None when it is missing, forged, malformed or expired.

    Whether its user and password are still the same, and whether it was logged out, is the caller's check.
    """
    cookie = cookie or ""
    payload, dot, sig = cookie.partition(".")
    if not dot or len(cookie) > 4096:
        return None
    if not hmac.compare_digest(_mac(secret, _SESSION, payload).encode(), sig.encode("ascii", "replace")):
        return None
    try:
        data = json.loads(_unb64(payload))
        session = Session(str(data["u"]), int(data["exp"]), str(data["n"]), str(data["p"]))
    except (ValueError, KeyError, TypeError):
        return None
    return session if now.timestamp() < session.expires else None


def csrf_token(session: Session, secret: bytes) -> str:
    return _mac(secret, _CSRF, session.nonce)


def login_csrf_token(login_nonce: str, secret: bytes) -> str:
    return _mac(secret, _LOGIN_CSRF, login_nonce)


def lookup_csrf_token(form_nonce: str, secret: bytes) -> str:
    """The CSRF token of the customer's lookup form, tied to the nonce in its own cookie."""
    return _mac(secret, _LOOKUP_CSRF, form_nonce)


def tokens_match(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))
