"""Who looked at what: the fields of an access-log row that come from the request."""

from __future__ import annotations

import hashlib
import hmac
import logging
import queue
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine
from starlette.requests import Request

from order_pipeline.web.ops import queries

log = logging.getLogger(__name__)

_PURPOSE = b"client-ip\x00"
MAX_USER_AGENT = 300
MAX_ORDER_NO = 64
MAX_ACTOR = 64
MAX_OUTCOME = 64
ANONYMOUS = "anonymous"
# How often queued access rows are written: short enough that an audit query sees a visit
# at once, long enough that a busy second is a few multi-row INSERTs, not hundreds of commits.
FLUSH_SECONDS = 0.25
# Refused requests (rate limits, a locked account) are counted into one row per source and
# window instead of one row each, so that a flood cannot grow the table without bound.
COUNT_WINDOW = timedelta(minutes=1)
MAX_COUNTS = 10_000  # open counts kept in memory; past it the oldest are written out early
# C0 and C1 controls, DEL and the Unicode line/paragraph separators: what could forge a line of a log
# or move a terminal's cursor when an auditor reads the table. The backslash too, so escapes stay unambiguous.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\\]")
_NAMED = {"\r": "\\r", "\n": "\\n", "\t": "\\t", "\\": "\\\\"}


def _escape(match: re.Match[str]) -> str:
    ch = match.group(0)
    if ch in _NAMED:
        return _NAMED[ch]
    return f"\\x{ord(ch):02x}" if ord(ch) <= 0xFF else f"\\u{ord(ch):04x}"


def audit_text(value: str | None, limit: int) -> str | None:
    """A text field of an audit row: control characters escaped (CR as \\r, ESC as \\x1b), at most `limit` long.

    Every text that reaches `tracking_access_log` from a request goes through here.
    """
    if value is None:
        return None
    return _UNSAFE.sub(_escape, value)[:limit]


def ip_hash(ip: str | None, secret: bytes) -> str | None:
    """A keyed hash of the client address: equal addresses give equal hashes, but it cannot be reversed."""
    if not ip:
        return None
    return hmac.new(secret, _PURPOSE + ip.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def client_ip(request: Request) -> str:
    """The client address (uvicorn already applied X-Forwarded-For from trusted proxies)."""
    return request.client.host if request.client else ""


def user_agent(request: Request) -> str | None:
    return audit_text(request.headers.get("user-agent", ""), MAX_USER_AGENT) or None


def logged_order_no(order_no: str | None) -> str | None:
    return audit_text(order_no, MAX_ORDER_NO) if order_no else None


def logged_actor(username: str | None) -> str:
    """The actor of a row about someone not (yet) logged in: the name they typed, or "anonymous"."""
    return audit_text((username or "").strip(), MAX_ACTOR) or ANONYMOUS


def request_access(
    request: Request, secret: bytes, at: datetime, *, order_no: str | None, actor: str, outcome: str
) -> queries.Access:
    """The access-log row of one request, its address hashed under `secret`, its texts as given (escaped here)."""
    return queries.Access(
        at,
        logged_order_no(order_no),
        logged_actor(actor),
        audit_text(outcome, MAX_OUTCOME) or "",
        ip_hash(client_ip(request), secret),
        user_agent(request),
    )


@dataclass
class _Count:
    """Refusals of one kind from one source within one window; its row carries the first one's time."""

    first: queries.Access
    until: datetime
    count: int = 1

    def row(self) -> queries.Access:
        return replace(self.first, outcome=f"{self.first.outcome}:{self.count}")


def _count_key(access: queries.Access) -> tuple:
    return (access.outcome, access.actor, access.order_no, access.ip_hash)


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

    def __init__(
        self,
        engine: Engine,
        interval: float = FLUSH_SECONDS,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_counts: int = MAX_COUNTS,
    ):
        self.engine, self.interval, self.clock, self.max_counts = engine, interval, clock, max_counts
        self._queue: queue.SimpleQueue[queries.Access] = queue.SimpleQueue()
        self.counts: dict[tuple, _Count] = {}
        self._counting = threading.Lock()
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

    def count(self, access: queries.Access, until: datetime | None = None, key: tuple | None = None) -> None:
        """Count a refused request into the row of its source's window (`until`: the window's end).

        The row, its outcome suffixed with the count (`rate_limited:250`), is queued once the window is
        over, or earlier when too many windows are open; a crash loses at most the open windows' counts.
        `key` says which refusals share a row (default: same outcome, actor, order and address).
        """
        end = until if until is not None else access.at + COUNT_WINDOW
        key = key if key is not None else _count_key(access)
        closed: list[queries.Access] = []
        with self._counting:
            open_ = self.counts.get(key)
            if open_ is not None and access.at < open_.until:
                open_.count += 1
            else:
                if open_ is not None:
                    closed.append(open_.row())
                self.counts[key] = _Count(access, max(end, access.at))
            if len(self.counts) > self.max_counts:
                oldest = sorted(self.counts, key=lambda k: self.counts[k].first.at)[: len(self.counts) // 2]
                closed += [self.counts.pop(k).row() for k in oldest]
        for row in closed:
            self.add(row)
        if self._stop.is_set():
            self.flush(counted=True)
        elif self._thread is None:
            self._start()

    def _closed_counts(self, everything: bool) -> list[queries.Access]:
        now = self.clock()
        with self._counting:
            done = [k for k, c in self.counts.items() if everything or now >= c.until]
            return [self.counts.pop(k).row() for k in done]

    def flush(self, *, counted: bool = False) -> int:
        """Write every row queued so far and the counts whose window is over (`counted`: every count), now.

        Returns how many rows were written (0 when the write failed).
        """
        with self._flushing:
            rows = self._drain() + self._closed_counts(counted)
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
        """Stop the writer thread and write what is still queued, and every count."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.flush(counted=True)

    def _start(self) -> None:
        with self._starting:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()
