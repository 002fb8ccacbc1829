"""Feishu (飞书) custom bots."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar

import httpx

from order_pipeline.alerts.channels.message import (
    DEFAULT_TIMEOUT,
    HEADROOM,
    AlertMessage,
    ChannelError,
    Clock,
    HttpChannel,
    fit,
    hmac_base64,
    is_mobile,
    json_answer,
)


class FeishuBot(HttpChannel):
    """Feishu (飞书) custom bot, a card with a markdown element; signed when the bot has a secret.

    A custom bot can @ people by open_id or user_id only; a mobile number among the mentions is
    shown as text.
    """

    max_per_minute = 100  # and 5 a second
    CONTENT_BYTES = 16 * 1024  # the request body must stay under 20 KB, JSON escapes included
    max_bytes = CONTENT_BYTES - HEADROOM
    _COLOURS: ClassVar[dict[str, str]] = {"info": "blue", "warning": "orange", "critical": "red"}
    _HINTS: ClassVar[dict[int, str]] = {
        19021: "check the signing secret and the server clock (the timestamp must be within an hour)",
        19022: "allow this server's IP address in the bot's security settings",
        19024: "put one of the bot's keywords in the title",
    }

    def __init__(
        self,
        webhook_url: str,
        secret: str | None = None,
        *,
        name: str = "feishu",
        mentions: Sequence[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        clock: Clock = time.time,
    ):
        super().__init__(name, webhook_url, mentions, timeout, transport)
        self._secret, self._clock = secret, clock

    def send(self, msg: AlertMessage) -> None:
        mentions = self._mentions(msg)
        tail = "".join(
            [
                f"\n[查看详情]({msg.link})" if msg.link else "",
                "\n" + " ".join(f"@{m}" if is_mobile(m) else f"<at id={m}></at>" for m in mentions) if mentions else "",
            ]
        )
        card = {
            "header": {
                "title": {"tag": "plain_text", "content": msg.title},
                "template": self._COLOURS.get(msg.severity, "orange"),
            },
            "elements": [{"tag": "markdown", "content": fit("", msg.body_markdown, tail, self.CONTENT_BYTES)}],
        }
        payload: dict[str, Any] = {"msg_type": "interactive", "card": card}
        if self._secret:
            timestamp = str(int(self._clock()))
            payload |= {"timestamp": timestamp, "sign": hmac_base64(f"{timestamp}\n{self._secret}", b"")}
        answer = json_answer(self._http.post(self._url, json_body=payload))
        # Older deployments answer {"StatusCode": 0, "StatusMessage": "success"}.
        code = answer.get("code", answer.get("StatusCode"))
        text = answer.get("msg", answer.get("StatusMessage", ""))
        if code == 0:
            return
        if code == 11232:
            raise ChannelError(f"Feishu rate limit, code 11232: {text}", retryable=True, code="11232")
        hint = f"; {self._HINTS[code]}" if code in self._HINTS else ""
        raise ChannelError(f"Feishu code {code}: {text}{hint}", retryable=False, code=str(code))
