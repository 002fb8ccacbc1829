"""One pipeline run at a time per warehouse.

SQLite takes one writer at a time, and two runs interleaving their steps made the second fail
with "database is locked" partway through. A run holds this lock from its first step to its
last: on SQLite an advisory `flock` on a file beside the database (released by the kernel
when the process dies, so a killed run never leaves it held), on PostgreSQL a session-level
advisory lock on a connection kept for the run.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from order_pipeline.warehouse.engine import create_engine

# pg_advisory_lock's key: a constant of this project, the same in every process.
PG_LOCK_KEY = 0x6F726465  # "orde"
POLL_SECONDS = 1.0


class RunLocked(RuntimeError):
    """Another run holds the warehouse; says who, since when, and how to wait for it."""


@contextmanager
def run_lock(
    url: str,
    wait_seconds: float,
    *,
    on_wait: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[None]:
    """Hold the warehouse's run lock; wait up to `wait_seconds` for it, then raise RunLocked."""
    lock = _SqliteLock(url) if url.startswith("sqlite") else _PostgresLock(url)
    deadline = clock() + max(wait_seconds, 0.0)
    told = False
    try:
        while not lock.try_acquire():
            holder = lock.holder()
            if clock() >= deadline:
                waited = f" after waiting {wait_seconds:g} s" if wait_seconds > 0 else ""
                raise RunLocked(
                    f"another pipeline run ({holder}) is writing to {sa.make_url(url).render_as_string()}; "
                    f"this run did not start{waited}. Run it again when that one ends, or pass --wait SECONDS"
                )
            if on_wait and not told:
                on_wait(f"waiting up to {wait_seconds:g} s for the run that holds the warehouse ({holder})")
                told = True
            sleep(POLL_SECONDS)
        yield
    finally:
        lock.release()


class _SqliteLock:
    def __init__(self, url: str):
        database = sa.make_url(url).database
        self.path = Path(f"{database}.run-lock") if database and database != ":memory:" else None
        self.fd: int | None = None

    def try_acquire(self) -> bool:
        if self.path is None:  # an in-memory warehouse belongs to one process
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(
            fd, json.dumps({"pid": os.getpid(), "since": datetime.now(UTC).isoformat(timespec="seconds")}).encode()
        )
        self.fd = fd
        return True

    def holder(self) -> str:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8")) if self.path else {}
            return f"pid {info['pid']}, since {info['since']}"
        except (OSError, ValueError, KeyError):
            return "a process that has not yet written its name"

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class _PostgresLock:
    def __init__(self, url: str):
        self.engine = create_engine(url)
        self.conn: sa.Connection | None = None

    def try_acquire(self) -> bool:
        conn = self.engine.connect()
        got = conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({PG_LOCK_KEY})").scalar()
        conn.commit()
        if got:
            self.conn = conn
            return True
        conn.close()
        return False

    def holder(self) -> str:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT a.pid, a.backend_start, a.client_addr FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.objid = :key AND l.granted AND l.database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                {"key": PG_LOCK_KEY},
            ).first()
        return f"server pid {row.pid}, since {row.backend_start:%Y-%m-%dT%H:%M:%S%z}" if row else "a run now ending"

    def release(self) -> None:
        if self.conn is not None:
            self.conn.exec_driver_sql(f"SELECT pg_advisory_unlock({PG_LOCK_KEY})")
            self.conn.close()
            self.conn = None
        self.engine.dispose()
