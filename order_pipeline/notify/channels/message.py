"""What every customer channel shares: the message, what sending it gave, and the ways it can fail.

A channel sends one message per call and says how it failed in terms the ledger can act on
(`Failure`), whatever the vendor's own code; the vendor's code travels with it for the record.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import httpx

from order_pipeline.domain.http_retry import retry_after


@dataclass(frozen=True)
class CustomerMessage:
    key: str  # the ledger's key for (order, event): sent along where the vendor keeps one (Aliyun OutId)
    template: str  # Aliyun TemplateCode (SMS_…), Tencent TemplateId, WeChat template_id
    params: tuple[tuple[str, str], ...]  # the template's parameters in its order: (name, value)
    phone: str | None = None  # mainland mobile, 11 digits, no +86
    openid: str | None = None  # the customer's openid under the company's Official Account
    url: str | None = None  # the tracking link (a WeChat message opens it; an SMS carries it in a parameter)


# A mainland mobile number: 1, then 3-9, then nine digits. The country code and the spaces or dashes people
# type between the groups are dropped before the check.
_MAINLAND_MOBILE = re.compile(r"1[3-9]\d{9}")
_SEPARATORS = re.compile(r"[\s\-]")


def mainland_mobile(phone: str | None) -> str | None:
    """`phone` as 11 digits when it is a mainland mobile number ("+86 138-1234-5678" -> "13812345678"), else None."""
    digits = _SEPARATORS.sub("", phone or "")
    for prefix in ("+86", "0086", "86"):
        if digits.startswith(prefix) and len(digits) == len(prefix) + 11:
            digits = digits[len(prefix) :]
            break
    return digits if _MAINLAND_MOBILE.fullmatch(digits) else None


class Failure(StrEnum):
    RETRY_LATER = "retry_later"  # flow control, a server error, a timeout: the same message may go in a later round
    PERMANENT = "permanent"  # a bad number, template or parameter: recorded, never sent again as it is
    OPTED_OUT = "opted_out"  # the vendor says the number refused messages: the number is suppressed
    UNREACHABLE = "unreachable"  # this channel cannot reach this customer (no openid, not a follower): try the next


class SendError(Exception):
    """A vendor refused a message or could not be reached. The text never carries a secret or a full number."""

    def __init__(self, message: str, *, failure: Failure, code: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.failure, self.code, self.retry_after = failure, code, retry_after


@dataclass(frozen=True)
class Sent:
    provider_id: str | None  # Aliyun BizId, Tencent SerialNo, WeChat msgid


class CustomerChannel(Protocol):
    name: str  # the config's name for it
    kind: str  # aliyun_sms | tencent_sms | wechat | outbox

    def problem(self, msg: CustomerMessage) -> str | None:
        """Why `msg` cannot go through this channel as it is (no valid mobile, no openid, a parameter
        over the vendor's length limit), checked before anything is sent; None when it can."""
        ...

    def send(self, msg: CustomerMessage) -> Sent:
        """Send `msg` once; raises SendError saying which `Failure` it was."""
        ...

    def close(self) -> None:
        """Close the channel's connections."""
        ...


def sms_problem(msg: CustomerMessage, vendor: str, variable_max: int | None) -> str | None:
    """What stops `msg` going as an SMS: no mainland mobile, no template, a parameter longer than the vendor allows.

    Lengths are counted in characters, as both vendors count them (a Chinese character, a letter, a digit, a
    punctuation mark or a space is one)."""
    if not msg.phone:
        return "no mobile number"
    if mainland_mobile(msg.phone) is None:
        return "not a mainland mobile number"
    if not msg.template.strip():
        return "no template"
    if variable_max is not None:
        for name, value in msg.params:
            if len(value) > variable_max:
                return f"parameter {name} has {len(value)} characters, {vendor} allows {variable_max}"
    return None


def exchange(what: str, client: httpx.Client, request: httpx.Request) -> httpx.Response:
    """Send `request` once through the channel's `client` (one per channel, so its connections are
    reused across messages). No answer in time, or no connection, is a SendError worth another
    round; `what` names the call in its text ("Aliyun SMS to 138****1234"), since the URL may carry a token."""
    try:
        return client.send(request)
    except httpx.TimeoutException:
        seconds = client.timeout.read
        raise SendError(
            f"{what}: no answer within {seconds:g} s", failure=Failure.RETRY_LATER, code="timeout"
        ) from None
    except httpx.TransportError as e:
        host = request.url.host
        raise SendError(
            f"{what}: cannot reach {host} ({type(e).__name__})", failure=Failure.RETRY_LATER, code="transport"
        ) from None


def json_object(resp: httpx.Response) -> dict | None:
    """The answer's JSON object, or None when it is not one (a proxy's error page, an empty body)."""
    try:
        doc = resp.json()
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def unreadable(what: str, resp: httpx.Response, missing: str) -> SendError:
    """An answer without the vendor's own shape: worth another round when the server faulted or throttled."""
    again = resp.status_code >= 500 or resp.status_code == 429
    return SendError(
        f"{what}: HTTP {resp.status_code} without {missing}",
        failure=Failure.RETRY_LATER if again else Failure.PERMANENT,
        code=str(resp.status_code),
        retry_after=retry_after(resp),
    )
