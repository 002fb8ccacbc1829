"""What to warn of when the app starts (and in `order-pipeline check`): demo settings serving real people.

The demo runs on this machine only (its `base_url` is a loopback address), where its known
password and whatever secret it was given harm nobody. Anywhere else they are an open door.
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter
from urllib.parse import urlsplit

from order_pipeline.demo.company import DEMO_STAFF
from order_pipeline.domain.passwords import verify_password
from order_pipeline.notify.links import GENERATE
from order_pipeline.web.settings import DEFAULT_SESSION_SECRET_ENV, WebSettings

# A secret of fewer bits than this (counted from how varied its characters are) can be guessed
# offline from one signed link; `secrets.token_urlsafe(32)` has about 200.
MIN_SECRET_BITS = 64


def is_local(base_url: str) -> bool:
    """Whether the app is only reachable from this machine: `localhost` or a loopback address."""
    host = urlsplit(base_url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def secret_bits(secret: bytes) -> float:
    """An upper estimate of a secret's entropy: its length times the Shannon entropy of its characters."""
    if not secret:
        return 0.0
    counts = Counter(secret)
    per_char = -sum(n / len(secret) * math.log2(n / len(secret)) for n in counts.values())
    return per_char * len(secret)


def startup_warnings(settings: WebSettings) -> list[str]:
    """One line per weak setting, naming the entry and the fix; none for an app on this machine only."""
    if is_local(settings.base_url):
        return []
    found = [
        f"web.staff: user {user.username!r} logs in with the demo's password; "
        "set a new one with `order-pipeline hash-password`"
        for user in settings.staff
        if verify_password(DEMO_STAFF[1], user.password_hash)
    ]
    secrets = [("web.link_secret", settings.link_secret)]
    if not settings.session_secret_derived:
        secrets.append(("web.session_secret", settings.session_secret))
    for entry, secret in secrets:
        bits = secret_bits(secret)
        if bits < MIN_SECRET_BITS:
            found.append(f"{entry}: the secret is easy to guess (about {bits:.0f} bits); generate one with {GENERATE}")
    if settings.session_secret_derived:
        found.append(
            "web.session_secret: none set, so staff sessions are signed with a key derived from the link "
            f"secret and a new link secret logs every staff member out; set ${DEFAULT_SESSION_SECRET_ENV} "
            "or web.session_secret_env"
        )
    return found
