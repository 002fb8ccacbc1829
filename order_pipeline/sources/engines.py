"""The one way to open a source database: the installed driver, and connections checked before use."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import sqlalchemy as sa

from order_pipeline.contract.config import driver_url

CONNECT_TIMEOUT_SECONDS = 5
# How long a read waits for a SQLite source another program holds locked (an ERP's own export in
# progress) before that source's step fails; the other sources are not held up by it.
SQLITE_BUSY_SECONDS = 30.0

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
        if name == "sqlite":
            args: dict = {"timeout": SQLITE_BUSY_SECONDS}
        else:
            args = {"connect_timeout": CONNECT_TIMEOUT_SECONDS} if name in ("postgresql", "mysql") else {}
        _engines[url] = sa.create_engine(url, pool_pre_ping=name != "sqlite", connect_args=args)
    return _engines[url]


def dispose_all() -> None:
    """Close every kept engine (a test that swaps databases, a process that forks)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()


# Bytes that are not UTF-8 become lone surrogates (U+DC80..U+DCFF): the value still reads, and
# still carries the bytes, so validation can reject its row and show them.
_lenient_decode = partial(str, encoding="utf-8", errors="surrogateescape")


def is_undecodable(error: Exception) -> bool:
    """Did SQLite fail a read on text that is not valid UTF-8?

    Only SQLite gets here: PostgreSQL refuses invalid UTF-8 when it is written, so its
    text always decodes.
    """
    orig = getattr(error, "orig", error)
    return isinstance(orig, sqlite3.OperationalError) and "Could not decode to UTF-8" in str(orig)


@contextmanager
def lenient_text(conn: sa.Connection) -> Iterator[None]:
    """Within: SQLite text that is not valid UTF-8 reads with its bad bytes as lone surrogates.

    Only for re-reading a source whose strict read failed, not set on every connection: with
    any text factory but `str`, sqlite3 builds a bytes object and calls the factory for each
    text value, and fetching 2M text values took 1.5 to 2 times as long.
    """
    dbapi = conn.connection.dbapi_connection
    if not isinstance(dbapi, sqlite3.Connection):
        yield
        return
    before = dbapi.text_factory
    dbapi.text_factory = _lenient_decode
    try:
        yield
    finally:
        dbapi.text_factory = before
