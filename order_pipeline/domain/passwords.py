"""Staff password hashes with the standard library's scrypt.

Stored format: `scrypt$n$r$p$salt_b64$hash_b64`, e.g. what
`order-pipeline hash-password` prints for the `web.staff` list.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass

N, R, P = 2**14, 8, 1
_KEY_LEN = 32
_MAX_N = 2**20  # a hash from the config must not be able to exhaust the machine


@dataclass(frozen=True)
class ScryptHash:
    n: int
    r: int
    p: int
    salt: bytes
    key: bytes


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _derive(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=length, maxmem=128 * n * r * p + 2**20
    )


def parse_password_hash(stored: str) -> ScryptHash:
    """Split a stored hash into its parts. Raises ValueError when it is not a usable scrypt hash."""
    parts = str(stored).split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("expected scrypt$n$r$p$salt_b64$hash_b64")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        key = base64.b64decode(parts[5], validate=True)
    except ValueError:
        raise ValueError("n, r and p must be numbers and salt and hash base64") from None
    if n < 2 or n > _MAX_N or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16:
        raise ValueError(f"n must be a power of two up to {_MAX_N}, r 1-32, p 1-16")
    if len(salt) < 8 or len(key) < 16:
        raise ValueError("salt or hash too short")
    return ScryptHash(n, r, p, salt, key)


def hash_password(password: str) -> str:
    """A new salted scrypt hash of `password`, in the stored format."""
    salt = secrets.token_bytes(16)
    key = _derive(password, salt, N, R, P, _KEY_LEN)
    return f"scrypt${N}${R}${P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    """True when `password` matches the stored hash; False for a wrong password or a broken hash."""
    try:
        h = parse_password_hash(stored)
    except ValueError:
        return False
    return hmac.compare_digest(_derive(password, h.salt, h.n, h.r, h.p, len(h.key)), h.key)


@functools.cache
def dummy_hash() -> str:
    """Checked against when the user name is unknown, so both answers take as long."""
    return hash_password(secrets.token_urlsafe(16))
