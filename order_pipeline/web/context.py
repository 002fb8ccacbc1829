"""What every endpoint needs, built once by `create_app` and kept on `app.state.web`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine
from starlette.requests import Request

from order_pipeline.contract.config import Config
from order_pipeline.web.rendering.pages import Pages
from order_pipeline.web.security.audit import AccessLog
from order_pipeline.web.security.lockout import Lockouts, LockPolicy
from order_pipeline.web.security.ratelimit import RateLimiter
from order_pipeline.web.settings import WebSettings

# The customer lookup form (customer/lookup.py): five wrong phone tails for one order number within
# 15 minutes, from any addresses, lock that number's lookups for 15 minutes, doubling up to 4 hours.
LOOKUP_LOCK = LockPolicy(
    failures=5, within=timedelta(minutes=15), first_lock=timedelta(minutes=15), longest_lock=timedelta(hours=4)
)


@dataclass
class WebContext:
    config: Config
    settings: WebSettings
    engine: Engine
    clock: Callable[[], datetime]
    pages: Pages
    push_salt: str | None
    ip_limiter: RateLimiter = field(init=False)
    order_limiter: RateLimiter = field(init=False)
    login_limiter: RateLimiter = field(init=False)
    lockouts: Lockouts = field(init=False)
    lookup_limiter: RateLimiter = field(init=False)
    lookup_lockouts: Lockouts = field(init=False)
    access_log: AccessLog = field(init=False)
    cache: dict[str, tuple[float, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        limits = self.settings.rate_limits
        self.ip_limiter = RateLimiter(limits.per_ip)
        self.order_limiter = RateLimiter(limits.per_order)
        self.login_limiter = RateLimiter(limits.login)
        self.lockouts = Lockouts()
        self.lookup_limiter = RateLimiter(limits.lookup)
        self.lookup_lockouts = Lockouts(LOOKUP_LOCK)
        self.access_log = AccessLog(self.engine, clock=self.clock)

    @property
    def tz(self) -> str:
        return self.settings.timezone


def web_context(request: Request) -> WebContext:
    return request.app.state.web
