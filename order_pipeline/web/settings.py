"""The `web:` section of the configuration, checked once at start-up.

    web:
      base_url: https://track.example.com      # what customer links start with
      link_secret_env: ORDER_LINK_SECRET        # or link_secret_file: secrets/link.key
      link_ttl: 7d
      session_secret_env: OPS_SESSION_SECRET    # optional, see below
      session_ttl: 12h
      rate_limits: {per_ip: 120/1m, per_order: 30/1m, login: 10/1m, lookup: 20/1h}
      support_contact: 客服热线 400-800-1234
      trusted_proxies: 127.0.0.1                # whose X-Forwarded-For is believed
      staff:
        - {username: alice, password_hash: "scrypt$16384$8$1$...$..."}

Secrets never sit in the file: an entry names the environment variable or the
file (relative to the config file) that holds them.

Staff sessions are signed with their own secret, so that a new link secret does not
log staff out: `session_secret_env`/`_file`, else $ORDER_PIPELINE_SESSION_SECRET when
set, else a key derived from the link secret (the same on every start and worker, but
rotating the link secret then ends every session; the start-up warns of it).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from order_pipeline.contract.config import Config
from order_pipeline.contract.parsing import parse_duration
from order_pipeline.domain.passwords import parse_password_hash
from order_pipeline.notify.links import DEFAULT_BASE_URL, WebSectionParser
from order_pipeline.notify.settings import load_notify_settings
from order_pipeline.web.security.ratelimit import Rate

FIELDS = {
    "base_url",
    "link_secret_env",
    "link_secret_file",
    "link_ttl",
    "session_secret_env",
    "session_secret_file",
    "session_ttl",
    "rate_limits",
    "staff",
    "support_contact",
    "trusted_proxies",
}
RATE_FIELDS = {"per_ip", "per_order", "login", "lookup"}
STAFF_FIELDS = {"username", "password_hash"}
_USERNAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
DEFAULT_SESSION_SECRET_ENV = "ORDER_PIPELINE_SESSION_SECRET"
_DERIVED_SESSION_KEY = b"ops-session-key\x00"


def derived_session_secret(link_secret: bytes) -> bytes:
    """The session key of a config that names no session secret: one-way from the link secret."""
    return hmac.new(link_secret, _DERIVED_SESSION_KEY, hashlib.sha256).hexdigest().encode("ascii")


@dataclass(frozen=True)
class RateLimits:
    per_ip: Rate | None = Rate(120, timedelta(minutes=1))
    per_order: Rate | None = Rate(30, timedelta(minutes=1))
    login: Rate | None = Rate(10, timedelta(minutes=1))
    # The customer's lookup form (order no + phone tail), per address: a customer needs it once or twice.
    lookup: Rate | None = Rate(20, timedelta(hours=1))


@dataclass(frozen=True)
class StaffUser:
    username: str
    password_hash: str = field(repr=False)


@dataclass(frozen=True)
class WebSettings:
    link_secret: bytes = field(repr=False)
    session_secret: bytes = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    link_ttl: timedelta = timedelta(days=7)
    session_ttl: timedelta = timedelta(hours=12)
    rate_limits: RateLimits = RateLimits()
    staff: tuple[StaffUser, ...] = ()
    timezone: str = "Asia/Shanghai"
    support_contact: str | None = None
    trusted_proxies: str = "127.0.0.1"
    session_secret_derived: bool = False  # no session secret configured: derived from the link secret
    customer_messages: bool = True  # the config has a `notifications:` section: staff may resend a link

    @property
    def secure_cookies(self) -> bool:
        return self.base_url.startswith("https://")

    def staff_user(self, username: str) -> StaffUser | None:
        return next((u for u in self.staff if u.username == username), None)

    @classmethod
    def from_config(cls, config: Config) -> WebSettings:
        return _Parser(config).parse()


def parse_rate(text: Any) -> Rate | None:
    """'60/1m' -> 60 per minute; '60/m' works too; 'off' disables the limit. Raises ValueError."""
    if text is None or text is False or str(text).strip().lower() == "off":
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\S+)\s*", str(text))
    if not m or int(m.group(1)) < 1:
        raise ValueError(f"{text!r} is not a rate")
    period = m.group(2)
    period = parse_duration(f"1{period}" if period in ("s", "m", "h", "d") else period)
    if period.total_seconds() <= 0:
        raise ValueError(f"{text!r} has an empty period")
    return Rate(int(m.group(1)), period)


class _Parser(WebSectionParser):
    def mapping(self, value, entry: str, allowed: set[str]) -> dict:
        for key in ("link_secret", "session_secret"):
            if isinstance(value, dict) and key in value:
                self.fail(
                    f"{entry + '.' if entry else ''}{key}",
                    "a secret must not be written in the file",
                    f"remove it and set `{key}_env:` (an environment variable) or `{key}_file:` instead",
                )
        return super().mapping(value, entry, allowed)

    def rate(self, value, entry: str, default: Rate | None) -> Rate | None:
        if value is ...:
            return default
        try:
            return parse_rate(value)
        except ValueError:
            self.fail(entry, f"{value!r} is not a rate", "write a count and a period, e.g. 60/1m or 1000/1h, or `off`")

    def rate_limits(self, value) -> RateLimits:
        r = self.mapping(value, "rate_limits", RATE_FIELDS)
        d = RateLimits()
        return RateLimits(
            *(
                self.rate(r.get(k, ...), f"rate_limits.{k}", getattr(d, k))
                for k in ("per_ip", "per_order", "login", "lookup")
            )
        )

    def staff(self, value) -> tuple[StaffUser, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.fail("staff", "must be a list", "write one `- {username: ..., password_hash: ...}` line per person")
        users: list[StaffUser] = []
        for i, item in enumerate(value):
            entry = f"staff[{i}]"
            if not isinstance(item, dict):
                self.fail(entry, "must be a mapping", 'write `- {username: alice, password_hash: "scrypt$..."}`')
            if "password" in item:
                self.fail(
                    f"{entry}.password",
                    "plain passwords are not allowed in the file",
                    "run `order-pipeline hash-password` and put its output in `password_hash:`",
                )
            item = self.mapping(item, entry, STAFF_FIELDS)
            name = str(item.get("username", ""))
            if not _USERNAME.fullmatch(name):
                self.fail(f"{entry}.username", f"{name!r} is not a user name", "use 1-64 letters, digits or . _ @ -")
            if any(u.username == name for u in users):
                self.fail(f"{entry}.username", f"{name!r} is listed twice", "keep one entry per person")
            stored = str(item.get("password_hash") or "")
            try:
                parse_password_hash(stored)
            except ValueError as e:
                self.fail(
                    f"{entry}.password_hash",
                    f"not a valid scrypt hash ({e})",
                    "run `order-pipeline hash-password` and paste its output, quoted",
                )
            users.append(StaffUser(name, str(stored)))
        return tuple(users)

    def parse(self) -> WebSettings:
        web = self.mapping(self.config.sections.get("web"), "", FIELDS)
        link = self.link_settings(web)
        named = any(f"session_secret_{k}" in web for k in ("env", "file")) or os.environ.get(DEFAULT_SESSION_SECRET_ENV)
        session_secret = self.secret(web, "session_secret", DEFAULT_SESSION_SECRET_ENV) if named else None
        proxies = web.get("trusted_proxies", WebSettings.trusted_proxies)
        if isinstance(proxies, list):
            proxies = ",".join(str(p) for p in proxies)
        contact = web.get("support_contact")
        return WebSettings(
            link_secret=link.link_secret,
            session_secret=session_secret or derived_session_secret(link.link_secret),
            session_secret_derived=session_secret is None,
            base_url=link.base_url,
            link_ttl=link.link_ttl,
            session_ttl=self.duration(web.get("session_ttl", "12h"), "session_ttl"),
            rate_limits=self.rate_limits(web.get("rate_limits")),
            staff=self.staff(web.get("staff")),
            timezone=self.config.timezone,
            support_contact=None if contact is None else str(contact),
            trusted_proxies=str(proxies),
            customer_messages=load_notify_settings(self.config).enabled,
        )
