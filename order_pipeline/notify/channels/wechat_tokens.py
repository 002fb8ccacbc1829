"""The WeChat access token, cached in the warehouse and shared by every process that sends.

WeChat's stable_token answers the same token in its normal mode while that token is valid, so two
processes fetching at once is harmless. A forced refresh invalidates the token every other process
holds and is allowed 20 times a day, 30 s apart: a process forces one only after claiming it here
(`claim_forced_refresh`), so of several processes refused with the same stale token, one forces
and the others wait for the token it stores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from order_pipeline.contract.customer_schema import wechat_access_tokens
from order_pipeline.domain.times import aware_utc, utc

# WeChat renews the token in normal mode five minutes before it expires; one that close is fetched again.
MARGIN = timedelta(minutes=5)
FORCE_SPACING = timedelta(seconds=30)  # stable_token: forced refreshes at least 30 s apart


@dataclass(frozen=True)
class CachedToken:
    value: str = field(repr=False)  # a credential: kept out of reprs and logs
    expires_at: datetime
    refreshed_at: datetime


class TokenStore:
    """The `wechat_access_tokens` rows of one warehouse (SQLite or PostgreSQL)."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine

    def __repr__(self) -> str:
        return f"TokenStore({self.engine.url.render_as_string(hide_password=True)})"

    def get(self, app_id: str, now: datetime, margin: timedelta = MARGIN) -> CachedToken | None:
        """The cached token of `app_id` if it stays valid for `margin` after `now`, else None."""
        t = wechat_access_tokens
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.app_id == app_id)).mappings().first()
        if row is None:
            return None
        cached = CachedToken(row["access_token"], utc(row["expires_at"]), utc(row["refreshed_at"]))
        return cached if cached.expires_at - aware_utc(now) >= margin else None

    def put(self, app_id: str, token: str, expires_at: datetime, now: datetime) -> None:
        """Store `token` as the account's current one (replacing any other)."""
        values = {
            "app_id": app_id,
            "access_token": token,
            "expires_at": aware_utc(expires_at),
            "refreshed_at": aware_utc(now),
        }
        with self.engine.begin() as conn:
            insert = sqlite_insert if conn.dialect.name == "sqlite" else postgresql_insert
            stmt = insert(wechat_access_tokens).values(values)
            stmt = stmt.on_conflict_do_update(
                index_elements=["app_id"], set_={c: stmt.excluded[c] for c in values if c != "app_id"}
            )
            conn.execute(stmt)

    def claim_forced_refresh(self, app_id: str, stale: str, now: datetime) -> bool:
        """Whether this process may force a refresh because WeChat refused `stale`.

        Yes when `stale` is still the cached token and nothing was fetched or claimed in the last
        30 s, or when nothing is cached; the claim is one conditional UPDATE, so of processes
        claiming at once exactly one wins. No when another process already stored a newer token
        (use that one) or claimed the refresh moments ago (its token is on its way).
        """
        now = aware_utc(now)
        t = wechat_access_tokens
        claim = (
            t.update()
            .where(t.c.app_id == app_id, t.c.access_token == stale, t.c.refreshed_at <= now - FORCE_SPACING)
            .values(refreshed_at=now)
        )
        with self.engine.begin() as conn:
            if conn.execute(claim).rowcount == 1:
                return True
            return conn.execute(sa.select(t.c.app_id).where(t.c.app_id == app_id)).first() is None
