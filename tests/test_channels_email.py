"""E-mail against a small local SMTP server: the mail as sent, refusals, an unreachable server."""

from __future__ import annotations

import base64
import email
import email.policy
import socket
import socketserver
import threading
from typing import cast

import pytest
from helpers import MSG, Sleeps

from order_pipeline.alerts.channels.delivery import deliver
from order_pipeline.alerts.channels.email import EmailChannel
from order_pipeline.alerts.channels.message import AlertMessage

# --- e-mail against a small local SMTP server ----------------------------------------------------


class _SmtpHandler(socketserver.StreamRequestHandler):
    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self):
        server = cast(SmtpServer, self.server)
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
                server.logins.append(base64.b64decode(command.split()[2]).split(b"\0")[1:])
                self.reply("235 accepted")
            elif verb == "MAIL":
                mail_from, rcpts = command.split(":", 1)[1], []
                self.reply("250 OK")
            elif verb == "RCPT":
                rcpts.append(command.split(":", 1)[1])
                self.reply(server.rcpt_reply)
            elif verb == "DATA":
                self.reply("354 end with .")
                lines = []
                while (data := self.rfile.readline()) != b".\r\n":
                    lines.append(data[1:] if data.startswith(b"..") else data)
                server.mails.append((mail_from, rcpts, b"".join(lines)))
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
        self.mails: list[tuple[str | None, list[str], bytes]] = []
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
    plain, html = mail.get_body(("plain",)), mail.get_body(("html",))
    assert plain is not None and html is not None
    assert plain.get_content() == "SKU-1 可用 3\n.leading dot\n\nhttps://x\n"
    assert html.get_content().strip() == "<p>SKU-1</p>"


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
