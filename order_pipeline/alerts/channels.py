"""Alert delivery channels: WeCom, DingTalk and Feishu group robots, Slack, a signed JSON
webhook, e-mail, and the local outbox table.

A channel turns an `AlertMessage` into its platform's payload and raises `ChannelError` when
the platform refuses it. `deliver` retries what is worth retrying and returns every attempt,
so the ledger can record each one. Robots take about 20 messages a minute; a burst beyond
that is folded into digests (`plan`, `digest`, `RateBudget`) instead of being dropped.

Error answers and what happens to them:

| channel  | answer                                           | meaning                            | retry          |
|----------|--------------------------------------------------|------------------------------------|----------------|
| all HTTP | timeout, connection error, HTTP 408, 429, 5xx    | network or server trouble          | yes (backoff)  |
| WeCom    | errcode 45009                                    | over 20 messages a minute          | yes            |
| WeCom    | errcode 93000                                    | the webhook key is wrong           | no: fix it     |
| WeCom    | any other errcode (40058 too long, ...)          | the message is refused             | no             |
| DingTalk | errcode 130101 "send too fast"                   | the robot is muted for 10 minutes  | next round     |
| DingTalk | errcode -1                                       | system busy                        | yes            |
| DingTalk | errcode 310000                                   | sign, keyword or IP check failed   | no: fix it     |
| Feishu   | code 11232                                       | over 100 a minute / 5 a second     | yes            |
| Feishu   | code 19021 (sign), 19022 (IP), 19024 (keyword)   | a security setting refused it      | no: fix it     |
| Feishu   | code 9499                                        | malformed request                  | no             |
| Slack    | 400 invalid_payload, 403, 404 no_service, 410    | refused or webhook gone            | no             |
| e-mail   | SMTP 4xx, connection errors                      | transient                          | yes            |
| e-mail   | SMTP 5xx                                         | refused                            | no             |
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import smtplib
import ssl
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any, NoReturn

import httpx
import sqlalchemy as sa

from order_pipeline.contract.config import ConfigError, parse_duration
from order_pipeline.contract.schema import alert_outbox
from order_pipeline.domain.http_retry import retry_after

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
TRUNCATED = "…(已截断)"
_TRUNCATED_BYTES = len(TRUNCATED.encode())

# Bytes a message body leaves free under the platform's limit for the title line, the link and
# the @s the channel adds around it; the body is what `digest` packs.
_HEADROOM = 512

_SEPARATOR = "\n\n"
_SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
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


def _fit(head: str, body: str, tail: str, max_bytes: int) -> str:
    """head + body + tail within `max_bytes`, cutting the body so the title and the @s survive."""
    room = max_bytes - _nbytes(head) - _nbytes(tail)
    if room < 0:
        return truncate(head + body + tail, max_bytes)
    return head + truncate(body, room) + tail


def _nbytes(text: str) -> int:
    return len(text.encode())


def _is_mobile(mention: str) -> bool:
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
                f"HTTP {resp.status_code}: {_snippet(resp)}",
                retryable=True,
                code=str(resp.status_code),
                retry_after=retry_after(resp, "x-ogw-ratelimit-reset"),
            )  # Feishu's reset header
        return resp


def _snippet(resp: httpx.Response) -> str:
    return resp.text.strip()[:200]


def _answer(resp: httpx.Response) -> dict[str, Any]:
    """The JSON object a robot answers with, whatever the HTTP status."""
    try:
        doc = resp.json()
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise ChannelError(
            f"HTTP {resp.status_code}, unexpected answer: {_snippet(resp)}", retryable=False, code=str(resp.status_code)
        )
    return doc


def _hmac_base64(key: str | bytes, msg: str | bytes) -> str:
    key = key.encode() if isinstance(key, str) else key
    msg = msg.encode() if isinstance(msg, str) else msg
    return base64.b64encode(hmac.new(key, msg, hashlib.sha256).digest()).decode()


class _HttpChannel(Channel):
    def __init__(
        self, name: str, url: str, mentions: Sequence[str], timeout: float, transport: httpx.BaseTransport | None
    ):
        super().__init__(name, mentions)
        self._url = url
        self._http = _Http(timeout, transport)


class WeComRobot(_HttpChannel):
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
    max_bytes = MARKDOWN_BYTES - _HEADROOM

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
        return 2 if any(_is_mobile(m) for m in self._mentions(msg)) else 1

    def send(self, msg: AlertMessage) -> None:
        mentions = self._mentions(msg)
        mobiles = [m for m in mentions if _is_mobile(m)]
        users = [m for m in mentions if not _is_mobile(m)]
        tail = "".join(
            [
                f"\n[查看详情]({msg.link})" if msg.link else "",
                "\n" + " ".join(f"<@{u}>" for u in users) if users else "",
            ]
        )
        content = _fit(f"**{msg.title}**\n", msg.body_markdown, tail, self.MARKDOWN_BYTES)
        self._post({"msgtype": "markdown", "markdown": {"content": content}})
        if mobiles:
            text = truncate(msg.title, self.TEXT_BYTES)
            self._post({"msgtype": "text", "text": {"content": text, "mentioned_mobile_list": mobiles}})

    def _post(self, payload: dict[str, Any]) -> None:
        answer = _answer(self._http.post(self._url, json_body=payload))
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


class DingTalkRobot(_HttpChannel):
    """DingTalk (钉钉) custom robot, markdown message; signed when the robot has a secret."""

    max_per_minute = 20
    TEXT_BYTES = 20000  # DingTalk refuses messages past about 20 KB
    max_bytes = TEXT_BYTES - _HEADROOM
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
                "text": _fit(f"### {msg.title}\n\n", msg.body_markdown, tail, self.TEXT_BYTES),
            },
            "at": {
                "atMobiles": [m for m in mentions if _is_mobile(m)],
                "atUserIds": [m for m in mentions if not _is_mobile(m)],
                "isAtAll": False,
            },
        }
        answer = _answer(self._http.post(self._signed_url(), json_body=payload))
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
        sign = _hmac_base64(self._secret, f"{timestamp}\n{self._secret}")
        # Appended by hand: httpx `params=` would replace the access_token already in the URL.
        sep = "&" if "?" in self._url else "?"
        return f"{self._url}{sep}timestamp={timestamp}&sign={urllib.parse.quote_plus(sign)}"


class FeishuBot(_HttpChannel):
    """Feishu (飞书) custom bot, a card with a markdown element; signed when the bot has a secret.

    A custom bot can @ people by open_id or user_id only; a mobile number among the mentions is
    shown as text.
    """

    max_per_minute = 100  # and 5 a second
    CONTENT_BYTES = 16 * 1024  # the request body must stay under 20 KB, JSON escapes included
    max_bytes = CONTENT_BYTES - _HEADROOM
    _COLOURS = {"info": "blue", "warning": "orange", "critical": "red"}
    _HINTS = {
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
                "\n" + " ".join(f"@{m}" if _is_mobile(m) else f"<at id={m}></at>" for m in mentions)
                if mentions
                else "",
            ]
        )
        card = {
            "header": {
                "title": {"tag": "plain_text", "content": msg.title},
                "template": self._COLOURS.get(msg.severity, "orange"),
            },
            "elements": [{"tag": "markdown", "content": _fit("", msg.body_markdown, tail, self.CONTENT_BYTES)}],
        }
        payload: dict[str, Any] = {"msg_type": "interactive", "card": card}
        if self._secret:
            timestamp = str(int(self._clock()))
            payload |= {"timestamp": timestamp, "sign": _hmac_base64(f"{timestamp}\n{self._secret}", b"")}
        answer = _answer(self._http.post(self._url, json_body=payload))
        # Older deployments answer {"StatusCode": 0, "StatusMessage": "success"}.
        code = answer.get("code", answer.get("StatusCode"))
        text = answer.get("msg", answer.get("StatusMessage", ""))
        if code == 0:
            return
        if code == 11232:
            raise ChannelError(f"Feishu rate limit, code 11232: {text}", retryable=True, code="11232")
        hint = f"; {self._HINTS[code]}" if code in self._HINTS else ""
        raise ChannelError(f"Feishu code {code}: {text}{hint}", retryable=False, code=str(code))


class SlackWebhook(_HttpChannel):
    """Slack incoming webhook, `text` in mrkdwn; Slack answers a plain `ok`."""

    max_per_minute = 60  # about one a second
    TEXT_BYTES = 40000  # Slack cuts text past 40,000 characters; bytes are never fewer
    max_bytes = TEXT_BYTES - _HEADROOM

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
                "\n" + " ".join(f"@{m}" if _is_mobile(m) else f"<@{m}>" for m in mentions) if mentions else "",
            ]
        )
        text = _fit(f"*{_slack_escape(msg.title)}*\n", _slack_escape(msg.body_text), tail, self.TEXT_BYTES)
        resp = self._http.post(self._url, json_body={"text": text})
        if resp.status_code == 200:
            return
        code = _snippet(resp)  # invalid_payload, no_service, channel_is_archived, ...
        raise ChannelError(
            f"Slack HTTP {resp.status_code}: {code}", retryable=False, code=code or str(resp.status_code)
        )


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class JsonWebhook(_HttpChannel):
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
            raise ChannelError(
                f"HTTP {resp.status_code}: {_snippet(resp)}", retryable=False, code=str(resp.status_code)
            )


# --- e-mail and outbox --------------------------------------------------------------------------


class EmailChannel(Channel):
    """E-mail over SMTP: plain text, plus HTML when the message has it.

    `starttls` upgrades a plain connection (port 587); `ssl` is TLS from the first byte (port 465).
    """

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        recipients: Sequence[str],
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        *,
        ssl: bool = False,
        name: str = "email",
        timeout: float = DEFAULT_TIMEOUT,
    ):
        super().__init__(name)
        self.host, self.port, self.sender, self.recipients = host, port, sender, tuple(recipients)
        self.username, self._password = username, password
        self.starttls, self.implicit_tls, self.timeout = starttls, ssl, timeout

    def send(self, msg: AlertMessage) -> None:
        mail = EmailMessage()
        mail["Subject"] = f"[{msg.severity}] {msg.title}"
        mail["From"] = self.sender
        mail["To"] = ", ".join(self.recipients)
        mail["Date"] = formatdate(usegmt=True)
        mail["Message-ID"] = make_msgid()
        mail.set_content(msg.body_text + (f"\n\n{msg.link}" if msg.link else ""))
        if msg.body_html:
            mail.add_alternative(msg.body_html, subtype="html")
        try:
            with self._connect() as smtp:
                refused = smtp.send_message(mail)
        except smtplib.SMTPRecipientsRefused as e:
            codes = [code for code, _ in e.recipients.values()]
            raise ChannelError(
                f"the mail server refused every recipient: {_refusals(e.recipients)}",
                retryable=all(400 <= c < 500 for c in codes),
                code=str(codes[0]),
            ) from None
        except smtplib.SMTPResponseException as e:
            raise ChannelError(
                f"SMTP {e.smtp_code}: {_smtp_text(e.smtp_error)}",
                retryable=400 <= e.smtp_code < 500,
                code=str(e.smtp_code),
            ) from None
        except smtplib.SMTPNotSupportedError as e:
            raise ChannelError(
                f"the mail server does not support this: {e}", retryable=False, code="unsupported"
            ) from None
        except (smtplib.SMTPException, OSError) as e:  # disconnects, refused connections, timeouts
            raise ChannelError(
                f"cannot reach the mail server ({type(e).__name__}: {e})", retryable=True, code="connection"
            ) from None
        if refused:
            # The others have it: sending again would repeat it to them.
            raise ChannelError(
                f"the mail server refused some recipients: {_refusals(refused)}", retryable=False, code="recipients"
            )

    def _connect(self) -> smtplib.SMTP:
        context = ssl.create_default_context()  # smtplib alone would not verify the certificate
        if self.implicit_tls:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            if self.starttls:
                smtp.starttls(context=context)
            if self.username:
                smtp.login(self.username, self._password or "")
        except BaseException:
            smtp.close()
            raise
        return smtp


def _smtp_text(error: bytes | str) -> str:
    return error.decode(errors="replace") if isinstance(error, bytes) else str(error)


def _refusals(refused: dict[str, tuple[int, bytes]]) -> str:
    return "; ".join(f"{rcpt} ({code} {_smtp_text(text)})" for rcpt, (code, text) in refused.items())


class OutboxChannel(Channel):
    """Writes what would have been sent to `alert_outbox` and to the log: for the demo and for audits."""

    def __init__(self, engine: sa.Engine, *, name: str = "outbox", mentions: Sequence[str] = ()):
        super().__init__(name, mentions)
        self.engine = engine

    def send(self, msg: AlertMessage) -> None:
        mentions = self._mentions(msg)
        log.info("alert for %s via %s: %s\n%s", ", ".join(mentions) or "everyone", self.name, msg.title, msg.body_text)
        row = {
            "created_at": datetime.now(UTC),
            "channel": self.name,
            "recipient": ", ".join(mentions) or None,
            "title": msg.title,
            "body": msg.body_markdown,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(alert_outbox.insert().values(**row))
        except sa.exc.SQLAlchemyError:
            # The message is in the log already; a broken outbox must not hold up the other channels.
            log.exception("could not write the alert %r to %s", msg.title, alert_outbox.name)


# --- delivery, budgets, digests -----------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    ok: bool
    at: datetime
    error: str | None = None
    retryable: bool = False  # for a failure: whether sending again later may succeed


class RateBudget:
    """A channel's per-minute allowance over a sliding 60 s window."""

    WINDOW = 60.0

    def __init__(self, per_minute: int, clock: Clock = time.monotonic):
        self.per_minute, self._clock = per_minute, clock
        self._sent: deque[float] = deque()

    def available(self) -> int:
        """How many messages may go now."""
        cutoff = self._clock() - self.WINDOW
        while self._sent and self._sent[0] <= cutoff:
            self._sent.popleft()
        return max(0, self.per_minute - len(self._sent))

    def record(self, n: int = 1) -> None:
        self._sent.extend([self._clock()] * n)


def deliver(
    channel: Channel,
    msg: AlertMessage,
    retries: int = 3,
    backoff: float = 1.0,
    max_delay: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    budget: RateBudget | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> list[Attempt]:
    """Send `msg`, retrying retryable errors; every attempt is returned, the last tells the outcome.

    Waits `backoff`, 2×, 4×, ... between attempts, or what the platform asked for (Retry-After).
    A wait longer than `max_delay` (DingTalk mutes a robot for 10 minutes) is not slept through:
    the failed attempt is returned and the alert waits for the next round. A `budget`, when given,
    is charged for every attempt, since each one reaches the platform's counter.
    """
    attempts: list[Attempt] = []
    for n in range(retries + 1):
        at = now()
        if budget is not None:
            budget.record(channel.posts(msg))
        try:
            channel.send(msg)
        except ChannelError as e:
            attempts.append(Attempt(False, at, str(e), e.retryable))
            delay = e.retry_after if e.retry_after is not None else backoff * 2**n
            if not e.retryable or n == retries or delay > max_delay:
                break
            sleep(delay)
        else:
            attempts.append(Attempt(True, at))
            break
    return attempts


def digest(messages: Sequence[AlertMessage], max_bytes: int | None) -> list[AlertMessage]:
    """Fold `messages`, in order, into as few messages as keep each body within `max_bytes`.

    Nothing is dropped: every message's title and body land in one digest (a body too large
    for any digest is cut to fit), and the digest carries the union of mentions and keys.
    A digest of one message is that message, its body cut to fit.
    """
    digests: list[_Digest] = []
    for m in messages:
        md, text = f"**{m.title}**\n{m.body_markdown}", f"【{m.title}】\n{m.body_text}"
        if max_bytes is not None:
            md, text = truncate(md, max_bytes), truncate(text, max_bytes)
        if not digests or not digests[-1].has_room(md, text, max_bytes):
            digests.append(_Digest())
        digests[-1].add(m, md, text)
    return [d.message(max_bytes) for d in digests]


@dataclass
class _Digest:
    """The messages of one digest and their sections, in markdown and in plain text."""

    messages: list[AlertMessage] = field(default_factory=list)
    markdown: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)

    def has_room(self, md: str, text: str, max_bytes: int | None) -> bool:
        return max_bytes is None or (
            _nbytes(_SEPARATOR.join([*self.markdown, md])) <= max_bytes
            and _nbytes(_SEPARATOR.join([*self.text, text])) <= max_bytes
        )

    def add(self, msg: AlertMessage, md: str, text: str) -> None:
        self.messages.append(msg)
        self.markdown.append(md)
        self.text.append(text)

    def message(self, max_bytes: int | None) -> AlertMessage:
        if len(self.messages) == 1:
            m = self.messages[0]
            if max_bytes is None:
                return m
            return replace(
                m, body_markdown=truncate(m.body_markdown, max_bytes), body_text=truncate(m.body_text, max_bytes)
            )
        return AlertMessage(
            title=f"{len(self.messages)} 条告警汇总",
            body_markdown=_SEPARATOR.join(self.markdown),
            body_text=_SEPARATOR.join(self.text),
            mentions=tuple(dict.fromkeys(p for m in self.messages for p in m.mentions)),
            severity=max((m.severity for m in self.messages), key=lambda s: _SEVERITY_RANK.get(s, 1)),
            keys=tuple(dict.fromkeys(k for m in self.messages for k in m.keys)),
        )


def plan(channel: Channel, messages: Sequence[AlertMessage], budget: RateBudget) -> list[AlertMessage]:
    """What to send to `channel` now: the messages themselves when the budget allows, else digests
    of them, as many as the budget allows. Alerts whose keys are not in the result wait for the
    next round."""
    slots = budget.available()
    if sum(channel.posts(m) for m in messages) <= slots:
        return list(messages)
    batch: list[AlertMessage] = []
    for piece in digest(messages, channel.max_bytes):
        slots -= channel.posts(piece)
        if slots < 0:
            break
        batch.append(piece)
    return batch


# --- configuration ------------------------------------------------------------------------------

_ROBOT = {"webhook_url_env", "mentions", "timeout"}
FIELDS: dict[str, set[str]] = {
    "wecom": _ROBOT,
    "dingtalk": _ROBOT | {"secret_env"},
    "feishu": _ROBOT | {"secret_env"},
    "slack": _ROBOT,
    "webhook": {"url", "url_env", "secret_env", "mentions", "timeout"},
    "email": {"host", "port", "sender", "recipients", "username", "password_env", "starttls", "ssl", "timeout"},
    "outbox": {"mentions"},
}
_INLINE_SECRETS = {"webhook_url", "secret", "password"}  # written without `_env`


def build_channel(name: str, spec: Any, engine: sa.Engine, config_file: str | Path) -> Channel:
    """The channel a `channels:` entry describes, e.g. `{"type": "wecom", "webhook_url_env": "WECOM_URL"}`.

    Secrets (robot webhook URLs, which hold the key; signing secrets; the SMTP password) come only
    from environment variables named by `*_env` settings. Mistakes raise `ConfigError`.
    """
    r = _Entry(name, spec, Path(config_file))
    kind = r.kind()
    mentions = r.strings("mentions", '["13800000000", zhangsan]')
    if kind == "outbox":
        return OutboxChannel(engine, name=name, mentions=mentions)
    timeout = r.timeout()
    if kind == "wecom":
        return WeComRobot(r.url_env("webhook_url_env"), name=name, mentions=mentions, timeout=timeout)
    if kind == "dingtalk":
        return DingTalkRobot(
            r.url_env("webhook_url_env"), r.env("secret_env"), name=name, mentions=mentions, timeout=timeout
        )
    if kind == "feishu":
        return FeishuBot(
            r.url_env("webhook_url_env"), r.env("secret_env"), name=name, mentions=mentions, timeout=timeout
        )
    if kind == "slack":
        return SlackWebhook(r.url_env("webhook_url_env"), name=name, mentions=mentions, timeout=timeout)
    if kind == "webhook":
        return JsonWebhook(r.webhook_url(), r.env("secret_env"), name=name, mentions=mentions, timeout=timeout)
    return r.email(timeout)


class _Entry:
    """Reads one `channels.<name>` entry; every mistake names the file, the setting and the fix."""

    def __init__(self, name: str, spec: Any, file: Path):
        self.name, self.spec, self.file = name, spec, file

    def fail(self, setting: str | None, problem: str, fix: str) -> NoReturn:
        entry = f"channels.{self.name}" + (f".{setting}" if setting else "")
        raise ConfigError(self.file, entry, problem, fix)

    def kind(self) -> str:
        if not isinstance(self.spec, dict):
            self.fail(
                None, "must be a mapping", "write `type: wecom` (or another type) and its settings under the name"
            )
        kind = self.spec.get("type")
        if kind not in FIELDS:
            problem = "missing" if kind is None else f"unknown channel type {kind!r}"
            self.fail("type", problem, f"use one of: {', '.join(FIELDS)}")
        for key in self.spec:
            if key in _INLINE_SECRETS:
                self.fail(
                    key,
                    f"`{key}` is a secret and must not be in the file",
                    f"remove it, export it in an environment variable and set `{key}_env:` to that variable's name",
                )
            if key != "type" and key not in FIELDS[kind]:
                self.fail(key, "unknown setting", f"a {kind} channel takes: type, {', '.join(sorted(FIELDS[kind]))}")
        return kind

    def env(self, setting: str, required: bool = False) -> str | None:
        var = self.spec.get(setting)
        if var is None:
            if required:
                self.fail(setting, "missing", f"set `{setting}:` to the name of the environment variable that holds it")
            return None
        if not isinstance(var, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var):
            self.fail(setting, f"{var!r} is not an environment variable name", "write a name such as WECOM_ROBOT_URL")
        if var not in os.environ:
            self.fail(setting, f"environment variable {var} is not set", f"export {var}=... before starting")
        return os.environ[var]

    def url_env(self, setting: str) -> str:
        url = self.env(setting, required=True)
        if not url.startswith(("https://", "http://")):
            # Not echoed: the value is a secret.
            var = self.spec[setting]
            self.fail(
                setting,
                f"environment variable {var} does not hold an http(s) URL",
                f"set {var} to the full webhook URL, e.g. https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=...",
            )
        return url

    def webhook_url(self) -> str:
        if "url" in self.spec and "url_env" in self.spec:
            self.fail("url", "both `url` and `url_env` are set", "keep one of them")
        if "url_env" in self.spec:
            return self.url_env("url_env")
        url = self.spec.get("url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            self.fail(
                "url",
                "missing" if url is None else f"{url!r} is not an http(s) URL",
                "set `url: https://...`, or `url_env:` when the URL holds a token",
            )
        return url

    def text(self, setting: str, required: bool) -> str | None:
        value = self.spec.get(setting)
        if value is None:
            if required:
                self.fail(setting, "missing", f"set `{setting}:`")
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(setting, f"{value!r} is not text", f"write `{setting}:` as text")
        return value

    def strings(self, setting: str, example: str, required: bool = False) -> tuple[str, ...]:
        value = self.spec.get(setting)
        if value is None and not required:
            return ()
        # YAML reads an unquoted mobile number as an int; it is still a mobile number.
        names = isinstance(value, list) and all(isinstance(v, str | int) and not isinstance(v, bool) for v in value)
        if not names or not value:
            problem = "missing" if value is None else "is empty" if value == [] else f"{value!r} is not a list of names"
            self.fail(setting, problem, f"write a list, e.g. `{setting}: {example}`")
        return tuple(str(v) for v in value)

    def flag(self, setting: str) -> bool:
        value = self.spec.get(setting, False)
        if not isinstance(value, bool):
            self.fail(setting, f"{value!r} is not true or false", f"write `{setting}: true` or `{setting}: false`")
        return value

    def timeout(self) -> float:
        value = self.spec.get("timeout", f"{DEFAULT_TIMEOUT:g}s")
        try:
            seconds = parse_duration(value).total_seconds()
        except ValueError:
            seconds = 0.0
        if seconds <= 0:
            self.fail("timeout", f"{value!r} is not a duration", "write a number and a unit, e.g. 10s")
        return seconds

    def email(self, timeout: float) -> EmailChannel:
        starttls, implicit_tls = self.flag("starttls"), self.flag("ssl")
        if starttls and implicit_tls:
            self.fail(
                "ssl",
                "both `starttls` and `ssl` are set",
                "use `ssl: true` for port 465, or `starttls: true` for port 587, not both",
            )
        port = self.spec.get("port", 465 if implicit_tls else 587 if starttls else 25)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            self.fail("port", f"{port!r} is not a port number", "write a number such as 25, 465 or 587")
        username = self.text("username", required=False)
        password = self.env("password_env", required=username is not None)
        return EmailChannel(
            self.text("host", required=True),
            port,
            self.text("sender", required=True),
            self.strings("recipients", "[ops@example.com]", required=True),
            username,
            password,
            starttls,
            ssl=implicit_tls,
            name=self.name,
            timeout=timeout,
        )
