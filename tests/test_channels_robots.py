"""HTTP channels: payloads as a real loopback HTTP server receives them, error answers through
httpx.MockTransport, retries with an injected sleep, and the platforms' byte limits."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import urllib.parse
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import cast

import httpx
import pytest
from helpers import MSG, Sleeps, mock

from order_pipeline.alerts.channels.delivery import Attempt, deliver
from order_pipeline.alerts.channels.dingtalk import DingTalkRobot
from order_pipeline.alerts.channels.feishu import FeishuBot
from order_pipeline.alerts.channels.message import TRUNCATED, AlertMessage, truncate
from order_pipeline.alerts.channels.slack import SlackWebhook
from order_pipeline.alerts.channels.webhook import JsonWebhook
from order_pipeline.alerts.channels.wecom import WeComRobot

NOW = 1_764_000_000.123  # pinned clock for signatures


# --- a loopback HTTP server that records what it receives ---------------------------------------


@dataclass
class Received:
    path: str
    headers: Message
    body: bytes

    @property
    def query(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))

    def json(self):
        return json.loads(self.body)


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server = cast(Recorder, self.server)
        server.received.append(Received(self.path, self.headers, body))
        status, reply = server.reply
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if reply.startswith(b"{") else "text/plain")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


class Recorder(ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[Received] = []
        self.reply = (200, b'{"errcode": 0, "errmsg": "ok"}')

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture
def server():
    srv = Recorder()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def sign_b64(key: bytes, msg: bytes) -> str:
    return base64.b64encode(hmac.new(key, msg, hashlib.sha256).digest()).decode()


def error(attempt: Attempt) -> str:
    """The error text of a failed attempt."""
    assert attempt.error is not None
    return attempt.error


# --- payloads on the wire ------------------------------------------------------------------------


def test_wecom_markdown_with_user_mentions(server):
    robot = WeComRobot(server.url("/cgi-bin/webhook/send?key=K1"), mentions=["zhangsan"])
    robot.send(MSG)
    (req,) = server.received
    assert req.query == {"key": "K1"}
    assert req.headers["Content-Type"] == "application/json"
    body = req.json()
    assert body["msgtype"] == "markdown"
    content = body["markdown"]["content"]
    assert content.startswith(f"**{MSG.title}**\n{MSG.body_markdown}")
    assert f"[查看详情]({MSG.link})" in content
    assert content.endswith("<@zhangsan>")


def test_wecom_mobile_mentions_follow_with_a_text_message(server):
    robot = WeComRobot(server.url("/send?key=K1"), mentions=["13800000000"])
    msg = AlertMessage("库存不足", "SKU-1 可用 3 < 安全库存 10", "SKU-1 可用 3", mentions=("lisi", "13900000000"))
    assert robot.posts(msg) == 2
    robot.send(msg)
    markdown, text = (r.json() for r in server.received)
    assert markdown["msgtype"] == "markdown"
    assert markdown["markdown"]["content"].endswith("<@lisi>")
    assert text == {
        "msgtype": "text",
        "text": {"content": "库存不足", "mentioned_mobile_list": ["13800000000", "13900000000"]},
    }
    assert robot.posts(AlertMessage("t", "b", "b")) == 2  # the channel's own mobile is on every message
    assert WeComRobot("http://x").posts(AlertMessage("t", "b", "b", mentions=("lisi",))) == 1


def test_dingtalk_signed_markdown(server):
    secret = "SEC0123456789abcdef"
    robot = DingTalkRobot(
        server.url("/robot/send?access_token=T1"), secret, clock=lambda: NOW, mentions=["13800000000"]
    )
    robot.send(MSG)
    (req,) = server.received
    timestamp = str(int(NOW * 1000))
    assert req.query["access_token"] == "T1"
    assert req.query["timestamp"] == timestamp
    assert req.query["sign"] == sign_b64(secret.encode(), f"{timestamp}\n{secret}".encode())
    # The sign travels URL-quoted: base64's + / = are escaped on the wire.
    assert "sign=" + urllib.parse.quote_plus(req.query["sign"]) in req.path
    body = req.json()
    assert body["msgtype"] == "markdown"
    assert body["markdown"]["title"] == MSG.title
    assert body["markdown"]["text"].startswith(f"### {MSG.title}\n\n{MSG.body_markdown}")
    assert body["markdown"]["text"].endswith("@13800000000")
    assert body["at"] == {"atMobiles": ["13800000000"], "atUserIds": [], "isAtAll": False}


def test_dingtalk_unsigned_leaves_the_url_alone(server):
    DingTalkRobot(server.url("/robot/send?access_token=T1")).send(MSG)
    assert server.received[0].query == {"access_token": "T1"}


def test_feishu_signed_card(server):
    secret = "fs-secret"
    server.reply = (200, b'{"code": 0, "msg": "success", "data": {}}')
    bot = FeishuBot(server.url("/open-apis/bot/v2/hook/H1"), secret, clock=lambda: NOW, mentions=["ou_abc"])
    bot.send(MSG)
    body = server.received[0].json()
    assert body["timestamp"] == str(int(NOW))
    assert body["sign"] == sign_b64(f"{int(NOW)}\n{secret}".encode(), b"")
    assert body["msg_type"] == "interactive"
    assert body["card"]["header"] == {"title": {"tag": "plain_text", "content": MSG.title}, "template": "red"}
    (element,) = body["card"]["elements"]
    assert element["tag"] == "markdown"
    assert element["content"].startswith(MSG.body_markdown)
    assert element["content"].endswith("<at id=ou_abc></at>")


def test_feishu_old_status_code_answer_is_ok(server):
    server.reply = (200, b'{"Extra": null, "StatusCode": 0, "StatusMessage": "success"}')
    FeishuBot(server.url("/hook")).send(MSG)
    assert "sign" not in server.received[0].json()


def test_slack_text(server):
    server.reply = (200, b"ok")
    msg = AlertMessage("a < b & c", "ignored", "line one\nline <two>", mentions=("U123",), link="https://x/y")
    SlackWebhook(server.url("/services/T/B/X")).send(msg)
    assert server.received[0].json() == {
        "text": "*a &lt; b &amp; c*\nline one\nline &lt;two&gt;\n<https://x/y|查看详情>\n<@U123>"
    }


def test_json_webhook_signature(server):
    server.reply = (204, b"")
    JsonWebhook(server.url("/hooks/alerts"), "whsec", clock=lambda: NOW).send(MSG)
    (req,) = server.received
    assert req.headers["X-Timestamp"] == str(int(NOW))
    assert req.headers["X-Signature"] == "sha256=" + hmac.new(b"whsec", req.body, hashlib.sha256).hexdigest()
    doc = req.json()
    assert doc["title"] == MSG.title and doc["body_text"] == MSG.body_text and doc["severity"] == "critical"
    assert doc["keys"] == ["paid_not_locked:SO-1001"]
    assert doc["sent_at"] == "2025-11-24T16:00:00.123000+00:00"


# --- error answers and retries -------------------------------------------------------------------


def test_wecom_rate_limit_is_retried_then_ok():
    transport, seen = mock(
        httpx.Response(200, json={"errcode": 45009, "errmsg": "api freq out of limit"}),
        httpx.Response(200, json={"errcode": 0, "errmsg": "ok"}),
    )
    sleeps = Sleeps()
    attempts = deliver(WeComRobot("https://qyapi.example/send?key=K", transport=transport), MSG, sleep=sleeps)
    assert [a.ok for a in attempts] == [False, True]
    assert attempts[0].retryable and "45009" in error(attempts[0])
    assert sleeps == [1.0] and len(seen) == 2


def test_wecom_invalid_key_is_not_retried_and_does_not_leak_the_key():
    transport, seen = mock(httpx.Response(200, json={"errcode": 93000, "errmsg": "invalid webhook url"}))
    sleeps = Sleeps()
    attempts = deliver(WeComRobot("https://qyapi.example/send?key=TOPSECRET", transport=transport), MSG, sleep=sleeps)
    (attempt,) = attempts
    assert not attempt.ok and not attempt.retryable
    assert "93000" in error(attempt) and "TOPSECRET" not in error(attempt)
    assert sleeps == [] and len(seen) == 1


def test_wecom_other_errcode_carries_errmsg():
    transport, _ = mock(httpx.Response(200, json={"errcode": 40058, "errmsg": "markdown.content exceed max length"}))
    (attempt,) = deliver(WeComRobot("https://x", transport=transport), MSG, sleep=Sleeps())
    assert not attempt.retryable and "40058" in error(attempt) and "exceed max length" in error(attempt)


def test_backoff_doubles_until_retries_run_out():
    transport, seen = mock(httpx.Response(503, text="busy"))
    sleeps = Sleeps()
    attempts = deliver(WeComRobot("https://x", transport=transport), MSG, retries=3, backoff=0.5, sleep=sleeps)
    assert len(attempts) == 4 and not any(a.ok for a in attempts) and attempts[-1].retryable
    assert sleeps == [0.5, 1.0, 2.0] and len(seen) == 4


def test_timeout_is_retryable():
    transport, _ = mock(httpx.ReadTimeout("timed out"), httpx.Response(200, json={"errcode": 0}))
    attempts = deliver(WeComRobot("https://x", timeout=2, transport=transport), MSG, sleep=Sleeps())
    assert [a.ok for a in attempts] == [False, True]
    assert attempts[0].error == "no answer within 2 s"


def test_dingtalk_throttle_waits_for_the_next_round():
    transport, seen = mock(
        httpx.Response(200, json={"errcode": 130101, "errmsg": "send too fast, exceed 20 times per minute"})
    )
    sleeps = Sleeps()
    (attempt,) = deliver(
        DingTalkRobot("https://oapi.example/robot/send?access_token=T", transport=transport), MSG, sleep=sleeps
    )
    # Muted for 10 minutes: retrying within this call would only extend it.
    assert not attempt.ok and attempt.retryable and "130101" in error(attempt)
    assert sleeps == [] and len(seen) == 1


def test_dingtalk_sign_error_is_not_retried():
    transport, _ = mock(httpx.Response(200, json={"errcode": 310000, "errmsg": "sign not match"}))
    (attempt,) = deliver(DingTalkRobot("https://x", "s", transport=transport), MSG, sleep=Sleeps())
    assert not attempt.retryable and "signing secret" in error(attempt)


def test_feishu_sign_error_is_not_retried():
    answer = {"code": 19021, "data": {}, "msg": "sign match fail or timestamp is not within one hour from current time"}
    transport, seen = mock(httpx.Response(200, json=answer))
    (attempt,) = deliver(FeishuBot("https://x", "s", transport=transport), MSG, sleep=Sleeps())
    assert not attempt.retryable and "19021" in error(attempt) and "server clock" in error(attempt)
    assert len(seen) == 1


def test_feishu_rate_limit_is_retried():
    transport, _ = mock(
        httpx.Response(200, json={"code": 11232, "msg": "frequency limited"}),
        httpx.Response(200, json={"code": 0, "msg": "success"}),
    )
    assert [a.ok for a in deliver(FeishuBot("https://x", transport=transport), MSG, sleep=Sleeps())] == [False, True]


def test_feishu_gateway_429_uses_its_reset_header():
    transport, _ = mock(
        httpx.Response(429, headers={"x-ogw-ratelimit-reset": "4"}, json={"code": 99991400}),
        httpx.Response(200, json={"code": 0}),
    )
    sleeps = Sleeps()
    deliver(FeishuBot("https://x", transport=transport), MSG, sleep=sleeps)
    assert sleeps == [4.0]


def test_slack_429_retry_after_is_honoured():
    transport, _ = mock(
        httpx.Response(429, headers={"Retry-After": "7"}, text="rate_limited"), httpx.Response(200, text="ok")
    )
    sleeps = Sleeps()
    attempts = deliver(SlackWebhook("https://hooks.example/services/T/B/X", transport=transport), MSG, sleep=sleeps)
    assert [a.ok for a in attempts] == [False, True] and sleeps == [7.0]


@pytest.mark.parametrize("status,answer", [(400, "invalid_payload"), (403, "action_prohibited"), (404, "no_service")])
def test_slack_refusals_are_not_retried(status, answer):
    transport, seen = mock(httpx.Response(status, text=answer))
    (attempt,) = deliver(SlackWebhook("https://x", transport=transport), MSG, sleep=Sleeps())
    assert not attempt.retryable and answer in attempt.error and len(seen) == 1


def test_json_webhook_500_then_200():
    transport, seen = mock(httpx.Response(500, text="boom"), httpx.Response(200))
    attempts = deliver(JsonWebhook("https://x", "s", transport=transport), MSG, sleep=Sleeps())
    assert [a.ok for a in attempts] == [False, True]
    assert [json.loads(r.content)["title"] for r in seen] == [MSG.title, MSG.title]


def test_json_webhook_4xx_is_not_retried():
    transport, _ = mock(httpx.Response(422, text="bad"))
    (attempt,) = deliver(JsonWebhook("https://x", transport=transport), MSG, sleep=Sleeps())
    assert not attempt.retryable and attempt.error == "HTTP 422: bad"


def test_retry_after_beyond_max_delay_is_not_slept():
    transport, _ = mock(httpx.Response(429, headers={"Retry-After": "120"}))
    sleeps = Sleeps()
    (attempt,) = deliver(SlackWebhook("https://x", transport=transport), MSG, sleep=sleeps, max_delay=30)
    assert attempt.retryable and sleeps == []


# --- byte limits ---------------------------------------------------------------------------------


def test_truncate_on_character_boundaries():
    marker = len(TRUNCATED.encode())
    exact = "中" * 1365 + "a"  # 4096 bytes
    assert truncate(exact, 4096) == exact
    cut = truncate(exact + "b", 4096)
    # 4096 - marker = 4082 bytes of room = 1360 characters of 3 bytes and 2 bytes that cannot hold one.
    assert cut == "中" * 1360 + TRUNCATED
    assert len(cut.encode()) == 1360 * 3 + marker
    for limit in range(marker, marker + 7):
        out = truncate("中文" * 10, limit).encode()
        assert len(out) <= limit
        out.decode()  # whole characters only
    assert truncate("中文", 4) == "中"  # no room for the marker


@pytest.mark.parametrize(
    "body,expected",
    [
        ("中" * 1363 + "x", "中" * 1363 + "x"),  # with the 6-byte title line: exactly 4096 bytes
        ("中" * 1363 + "xy", "中" * 1358 + TRUNCATED),  # 4097 bytes
        ("中" * 1364, "中" * 1358 + TRUNCATED),  # 4098 bytes, the last character straddling the limit
    ],
)
def test_wecom_markdown_at_the_byte_limit(server, body, expected):
    WeComRobot(server.url("/send")).send(AlertMessage("T", body, body))
    content = server.received[0].json()["markdown"]["content"]
    assert content == "**T**\n" + expected
    assert len(content.encode()) <= WeComRobot.MARKDOWN_BYTES


def test_wecom_truncation_keeps_the_mentions(server):
    body = "长" * 3000
    WeComRobot(server.url("/send")).send(AlertMessage("T", body, body, mentions=("wangwu",)))
    content = server.received[0].json()["markdown"]["content"]
    assert len(content.encode()) <= 4096
    assert content.endswith(TRUNCATED + "\n<@wangwu>")
