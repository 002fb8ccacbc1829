"""Tencent Cloud SMS (腾讯云短信) SendSms, API version 2021-01-11, signed with TC3-HMAC-SHA256.

A JSON POST to `/`; the signature covers the method, the path, the `content-type` and `host` headers and
the SHA-256 of the body, under a key derived from the SecretKey, the UTC date and the service ("sms").
Tencent answers HTTP 200 whatever happened: `Response.Error` when the request itself was refused (the
signature, the clock, a parameter), else one `SendStatusSet` entry per number with its own `Code`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn
from urllib.parse import urlsplit

import httpx

from order_pipeline.domain.http_retry import retry_after
from order_pipeline.domain.masking import mask_phone, mask_phones_in_text
from order_pipeline.notify.channels.message import (
    CustomerMessage,
    Failure,
    SendError,
    Sent,
    exchange,
    json_object,
    mainland_mobile,
    sms_problem,
    unreadable,
)

DEFAULT_ENDPOINT = "https://sms.tencentcloudapi.com"
SERVICE, ACTION, VERSION = "sms", "SendSms", "2021-01-11"
ALGORITHM = "TC3-HMAC-SHA256"
CONTENT_TYPE = "application/json; charset=utf-8"
DEFAULT_TIMEOUT = 10.0

# Tencent: under an individually verified account "单个变量取值最多支持12个字" (every character counts one);
# an enterprise account has no per-variable limit, only 500 characters for the whole message
# (tencentcloud.com/zh/document/product/382/40653). Pass variable_max=None for an enterprise account.
VARIABLE_MAX = 12

# Codes worth sending again in a later round. AuthFailure.SignatureExpire is the clock (more than five
# minutes off); other AuthFailure codes are the credentials: the message is fine, so both wait.
_RETRY_PREFIXES = ("LimitExceeded.", "InternalError", "AuthFailure.", "RequestLimitExceeded", "ResourceUnavailable")
_RETRY_CODES = frozenset({"FailedOperation.InsufficientBalanceInSmsPackage", "FailedOperation.JsonParseFail"})
OPTED_OUT_CODES = frozenset({"FailedOperation.PhoneNumberInBlacklist"})  # the customer unsubscribed or complained
_HINTS = {
    "AuthFailure.SignatureExpire": "this machine's clock is more than 5 minutes off",
    "AuthFailure.SignatureFailure": "check the SecretKey",
    "AuthFailure.SecretIdNotFound": "check the SecretId",
    "FailedOperation.PhoneNumberInBlacklist": "the number is on the do-not-disturb list",
    "FailedOperation.InsufficientBalanceInSmsPackage": "top up the SMS package",
}

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def signing_key(secret_key: str, date: str, service: str) -> bytes:
    """kDate = HMAC("TC3" + SecretKey, date) -> kService = HMAC(kDate, service) -> HMAC(kService, "tc3_request")."""
    k_date = hmac.new(f"TC3{secret_key}".encode(), date.encode(), hashlib.sha256).digest()
    k_service = hmac.new(k_date, service.encode(), hashlib.sha256).digest()
    return hmac.new(k_service, b"tc3_request", hashlib.sha256).digest()


def authorization(
    secret_id: str, secret_key: str, service: str, host: str, content_type: str, payload: bytes, timestamp: int
) -> str:
    """The Authorization header of a TC3 POST signing `content-type` and `host`."""
    canonical = "\n".join(
        [
            "POST",
            "/",
            "",  # a POST has no query string
            f"content-type:{content_type.strip().lower()}\nhost:{host.strip().lower()}\n",
            "content-type;host",
            hashlib.sha256(payload).hexdigest(),
        ]
    )
    # The date is UTC's, not the local one: at 00:30 in Shanghai it is still yesterday in UTC.
    date = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")
    scope = f"{date}/{service}/tc3_request"
    to_sign = f"{ALGORITHM}\n{timestamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    signature = hmac.new(signing_key(secret_key, date, service), to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{ALGORITHM} Credential={secret_id}/{scope}, SignedHeaders=content-type;host, Signature={signature}"


def classify(code: str) -> Failure:
    """The `Failure` a Tencent error code stands for."""
    if code in OPTED_OUT_CODES:
        return Failure.OPTED_OUT
    if code in _RETRY_CODES or code.startswith(_RETRY_PREFIXES):
        return Failure.RETRY_LATER
    return Failure.PERMANENT


class TencentSms:
    """One customer SMS per call through Tencent Cloud SendSms."""

    kind = "tencent_sms"

    def __init__(
        self,
        secret_id: str,
        secret_key: str,
        sdk_app_id: str,
        sign_name: str,
        region: str = "ap-guangzhou",
        *,
        name: str = "tencent_sms",
        endpoint: str = DEFAULT_ENDPOINT,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        clock: Clock = _utc_now,
        variable_max: int | None = VARIABLE_MAX,
    ):
        self.name, self.sdk_app_id, self.sign_name, self.region = name, sdk_app_id, sign_name, region
        self._secret_id, self._secret_key = secret_id, secret_key
        self._endpoint = endpoint.rstrip("/")
        self._clock = clock
        self._http = httpx.Client(timeout=timeout, transport=transport)
        self.variable_max = variable_max

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"TencentSms(name={self.name!r}, endpoint={self._endpoint!r}, sdk_app_id={self.sdk_app_id!r})"

    def problem(self, msg: CustomerMessage) -> str | None:
        return sms_problem(msg, "Tencent Cloud", self.variable_max)

    def request(self, msg: CustomerMessage) -> httpx.Request:
        """The signed SendSms request for `msg` (its phone already checked by `problem`)."""
        body = {
            "PhoneNumberSet": [f"+86{mainland_mobile(msg.phone) or ''}"],
            "SmsSdkAppId": self.sdk_app_id,
            "SignName": self.sign_name,
            "TemplateId": msg.template,
            "TemplateParamSet": [value for _, value in msg.params],
            "SessionContext": msg.key,
        }
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        host = urlsplit(self._endpoint).netloc
        timestamp = int(self._clock().timestamp())
        headers = {
            "Authorization": authorization(
                self._secret_id, self._secret_key, SERVICE, host, CONTENT_TYPE, payload, timestamp
            ),
            "Content-Type": CONTENT_TYPE,
            "Host": host,
            "X-TC-Action": ACTION,
            "X-TC-Version": VERSION,
            "X-TC-Timestamp": str(timestamp),
            "X-TC-Region": self.region,
        }
        return httpx.Request("POST", f"{self._endpoint}/", headers=headers, content=payload)

    def send(self, msg: CustomerMessage) -> Sent:
        reason = self.problem(msg)
        if reason:
            raise SendError(f"Tencent SMS not sent: {reason}", failure=Failure.PERMANENT, code="invalid")
        to = mask_phone(msg.phone)
        resp = exchange(f"Tencent SMS to {to}", self._http, self.request(msg))
        return _answer(resp, to)


def _answer(resp: httpx.Response, to: str) -> Sent:
    doc = json_object(resp)
    answer: Any = doc.get("Response") if doc is not None else None
    if not isinstance(answer, dict):
        raise unreadable(f"Tencent SMS to {to}", resp, "a Response")
    error = answer.get("Error")
    if isinstance(error, dict):
        _raise(str(error.get("Code") or "Error"), error.get("Message"), to, resp)
    statuses = answer.get("SendStatusSet")
    status = statuses[0] if isinstance(statuses, list) and statuses and isinstance(statuses[0], dict) else None
    if status is None:
        failure = Failure.RETRY_LATER if resp.status_code >= 500 else Failure.PERMANENT
        raise SendError(f"Tencent SMS to {to}: no SendStatusSet in the answer", failure=failure, code="no_status")
    code = str(status.get("Code") or "")
    if code == "Ok":
        return Sent(str(status.get("SerialNo")) if status.get("SerialNo") else None)
    _raise(code or "no_code", status.get("Message"), to, resp)


def _raise(code: str, message: Any, to: str, resp: httpx.Response) -> NoReturn:
    # Tencent's message may quote the number; it is masked all the same.
    text = mask_phones_in_text(str(message or ""))[:200]
    hint = f" ({_HINTS[code]})" if code in _HINTS else ""
    raise SendError(
        f"Tencent SMS to {to}: {code}{hint}: {text}", failure=classify(code), code=code, retry_after=retry_after(resp)
    )
