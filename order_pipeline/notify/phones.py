"""Customers' numbers as the ledger keeps them: a keyed hash and a masked form, never the number.

The hash is what the daily cap counts and the suppression list matches; its key comes from
`notifications.phone_hash_key_env`, or is derived from the link secret, so two warehouses of the
same company agree and nobody without the key can test a number against it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from order_pipeline.contract.customer_schema import customer_suppressions
from order_pipeline.contract.parsing import ConfigError
from order_pipeline.domain.masking import mask_phone
from order_pipeline.domain.times import utc
from order_pipeline.notify.channels.message import mainland_mobile

_PURPOSE = b"customer-phone\x00"


@dataclass(frozen=True)
class PhoneKey:
    key: bytes = field(repr=False)

    def hash(self, phone: str | None) -> str | None:
        """The keyed hash of a number: "+86 138-1234-5678" and "13812345678" hash alike."""
        if not phone or not phone.strip():
            return None
        number = mainland_mobile(phone) or phone.strip()
        return hmac.new(self.key, _PURPOSE + number.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def phone_key(key_env: str | None, link_secret: bytes, config_path: str) -> PhoneKey:
    """The hash key: the named variable's value, or one derived from the link secret."""
    if key_env is None:
        return PhoneKey(hmac.new(link_secret, b"phone-hash-key", hashlib.sha256).digest())
    value = os.environ.get(key_env, "")
    if len(value) < 16:
        raise ConfigError(
            config_path,
            "notifications.phone_hash_key_env",
            f"environment variable {key_env} is unset or shorter than 16 characters",
            f"export {key_env}=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')",
        )
    return PhoneKey(value.encode("utf-8"))


def suppress(conn: sa.Connection, key: PhoneKey, phone: str, source: str, reason: str | None, now: datetime) -> bool:
    """Add a number to the suppression list; False when it was there already."""
    return suppress_hash(conn, key.hash(phone) or "", mask_phone(phone), source, reason, now)


def suppress_hash(conn: sa.Connection, phone_hash: str, masked: str, source: str, reason: str | None, now) -> bool:
    s = customer_suppressions
    insert = sqlite_insert if conn.dialect.name == "sqlite" else postgresql_insert
    stmt = insert(s).values(
        phone_hash=phone_hash, phone_masked=masked, source=source, reason=reason, created_at=utc(now)
    )
    return conn.execute(stmt.on_conflict_do_nothing(index_elements=["phone_hash"])).rowcount == 1


def unsuppress(conn: sa.Connection, key: PhoneKey, phone: str) -> bool:
    s = customer_suppressions
    return conn.execute(s.delete().where(s.c.phone_hash == key.hash(phone))).rowcount == 1


def suppressed(conn: sa.Connection, hashes: list[str]) -> set[str]:
    s = customer_suppressions
    found: set[str] = set()
    for i in range(0, len(hashes), 500):
        part = hashes[i : i + 500]
        found |= set(conn.execute(sa.select(s.c.phone_hash).where(s.c.phone_hash.in_(part))).scalars())
    return found
