"""The one way to open a source database: the installed driver, and connections checked before use."""

from __future__ import annotations

import sqlalchemy as sa

from order_pipeline.contract.config import driver_url

CONNECT_TIMEOUT_SECONDS = 5

# One engine (and connection pool) per URL for the process: a sensor tick and an asset run build
# their resources afresh, and a new pool per tick would reconnect every time.
_engines: dict[str, sa.Engine] = {}


def source_engine(url: str) -> sa.Engine:
    """The engine of a source URL, kept for the process.

    A pooled connection is pinged before use, since it sits idle between ticks and a server
    may have closed it; a server that does not answer fails within the connect timeout.
    """
    url = driver_url(url)
    if url not in _engines:
        name = sa.engine.make_url(url).get_backend_name()
        args = {"connect_timeout": CONNECT_TIMEOUT_SECONDS} if name in ("postgresql", "mysql") else {}
        _engines[url] = sa.create_engine(url, pool_pre_ping=name != "sqlite", connect_args=args)
    return _engines[url]


def dispose_all() -> None:
    """Close every kept engine (a test that swaps databases, a process that forks)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
