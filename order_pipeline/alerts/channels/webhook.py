"""A signed JSON webhook, for any HTTP endpoint."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import httpx

from order_pipeline.alerts.channels.message import (
    DEFAULT_TIMEOUT,
    AlertMessage,
    ChannelError,
    Clock,
    HttpChannel,
    snippet,
)


class JsonWebhook(HttpChannel):
    """POSTs the message as JSON to any HTTP endpoint.

    With a secret, `X-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>` lets the receiver
    check the sender; `sent_at` inside the signed body lets it refuse replays.
    """

    def __init__(
        self,
        url: str,
        secret: str | None = None,
        *,
        name: str = "webhook",
        mentions: Sequence[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        clock: Clock = time.time,
    ):
        super().__init__(name, url, mentions, timeout, transport)
        self._secret, self._clock = secret, clock

    def send(self, msg: AlertMessage) -> None:
        now = self._clock()
        doc = {
            "title": msg.title,
            "body_markdown": msg.body_markdown,
            "body_text": msg.body_text,
            "mentions": list(self._mentions(msg)),
            "severity": msg.severity,
            "link": msg.link,
            "keys": list(msg.keys),
            "sent_at": datetime.fromtimestamp(now, UTC).isoformat(),
        }
        body = json.dumps(doc, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json; charset=utf-8", "X-Timestamp": str(int(now))}
        if self._secret:
            headers["X-Signature"] = "sha256=" + hmac.new(self._secret.encode(), body, hashlib.sha256).hexdigest()
        resp = self._http.post(self._url, content=body, headers=headers)
        if not resp.is_success:
            raise ChannelError(f"HTTP {resp.status_code}: {snippet(resp)}", retryable=False, code=str(resp.status_code))
