"""Who looked at what: the fields of an access-log row that come from the request."""

from __future__ import annotations

import hashlib
import hmac
import logging
import queue
import threading
from datetime import datetime

from sqlalchemy.engine import Engine
from starlette.requests import Request

from order_pipeline.web.ops import queries

log = logging.getLogger(__name__)

_PURPOSE = b"client-ip\x00"
MAX_USER_AGENT = 300
MAX_ORDER_NO = 64
MAX_ACTOR = 64
ANONYMOUS = "anonymous"
# How often queued access rows are written: short enough that an audit query sees a visit
# at once, long enough that a busy second is a few multi-row INSERTs, not hundreds of commits.
FLUSH_SECONDS = 0.25


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


def request_access(
    request: Request, secret: bytes, at: datetime, *, order_no: str | None, actor: str, outcome: str
) -> queries.Access:
    """The access-log row of one request, its address hashed under `secret`."""
    return queries.Access(
        at, logged_order_no(order_no), actor, outcome, ip_hash(client_ip(request), secret), user_agent(request)
    )


class AccessLog:
    """`tracking_access_log` rows, written in batches by one background thread.

    A request only queues its row; the thread writes whatever has queued, every
    `interval` seconds, as one multi-row INSERT. That keeps a database round trip
    and a commit off every page view, and a page never waits for the pipeline's
    SQLite write lock. The price is the one `synchronous_commit = off` already
    accepts: a crash of the server loses at most the last interval's rows. A
    normal shutdown (`close`) writes everything queued. A batch that cannot be
    written (the write lock held past the busy timeout, the database down) goes to
    the error log row by row, in full, so that it can still be accounted for.
    """

    def __init__(self, engine: Engine, interval: float = FLUSH_SECONDS):
        self.engine, self.interval = engine, interval
        self._queue: queue.SimpleQueue[queries.Access] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._flushing = threading.Lock()
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()

    def add(self, access: queries.Access) -> None:
        """Queue one row; never blocks on the database (except after `close`: then written at once)."""
        self._queue.put(access)
        if self._stop.is_set():
            self.flush()
        elif self._thread is None:
            self._start()

    def flush(self) -> int:
        """Write every row queued so far, now. Returns how many were written (0 when the write failed)."""
        with self._flushing:
            rows = self._drain()
            try:
                self._write(rows, durable=False)
            except Exception:
                return 0
            return len(rows)

    def write_now(self, access: queries.Access) -> None:
        """Write `access` (after the rows queued before it) at once and durably; raise if it cannot be.

        For the actions that must not go ahead unrecorded, such as a bulk export.
        """
        with self._flushing:
            self._write([*self._drain(), access], durable=True)

    def _drain(self) -> list[queries.Access]:
        rows = []
        while True:
            try:
                rows.append(self._queue.get_nowait())
            except queue.Empty:
                return rows

    def _write(self, rows: list[queries.Access], durable: bool) -> None:
        if not rows:
            return
        try:
            queries.write_accesses(self.engine, rows, durable=durable)
        except Exception:
            log.error("a batch of %d tracking_access_log rows could not be written", len(rows), exc_info=True)
            for access in rows:
                log.error("access log row not written, recorded here instead: %r", access)
            raise

    def close(self) -> None:
        """Stop the writer thread and write what is still queued."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()

    def _start(self) -> None:
        with self._starting:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()
