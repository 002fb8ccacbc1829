"""WeCom (企业微信) group robots."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from order_pipeline.alerts.channels.message import (
    DEFAULT_TIMEOUT,
    HEADROOM,
    AlertMessage,
    ChannelError,
    HttpChannel,
    fit,
    is_mobile,
    json_answer,
    truncate,
)


class WeComRobot(HttpChannel):
    """WeCom (企业微信) group robot.

    An alert goes as one markdown message, which can @ people by user id (`<@userid>`) but not
    by mobile number: `mentioned_mobile_list` works on text messages only. When mobile numbers
    are among the mentions, a short text message with the title follows, carrying them, so those
    phones ring too; the full alert stays in the markdown. A retry after a failed follow-up sends
    the markdown again: a duplicate is better than a missed @.
    """

    max_per_minute = 20
    MARKDOWN_BYTES = 4096  # errcode 40058 past it
    TEXT_BYTES = 2048
    max_bytes = MARKDOWN_BYTES - HEADROOM

    def __init__(
        self,
        webhook_url: str,
        *,
        name: str = "wecom",
        mentions: Sequence[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ):
        super().__init__(name, webhook_url, mentions, timeout, transport)

    def posts(self, msg: AlertMessage) -> int:
        return 2 if any(is_mobile(m) for m in self._mentions(msg)) else 1

    def send(self, msg: AlertMessage) -> None:
        mentions = self._mentions(msg)
        mobiles = [m for m in mentions if is_mobile(m)]
        users = [m for m in mentions if not is_mobile(m)]
        tail = "".join(
            [
                f"\n[查看详情]({msg.link})" if msg.link else "",
                "\n" + " ".join(f"<@{u}>" for u in users) if users else "",
            ]
        )
        content = fit(f"**{msg.title}**\n", msg.body_markdown, tail, self.MARKDOWN_BYTES)
        self._post({"msgtype": "markdown", "markdown": {"content": content}})
        if mobiles:
            text = truncate(msg.title, self.TEXT_BYTES)
            self._post({"msgtype": "text", "text": {"content": text, "mentioned_mobile_list": mobiles}})

    def _post(self, payload: dict[str, Any]) -> None:
        answer = json_answer(self._http.post(self._url, json_body=payload))
        code, text = answer.get("errcode"), answer.get("errmsg", "")
        if code == 0:
            return
        if code == 45009:
            raise ChannelError(f"WeCom rate limit, errcode 45009: {text}", retryable=True, code="45009")
        if code == 93000:
            raise ChannelError(
                "WeCom does not know the webhook key (errcode 93000): check the robot's webhook URL",
                retryable=False,
                code="93000",
            )
        raise ChannelError(f"WeCom errcode {code}: {text}", retryable=False, code=str(code))
