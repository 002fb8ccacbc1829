"""Aliyun SMS (阿里云短信) SendSms, API version 2017-05-25, signed with ACS3-HMAC-SHA256 (signature V3).

The request is a POST to `/` whose parameters travel in the query string and whose body is empty; the
signature covers the method, the path, the sorted query, the `host` and `x-acs-*` headers and the SHA-256
of the body. Aliyun answers JSON with a `Code` whatever the HTTP status: "OK" with a `BizId`, or an error
code that `classify` turns into a `Failure`. A number that refused messages (a carrier blacklist, "W-BLACK")
is only reported later in the delivery receipt; SendSms itself has no such code, so this channel never says
OPTED_OUT.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

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

DEFAULT_ENDPOINT = "https://dysmsapi.aliyuncs.com"
ACTION, VERSION = "SendSms", "2017-05-25"
ALGORITHM = "ACS3-HMAC-SHA256"
DEFAULT_TIMEOUT = 10.0

# Aliyun: a notification template's variable holds at most 35 characters unless the account has the limit
# lifted ("单个模板变量的长度可以超过默认的 35 字符上限", help.aliyun.com/zh/document_detail/3041859.html);
# a longer value is refused with isv.PARAM_LENGTH_LIMIT.
VARIABLE_MAX = 35

# Codes worth sending again in a later round: flow control (the default for notifications is 50 a day per
# signature + template + number), the account's own day/month caps, an empty balance (a top-up fixes it
# without touching the message), throttling and Aliyun's own failures. The clock and the credentials are
# the sender's to fix; the message itself is fine, so those wait too.
RETRY_CODES = frozenset(
    {
        "isv.BUSINESS_LIMIT_CONTROL",
        "isv.DAY_LIMIT_CONTROL",
        "isv.MONTH_LIMIT_CONTROL",
        "isv.AMOUNT_NOT_ENOUGH",
        "isv.OUT_OF_SERVICE",
        "isp.SYSTEM_ERROR",
        "isp.GATEWAY_ERROR",
        "InternalError",
        "ServiceUnavailable",
        "InvalidTimeStamp.Expired",
        "SignatureNonceUsed",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "InvalidAccessKeyId.NotFound",
        "InvalidAccessKeyId.Inactive",
        "isp.RAM_PERMISSION_DENY",
        "isv.ACCOUNT_NOT_EXISTS",
        "isv.PRODUCT_UN_SUBSCRIPT",
        "isv.PRODUCT_UNSUBSCRIBE",
    }
)
# Anything else (isv.MOBILE_NUMBER_ILLEGAL, isv.SMS_TEMPLATE_ILLEGAL, isv.SMS_SIGNATURE_ILLEGAL,
# isv.TEMPLATE_MISSING_PARAMETERS, isv.PARAM_LENGTH_LIMIT, isv.PARAM_NOT_SUPPORT_URL, isv.INVALID_JSON_PARAM,
# isv.BLACK_KEY_CONTROL_LIMIT: a blacklisted keyword in a variable ...) is the message's own fault: PERMANENT.
_HINTS = {
    "InvalidTimeStamp.Expired": "this machine's clock is more than 15 minutes off",
    "SignatureDoesNotMatch": "check the AccessKey secret",
    "IncompleteSignature": "check the AccessKey secret",
    "InvalidAccessKeyId.NotFound": "check the AccessKey id",
    "isv.AMOUNT_NOT_ENOUGH": "top up the account",
    "isv.OUT_OF_SERVICE": "top up the account",
    "isv.BUSINESS_LIMIT_CONTROL": "flow control",
}

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _random_nonce() -> str:
    return secrets.token_hex(16)


def percent_encode(text: str) -> str:
    """RFC 3986 encoding as V3 wants it: only A-Z a-z 0-9 - _ . ~ stay, a space is %20."""
    return quote(text, safe="-_.~")


def canonical_query(params: Mapping[str, str]) -> str:
    """Encoded names and values joined by = and &, sorted by encoded name."""
    pairs = sorted((percent_encode(k), percent_encode(v)) for k, v in params.items())
    return "&".join(f"{k}={v}" for k, v in pairs)


def authorization(
    access_key_id: str,
    access_key_secret: str,
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    body: bytes,
) -> str:
    """The Authorization header of a V3 request; `headers` are the `host` and `x-acs-*` headers it carries."""
    signed = {k.lower(): v.strip() for k, v in headers.items() if k.lower() == "host" or k.lower().startswith("x-acs-")}
    names = sorted(signed)
    canonical = "\n".join(
        [
            method.upper(),
            path or "/",
            canonical_query(query),
            "".join(f"{n}:{signed[n]}\n" for n in names),
            ";".join(names),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    to_sign = f"{ALGORITHM}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    signature = hmac.new(access_key_secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{ALGORITHM} Credential={access_key_id},SignedHeaders={';'.join(names)},Signature={signature}"


def classify(code: str, status: int) -> Failure:
    """The `Failure` an Aliyun error code (or, without one, an HTTP status) stands for."""
    if code in RETRY_CODES or code.startswith("Throttling") or code.startswith("isp.") or status >= 500:
        return Failure.RETRY_LATER
    return Failure.PERMANENT


class AliyunSms:
    """One customer SMS per call through Aliyun SendSms."""

    kind = "aliyun_sms"

    def __init__(
        self,
        access_key_id: str,
        access_key_secret: str,
        sign_name: str,
        *,
        name: str = "aliyun_sms",
        endpoint: str = DEFAULT_ENDPOINT,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        clock: Clock = _utc_now,
        nonce: Callable[[], str] = _random_nonce,
    ):
        self.name, self.sign_name = name, sign_name
        self._key_id, self._secret = access_key_id, access_key_secret
        self._endpoint = endpoint.rstrip("/")
        self._clock, self._nonce = clock, nonce
        self._http = httpx.Client(timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"AliyunSms(name={self.name!r}, endpoint={self._endpoint!r}, sign_name={self.sign_name!r})"

    def problem(self, msg: CustomerMessage) -> str | None:
        return sms_problem(msg, "Aliyun", VARIABLE_MAX)

    def request(self, msg: CustomerMessage) -> httpx.Request:
        """The signed SendSms request for `msg` (its phone already checked by `problem`)."""
        params = {
            "PhoneNumbers": mainland_mobile(msg.phone) or "",
            "SignName": self.sign_name,
            "TemplateCode": msg.template,
            "OutId": msg.key,
        }
        if msg.params:
            params["TemplateParam"] = json.dumps(dict(msg.params), ensure_ascii=False, separators=(",", ":"))
        body = b""
        headers = {
            "host": urlsplit(self._endpoint).netloc,
            "x-acs-action": ACTION,
            "x-acs-version": VERSION,
            "x-acs-date": self._clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "x-acs-signature-nonce": self._nonce(),
            "x-acs-content-sha256": hashlib.sha256(body).hexdigest(),
        }
        headers["Authorization"] = authorization(self._key_id, self._secret, "POST", "/", params, headers, body)
        # The URL carries the canonical query itself, so what is signed is byte for byte what is sent.
        return httpx.Request("POST", f"{self._endpoint}/?{canonical_query(params)}", headers=headers, content=body)

    def send(self, msg: CustomerMessage) -> Sent:
        reason = self.problem(msg)
        if reason:
            raise SendError(f"Aliyun SMS not sent: {reason}", failure=Failure.PERMANENT, code="invalid")
        to = mask_phone(msg.phone)
        resp = exchange(f"Aliyun SMS to {to}", self._http, self.request(msg))
        return _answer(resp, to)


def _answer(resp: httpx.Response, to: str) -> Sent:
    doc = json_object(resp)
    if doc is None:
        raise unreadable(f"Aliyun SMS to {to}", resp, "a JSON answer")
    code = str(doc.get("Code") or "")
    if code == "OK" and resp.status_code < 400:
        return Sent(str(doc.get("BizId")) if doc.get("BizId") else None)
    code = code or str(resp.status_code)
    # Aliyun's message may quote the request; numbers in it are masked all the same.
    text = mask_phones_in_text(str(doc.get("Message") or ""))[:200]
    hint = f" ({_HINTS[code]})" if code in _HINTS else ""
    raise SendError(
        f"Aliyun SMS to {to}: {code}{hint}: {text}",
        failure=classify(code, resp.status_code),
        code=code,
        retry_after=retry_after(resp),
    )
