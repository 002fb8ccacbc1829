"""What every channel shares: the message, the error, byte limits, the Channel base and its HTTP POST."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from order_pipeline.domain.http_retry import retry_after

DEFAULT_TIMEOUT = 10.0
TRUNCATED = "…(已截断)"
_TRUNCATED_BYTES = len(TRUNCATED.encode())

# Bytes a message body leaves free under the platform's limit for the title line, the link and
# the @s the channel adds around it; the body is what `digest` packs.
HEADROOM = 512

_MOBILE = re.compile(r"\+?\d{7,15}")

Clock = Callable[[], float]


@dataclass(frozen=True)
class AlertMessage:
    title: str
    body_markdown: str
    body_text: str
    mentions: tuple[str, ...] = ()  # mobile numbers or platform user ids of the people to @
    severity: str = "warning"  # info | warning | critical
    link: str | None = None
    body_html: str | None = None  # e-mail only, next to the plain text
    keys: tuple[str, ...] = ()  # the alerts this message carries: a digest is recorded against each


class ChannelError(Exception):
    """The platform refused a message or could not be reached.

    The text never contains the webhook URL: robot URLs carry the robot's key.
    """

    def __init__(self, message: str, *, retryable: bool, code: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.retryable, self.code, self.retry_after = retryable, code, retry_after


def truncate(text: str, max_bytes: int) -> str:
    """`text` cut to at most `max_bytes` UTF-8 bytes on a character boundary, the cut marked."""
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    room = max_bytes - _TRUNCATED_BYTES
    if room < 0:
        return data[:max_bytes].decode(errors="ignore")
    # errors="ignore" drops only the partial character the byte cut leaves at the end.
    return data[:room].decode(errors="ignore") + TRUNCATED


def fit(head: str, body: str, tail: str, max_bytes: int) -> str:
    """head + body + tail within `max_bytes`, cutting the body so the title and the @s survive."""
    room = max_bytes - nbytes(head) - nbytes(tail)
    if room < 0:
        return truncate(head + body + tail, max_bytes)
    return head + truncate(body, room) + tail


def nbytes(text: str) -> int:
    return len(text.encode())


def is_mobile(mention: str) -> bool:
    return _MOBILE.fullmatch(mention) is not None


class Channel:
    """What every channel offers; subclasses implement `send`."""

    max_per_minute: int | None = None  # the platform's per-minute limit; None: no limit
    max_bytes: int | None = None  # body size one message may have, the target of `digest`

    def __init__(self, name: str, mentions: Sequence[str] = ()):
        self.name = name
        self.mentions = tuple(mentions)  # @-ed on every message of this channel

    def send(self, msg: AlertMessage) -> None:
        raise NotImplementedError

    def endpoint(self) -> tuple[str, int] | None:
        """The host and port it sends to, for `order-pipeline check`; None for a local channel."""
        return None

    def posts(self, msg: AlertMessage) -> int:
        """Messages one `send(msg)` takes from the platform's per-minute allowance."""
        return 1

    def _mentions(self, msg: AlertMessage) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.mentions + msg.mentions))


# --- HTTP ---------------------------------------------------------------------------------------


class _Http:
    """One POST with a timeout; failures worth retrying become retryable `ChannelError`s."""

    def __init__(self, timeout: float, transport: httpx.BaseTransport | None):
        self.timeout, self.transport = timeout, transport

    def post(
        self, url: str, *, json_body: Any = None, content: bytes | None = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        try:
            with httpx.Client(timeout=self.timeout, transport=self.transport) as client:
                resp = client.post(url, json=json_body, content=content, headers=headers)
        except httpx.TimeoutException:
            raise ChannelError(f"no answer within {self.timeout:g} s", retryable=True, code="timeout") from None
        except httpx.TransportError as e:
            raise ChannelError(
                f"cannot reach the server ({type(e).__name__}: {e})", retryable=True, code="transport"
            ) from None
        if resp.status_code in (408, 429) or resp.status_code >= 500:
            raise ChannelError(
                f"HTTP {resp.status_code}: {snippet(resp)}",
                retryable=True,
                code=str(resp.status_code),
                retry_after=retry_after(resp, "x-ogw-ratelimit-reset"),
            )  # Feishu's reset header
        return resp


def snippet(resp: httpx.Response) -> str:
    return resp.text.strip()[:200]


def json_answer(resp: httpx.Response) -> dict[str, Any]:
    """The JSON object a robot answers with, whatever the HTTP status."""
    try:
        doc = resp.json()
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise ChannelError(
            f"HTTP {resp.status_code}, unexpected answer: {snippet(resp)}", retryable=False, code=str(resp.status_code)
        )
    return doc


def hmac_base64(key: str | bytes, msg: str | bytes) -> str:
    key = key.encode() if isinstance(key, str) else key
    msg = msg.encode() if isinstance(msg, str) else msg
    return base64.b64encode(hmac.new(key, msg, hashlib.sha256).digest()).decode()


class HttpChannel(Channel):
    def __init__(
        self, name: str, url: str, mentions: Sequence[str], timeout: float, transport: httpx.BaseTransport | None
    ):
        super().__init__(name, mentions)
        self._url = url
        self._http = _Http(timeout, transport)

    def endpoint(self) -> tuple[str, int] | None:
        parts = urlsplit(self._url)
        return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
