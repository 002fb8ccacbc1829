"""Slack incoming webhooks."""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from order_pipeline.alerts.channels.message import (
    DEFAULT_TIMEOUT,
    HEADROOM,
    AlertMessage,
    ChannelError,
    HttpChannel,
    fit,
    is_mobile,
    snippet,
)


class SlackWebhook(HttpChannel):
    """Slack incoming webhook, `text` in mrkdwn; Slack answers a plain `ok`."""

    max_per_minute = 60  # about one a second
    TEXT_BYTES = 40000  # Slack cuts text past 40,000 characters; bytes are never fewer
    max_bytes = TEXT_BYTES - HEADROOM

    def __init__(
        self,
        webhook_url: str,
        *,
        name: str = "slack",
        mentions: Sequence[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ):
        super().__init__(name, webhook_url, mentions, timeout, transport)

    def send(self, msg: AlertMessage) -> None:
        mentions = self._mentions(msg)
        # The plain-text body: Slack's mrkdwn is not Markdown (*bold*, <url|label>).
        tail = "".join(
            [
                f"\n<{msg.link}|查看详情>" if msg.link else "",
                "\n" + " ".join(f"@{m}" if is_mobile(m) else f"<@{m}>" for m in mentions) if mentions else "",
            ]
        )
        text = fit(f"*{_slack_escape(msg.title)}*\n", _slack_escape(msg.body_text), tail, self.TEXT_BYTES)
        resp = self._http.post(self._url, json_body={"text": text})
        if resp.status_code == 200:
            return
        code = snippet(resp)  # invalid_payload, no_service, channel_is_archived, ...
        raise ChannelError(
            f"Slack HTTP {resp.status_code}: {code}", retryable=False, code=code or str(resp.status_code)
        )


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
