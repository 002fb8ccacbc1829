"""The warehouse connection of the web app: a small pool, Core only."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

POOL_SIZE = 4
MAX_OVERFLOW = 4


def make_engine(url: str) -> Engine:
    parsed = sa.engine.make_url(url)
    if parsed.drivername.startswith("sqlite"):
        # The pipeline may be writing at the same moment: wait for its lock instead of failing.
        return sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 15})
    return sa.create_engine(url, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW, pool_timeout=10, pool_recycle=1800)
