"""What the HTTP clients share."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx


def retry_after(response: httpx.Response, *headers: str) -> float | None:
    """Seconds the server asked us to wait: Retry-After (or the first of `headers` present),
    given as a number or as an HTTP date."""
    value = next((response.headers[h] for h in ("Retry-After", *headers) if response.headers.get(h)), None)
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None
