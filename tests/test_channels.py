"""Alert channels: payloads as a real loopback HTTP/SMTP server receives them, error answers
through httpx.MockTransport, retries with an injected sleep, byte limits, digests, budgets, config."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import hmac
import json
import logging
import socket
import socketserver
import threading
import urllib.parse
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import sqlalchemy as sa

from order_pipeline.alerts.channels import (
    TRUNCATED,
    AlertMessage,
    DingTalkRobot,
    EmailChannel,
    FeishuBot,
    JsonWebhook,
    OutboxChannel,
    RateBudget,
    SlackWebhook,
    WeComRobot,
    build_channel,
    deliver,
    digest,
    plan,
    truncate,
)
from order_pipeline.contract.config import ConfigError
from order_pipeline.contract.schema import alert_outbox, metadata

NOW = 1_764_000_000.123  # pinned clock for signatures
MSG = AlertMessage(
    title="支付超 2 小时未锁库",
    body_markdown="订单 **SO-1001** 已支付 2.5 小时，库存未锁定",
    body_text="订单 SO-1001 已支付 2.5 小时，库存未锁定",
    severity="critical",
    link="https://ops.example.com/order/SO-1001",
    keys=("paid_not_locked:SO-1001",),
)


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
        self.server.received.append(Received(self.path, self.headers, body))
        status, reply = self.server.reply
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


def mock(*answers: httpx.Response | Exception) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport answering in turn with `answers` (the last one repeats), recording requests."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers[min(len(seen), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handle), seen


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def sign_b64(key: bytes, msg: bytes) -> str:
    return base64.b64encode(hmac.new(key, msg, hashlib.sha256).digest()).decode()


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
    assert attempts[0].retryable and "45009" in attempts[0].error
    assert sleeps == [1.0] and len(seen) == 2


def test_wecom_invalid_key_is_not_retried_and_does_not_leak_the_key():
    transport, seen = mock(httpx.Response(200, json={"errcode": 93000, "errmsg": "invalid webhook url"}))
    sleeps = Sleeps()
    attempts = deliver(WeComRobot("https://qyapi.example/send?key=TOPSECRET", transport=transport), MSG, sleep=sleeps)
    (attempt,) = attempts
    assert not attempt.ok and not attempt.retryable
    assert "93000" in attempt.error and "TOPSECRET" not in attempt.error
    assert sleeps == [] and len(seen) == 1


def test_wecom_other_errcode_carries_errmsg():
    transport, _ = mock(httpx.Response(200, json={"errcode": 40058, "errmsg": "markdown.content exceed max length"}))
    (attempt,) = deliver(WeComRobot("https://x", transport=transport), MSG, sleep=Sleeps())
    assert not attempt.retryable and "40058" in attempt.error and "exceed max length" in attempt.error


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
    assert not attempt.ok and attempt.retryable and "130101" in attempt.error
    assert sleeps == [] and len(seen) == 1


def test_dingtalk_sign_error_is_not_retried():
    transport, _ = mock(httpx.Response(200, json={"errcode": 310000, "errmsg": "sign not match"}))
    (attempt,) = deliver(DingTalkRobot("https://x", "s", transport=transport), MSG, sleep=Sleeps())
    assert not attempt.retryable and "signing secret" in attempt.error


def test_feishu_sign_error_is_not_retried():
    answer = {"code": 19021, "data": {}, "msg": "sign match fail or timestamp is not within one hour from current time"}
    transport, seen = mock(httpx.Response(200, json=answer))
    (attempt,) = deliver(FeishuBot("https://x", "s", transport=transport), MSG, sleep=Sleeps())
    assert not attempt.retryable and "19021" in attempt.error and "server clock" in attempt.error
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


# --- digests and budgets -------------------------------------------------------------------------


def _burst(n: int) -> list[AlertMessage]:
    return [
        AlertMessage(
            f"订单 SO-{i:04d} 支付后未锁库",
            f"订单 **SO-{i:04d}** 已支付 {i} 小时，仓库尚未锁定库存。" * 3,
            f"订单 SO-{i:04d} 已支付 {i} 小时",
            mentions=("13800000000",) if i % 2 else ("lisi",),
            severity="critical" if i == 44 else "warning",
            keys=(f"r1:SO-{i:04d}",),
        )
        for i in range(n)
    ]


def test_digest_packs_every_order_within_the_limit():
    messages = _burst(45)
    limit = WeComRobot.max_bytes
    pieces = digest(messages, limit)
    assert 1 < len(pieces) < 45
    for piece in pieces:
        assert len(piece.body_markdown.encode()) <= limit and len(piece.body_text.encode()) <= limit
        assert piece.title.endswith("条告警汇总")
    everything = "".join(p.body_markdown for p in pieces)
    assert all(f"SO-{i:04d}" in everything for i in range(45))
    assert sum(int(p.title.split()[0]) for p in pieces) == 45
    assert [k for p in pieces for k in p.keys] == [m.keys[0] for m in messages]
    assert set(pieces[0].mentions) == {"13800000000", "lisi"}
    assert pieces[-1].severity == "critical"


def test_digest_of_one_and_without_limit():
    one = _burst(1)
    assert digest(one, 4096) == one
    (whole,) = digest(_burst(45), None)
    assert whole.title == "45 条告警汇总"


def test_digest_cuts_a_message_too_large_to_share():
    big = AlertMessage("大", "字" * 5000, "字" * 5000, keys=("k0",))
    pieces = digest([big, *_burst(2)], 1000)
    assert all(len(p.body_markdown.encode()) <= 1000 and len(p.body_text.encode()) <= 1000 for p in pieces)
    assert pieces[0].title == "大" and pieces[0].keys == ("k0",)
    assert pieces[0].body_markdown.endswith(TRUNCATED)


def test_rate_budget_sliding_window():
    now = [0.0]
    budget = RateBudget(20, clock=lambda: now[0])
    assert budget.available() == 20
    budget.record(15)
    now[0] = 30.0
    budget.record(5)
    assert budget.available() == 0
    now[0] = 59.9
    assert budget.available() == 0
    now[0] = 60.0  # the first 15 leave the window
    assert budget.available() == 15
    now[0] = 90.0
    assert budget.available() == 20


def test_plan_sends_as_is_within_budget_and_digests_beyond():
    now = [0.0]
    budget = RateBudget(20, clock=lambda: now[0])
    robot = WeComRobot("https://x")
    few = [m for m in _burst(10) if "lisi" in m.mentions]  # one post each
    assert plan(robot, few, budget) == few

    burst = _burst(45)
    budget.record(14)  # 6 posts left: digests with mobiles take 2 each
    batch = plan(robot, burst, budget)
    assert sum(robot.posts(p) for p in batch) <= 6
    assert all(p.title.endswith("条告警汇总") for p in batch)
    sent = {k for p in batch for k in p.keys}
    waiting = [m for m in burst if m.keys[0] not in sent]
    assert sent and waiting  # the rest waits for the next round, none is lost
    assert len(sent) + len(waiting) == 45

    budget.record(6)
    assert plan(robot, burst, budget) == []


def test_deliver_charges_the_budget_per_attempt():
    transport, _ = mock(httpx.Response(200, json={"errcode": 45009}), httpx.Response(200, json={"errcode": 0}))
    budget = RateBudget(20, clock=lambda: 0.0)
    deliver(WeComRobot("https://x", transport=transport), MSG, sleep=Sleeps(), budget=budget)
    assert budget.available() == 18


# --- e-mail against a small local SMTP server ----------------------------------------------------


class _SmtpHandler(socketserver.StreamRequestHandler):
    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self):
        self.reply("220 test ESMTP")
        mail_from, rcpts = None, []
        while line := self.rfile.readline():
            command = line.decode().rstrip("\r\n")
            verb = command.split(" ", 1)[0].upper()
            if verb == "EHLO":
                self.reply("250-test")
                self.reply("250 AUTH PLAIN")
            elif verb == "HELO":
                self.reply("250 test")
            elif verb == "AUTH":
                self.server.logins.append(base64.b64decode(command.split()[2]).split(b"\0")[1:])
                self.reply("235 accepted")
            elif verb == "MAIL":
                mail_from, rcpts = command.split(":", 1)[1], []
                self.reply("250 OK")
            elif verb == "RCPT":
                rcpts.append(command.split(":", 1)[1])
                self.reply(self.server.rcpt_reply)
            elif verb == "DATA":
                self.reply("354 end with .")
                lines = []
                while (data := self.rfile.readline()) != b".\r\n":
                    lines.append(data[1:] if data.startswith(b"..") else data)
                self.server.mails.append((mail_from, rcpts, b"".join(lines)))
                self.reply("250 queued")
            elif verb in ("RSET", "NOOP"):
                self.reply("250 OK")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("502 not implemented")


class SmtpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _SmtpHandler)
        self.mails: list[tuple[str, list[str], bytes]] = []
        self.logins: list[list[bytes]] = []
        self.rcpt_reply = "250 OK"


@pytest.fixture
def smtp():
    srv = SmtpServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_email_is_sent(smtp):
    port = smtp.server_address[1]
    channel = EmailChannel(
        "127.0.0.1", port, "alerts@example.com", ["ops@example.com", "wh@example.com"], username="alerts", password="pw"
    )
    channel.send(
        AlertMessage("库存不足", "md", "SKU-1 可用 3\n.leading dot", body_html="<p>SKU-1</p>", link="https://x")
    )
    ((mail_from, rcpts, data),) = smtp.mails
    assert mail_from == "<alerts@example.com>"
    assert rcpts == ["<ops@example.com>", "<wh@example.com>"]
    assert smtp.logins == [[b"alerts", b"pw"]]
    mail = email.message_from_bytes(data.replace(b"\r\n", b"\n"), policy=email.policy.default)
    assert mail["Subject"] == "[warning] 库存不足"
    assert mail["To"] == "ops@example.com, wh@example.com"
    assert mail.get_body(("plain",)).get_content() == "SKU-1 可用 3\n.leading dot\n\nhttps://x\n"
    assert mail.get_body(("html",)).get_content().strip() == "<p>SKU-1</p>"


@pytest.mark.parametrize("reply,retryable", [("451 try later", True), ("550 no such user", False)])
def test_email_refused_recipient(smtp, reply, retryable):
    smtp.rcpt_reply = reply
    channel = EmailChannel("127.0.0.1", smtp.server_address[1], "a@example.com", ["ops@example.com"])
    sleeps = Sleeps()
    attempts = deliver(channel, MSG, retries=1, sleep=sleeps)
    assert attempts[0].retryable is retryable and reply.split()[0] in attempts[0].error
    assert len(attempts) == (2 if retryable else 1)
    assert smtp.mails == []


def test_email_unreachable_server_is_retryable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    (attempt,) = deliver(
        EmailChannel("127.0.0.1", port, "a@example.com", ["b@example.com"], timeout=2), MSG, retries=0, sleep=Sleeps()
    )
    assert not attempt.ok and attempt.retryable


# --- outbox --------------------------------------------------------------------------------------


def test_outbox_writes_a_row_and_logs(caplog):
    engine = sa.create_engine("sqlite://")
    metadata.create_all(engine)
    with caplog.at_level(logging.INFO, logger="order_pipeline.alerts.channels"):
        (attempt,) = deliver(OutboxChannel(engine, name="demo", mentions=["ops"]), MSG, sleep=Sleeps())
    assert attempt.ok
    with engine.connect() as conn:
        (row,) = conn.execute(sa.select(alert_outbox)).mappings()
    assert (row["channel"], row["recipient"], row["title"], row["body"]) == (
        "demo",
        "ops",
        MSG.title,
        MSG.body_markdown,
    )
    assert MSG.title in caplog.text


def test_outbox_never_fails(caplog):
    engine = sa.create_engine("sqlite://")  # no tables
    with caplog.at_level(logging.INFO, logger="order_pipeline.alerts.channels"):
        OutboxChannel(engine).send(MSG)
    assert MSG.body_text in caplog.text and "could not write" in caplog.text


# --- configuration -------------------------------------------------------------------------------

CONFIG = "/etc/order_pipeline.yaml"


def test_build_channels(monkeypatch):
    monkeypatch.setenv("WECOM_URL", "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k")
    monkeypatch.setenv("DING_URL", "https://oapi.dingtalk.com/robot/send?access_token=t")
    monkeypatch.setenv("DING_SECRET", "SEC1")
    monkeypatch.setenv("SMTP_PASSWORD", "pw")
    engine = sa.create_engine("sqlite://")
    wecom = build_channel(
        "warehouse",
        {"type": "wecom", "webhook_url_env": "WECOM_URL", "mentions": [13800000000, "zhangsan"], "timeout": "5s"},
        engine,
        CONFIG,
    )
    assert isinstance(wecom, WeComRobot)
    assert (wecom.name, wecom.mentions, wecom._http.timeout) == ("warehouse", ("13800000000", "zhangsan"), 5.0)
    ding = build_channel(
        "ops", {"type": "dingtalk", "webhook_url_env": "DING_URL", "secret_env": "DING_SECRET"}, engine, CONFIG
    )
    assert isinstance(ding, DingTalkRobot) and ding._secret == "SEC1"
    hook = build_channel("bi", {"type": "webhook", "url": "https://bi.example.com/hook"}, engine, CONFIG)
    assert isinstance(hook, JsonWebhook)
    mail = build_channel(
        "mail",
        {
            "type": "email",
            "host": "smtp.example.com",
            "sender": "a@example.com",
            "recipients": ["b@example.com"],
            "username": "a",
            "password_env": "SMTP_PASSWORD",
            "ssl": True,
        },
        engine,
        CONFIG,
    )
    assert isinstance(mail, EmailChannel) and mail.port == 465 and mail._password == "pw"
    assert isinstance(build_channel("local", {"type": "outbox"}, engine, CONFIG), OutboxChannel)


@pytest.mark.parametrize(
    "spec,entry,words",
    [
        ({"type": "wechat"}, "channels.x.type", ["unknown channel type 'wechat'", "wecom, dingtalk"]),
        ({"webhook_url_env": "W"}, "channels.x.type", ["missing"]),
        (
            {"type": "wecom", "webhook_url_env": "WECOM_URL", "colour": "red"},
            "channels.x.colour",
            ["unknown setting", "webhook_url_env"],
        ),
        (
            {"type": "wecom", "webhook_url_env": "NOT_SET_ANYWHERE"},
            "channels.x.webhook_url_env",
            ["NOT_SET_ANYWHERE is not set", "export NOT_SET_ANYWHERE="],
        ),
        ({"type": "wecom"}, "channels.x.webhook_url_env", ["missing"]),
        (
            {"type": "wecom", "webhook_url": "https://qyapi.weixin.qq.com/...key=k"},
            "channels.x.webhook_url",
            ["secret", "webhook_url_env"],
        ),
        ({"type": "dingtalk", "webhook_url_env": "WECOM_URL", "secret": "s"}, "channels.x.secret", ["secret_env"]),
        (
            {"type": "wecom", "webhook_url_env": "BAD_URL"},
            "channels.x.webhook_url_env",
            ["BAD_URL does not hold an http(s) URL"],
        ),
        ({"type": "wecom", "webhook_url_env": "WECOM_URL", "timeout": "soon"}, "channels.x.timeout", ["10s"]),
        (
            {"type": "wecom", "webhook_url_env": "WECOM_URL", "mentions": "zhangsan"},
            "channels.x.mentions",
            ["write a list"],
        ),
        ({"type": "email", "host": "h", "sender": "a@b"}, "channels.x.recipients", ["missing"]),
        (
            {"type": "email", "host": "h", "sender": "a@b", "recipients": ["c@d"], "username": "u"},
            "channels.x.password_env",
            ["missing"],
        ),
        (
            {"type": "email", "host": "h", "sender": "a@b", "recipients": ["c@d"], "ssl": True, "starttls": True},
            "channels.x.ssl",
            ["not both"],
        ),
        ({"type": "webhook"}, "channels.x.url", ["missing"]),
        ("wecom", "channels.x", ["must be a mapping"]),
    ],
)
def test_build_channel_errors_name_file_entry_and_fix(monkeypatch, spec, entry, words):
    monkeypatch.setenv("WECOM_URL", "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k")
    monkeypatch.setenv("BAD_URL", "just-the-key")
    with pytest.raises(ConfigError) as info:
        build_channel("x", spec, sa.create_engine("sqlite://"), CONFIG)
    err = info.value
    assert err.file == CONFIG and err.entry == entry and err.fix
    for word in words:
        assert word in str(err)
    assert "just-the-key" not in str(err)
