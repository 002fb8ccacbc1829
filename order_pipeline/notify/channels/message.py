"""What every customer channel shares: the message, what sending it gave, and the ways it can fail.

A channel sends one message per call and says how it failed in terms the ledger can act on
(`Failure`), whatever the vendor's own code; the vendor's code travels with it for the record.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


@dataclass(frozen=True)
class CustomerMessage:
    key: str  # the ledger's key for (order, event): sent along where the vendor keeps one (Aliyun OutId)
    template: str  # Aliyun TemplateCode (SMS_…), Tencent TemplateId, WeChat template_id
    params: tuple[tuple[str, str], ...]  # the template's parameters in its order: (name, value)
    phone: str | None = None  # mainland mobile, 11 digits, no +86
    openid: str | None = None  # the customer's openid under the company's Official Account
    url: str | None = None  # the tracking link (a WeChat message opens it; an SMS carries it in a parameter)


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
