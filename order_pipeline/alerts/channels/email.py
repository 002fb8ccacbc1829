"""E-mail over SMTP."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from order_pipeline.alerts.channels.message import DEFAULT_TIMEOUT, AlertMessage, Channel, ChannelError


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

    def endpoint(self) -> tuple[str, int] | None:
        return self.host, self.port

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
