"""Sessions ended by a logout: their nonces in `staff_session_revocations`, in the warehouse.

The warehouse is where the app's other audit state lives (`tracking_access_log`), so every
worker and every restart sees a logout. A row is kept until its session would have expired
anyway; each logout deletes the rows past that.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from order_pipeline.contract.schema import metadata, staff_session_revocations
from order_pipeline.web.security.sessions import Session

log = logging.getLogger(__name__)

revoked = staff_session_revocations


def ensure_table(engine: Engine) -> None:
    """Create the table if the warehouse does not have it yet (a warehouse older than it, or none but the web's)."""
    try:
        metadata.create_all(engine, tables=[revoked])
    except SQLAlchemyError:
        # Without it no staff session is accepted (see `is_revoked`); the log says why.
        log.error("could not create table %s: staff cannot stay logged in", revoked.name, exc_info=True)


def revoke(engine: Engine, session: Session, now: datetime) -> None:
    """Record that `session` is over; raises when that cannot be written (the logout must not look done)."""
    expires = datetime.fromtimestamp(session.expires, UTC)
    with engine.begin() as conn:
        conn.execute(revoked.delete().where(revoked.c.expires_at <= now))
        try:
            with conn.begin_nested():
                conn.execute(
                    revoked.insert().values(
                        nonce=session.nonce, username=session.username, revoked_at=now, expires_at=expires
                    )
                )
        except IntegrityError:
            pass  # two logouts of one session at once: it is revoked either way


def is_revoked(engine: Engine, session: Session) -> bool:
    """Whether `session` was logged out; True also when that cannot be read: a session nobody can vouch for ends."""
    try:
        with engine.connect() as conn:
            found = conn.execute(sa.select(revoked.c.nonce).where(revoked.c.nonce == session.nonce)).first()
    except SQLAlchemyError:
        log.error(
            "could not read %s: the staff session of %s is refused", revoked.name, session.username, exc_info=True
        )
        return True
    return found is not None
