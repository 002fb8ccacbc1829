"""DingTalk (钉钉) custom robots."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Sequence

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


class DingTalkRobot(HttpChannel):
    """DingTalk (钉钉) custom robot, markdown message; signed when the robot has a secret."""

    max_per_minute = 20
    TEXT_BYTES = 20000  # DingTalk refuses messages past about 20 KB
    max_bytes = TEXT_BYTES - HEADROOM
    MUTED_SECONDS = 600.0  # after errcode 130101 "send too fast, exceed 20 times per minute"

    def __init__(
        self,
        webhook_url: str,
        secret: str | None = None,
        *,
        name: str = "dingtalk",
        mentions: Sequence[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        clock: Clock = time.time,
    ):
        super().__init__(name, webhook_url, mentions, timeout, transport)
        self._secret, self._clock = secret, clock

    def send(self, msg: AlertMessage) -> None:
        mentions = self._mentions(msg)
        # DingTalk notifies only the people whose @ also appears in the text.
        tail = "".join(
            [
                f"\n\n[查看详情]({msg.link})" if msg.link else "",
                "\n\n" + " ".join(f"@{m}" for m in mentions) if mentions else "",
            ]
        )
        payload = {
            "msgtype": "markdown",
            "markdown": {
                "title": msg.title,
                "text": fit(f"### {msg.title}\n\n", msg.body_markdown, tail, self.TEXT_BYTES),
            },
            "at": {
                "atMobiles": [m for m in mentions if is_mobile(m)],
                "atUserIds": [m for m in mentions if not is_mobile(m)],
                "isAtAll": False,
            },
        }
        answer = json_answer(self._http.post(self._signed_url(), json_body=payload))
        code, text = answer.get("errcode"), answer.get("errmsg", "")
        if code == 0:
            return
        if code == 130101:
            raise ChannelError(
                f"DingTalk throttled the robot, errcode 130101: {text}",
                retryable=True,
                code="130101",
                retry_after=self.MUTED_SECONDS,
            )
        if code == -1:
            raise ChannelError(f"DingTalk busy, errcode -1: {text}", retryable=True, code="-1")
        if code == 310000:
            raise ChannelError(
                f"DingTalk refused the message, errcode 310000: {text}; check the signing secret, "
                "the robot's keywords and its IP allow-list",
                retryable=False,
                code="310000",
            )
        raise ChannelError(f"DingTalk errcode {code}: {text}", retryable=False, code=str(code))

    def _signed_url(self) -> str:
        if not self._secret:
            return self._url
        timestamp = int(self._clock() * 1000)
        sign = hmac_base64(self._secret, f"{timestamp}\n{self._secret}")
        # Appended by hand: httpx `params=` would replace the access_token already in the URL.
        sep = "&" if "?" in self._url else "?"
        return f"{self._url}{sep}timestamp={timestamp}&sign={urllib.parse.quote_plus(sign)}"
