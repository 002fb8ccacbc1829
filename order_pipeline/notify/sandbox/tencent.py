"""A stand-in for Tencent Cloud SMS SendSms (2021-01-11) that checks TC3-HMAC-SHA256 signatures as Tencent does.

`tencent_app(...)` returns the Starlette app and its `TencentSandbox`: `accepted` lists what went through,
`flow_controlled` and `blacklisted` script per-number answers, and a number sent the same template more than
`daily_cap` times in 24 hours gets LimitExceeded.PhoneNumberDailyLimit. Every answer is HTTP 200, refusals of
the request in `Response.Error`, per-number results in `Response.SendStatusSet`, as with Tencent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

CLOCK_SKEW = 300  # seconds: a request timestamp further off fails with AuthFailure.SignatureExpire
DAILY_CAP = 10  # messages of one template to one number in 24 hours before LimitExceeded.PhoneNumberDailyLimit
_MOBILE = re.compile(r"\+861[3-9][0-9]{9}")
_AUTH = re.compile(
    r"TC3-HMAC-SHA256 Credential=([^/]+)/(\d{4}-\d{2}-\d{2})/([a-z]+)/tc3_request, "
    r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})"
)


@dataclass
class TencentSandbox:
    secret_id: str
    secret_key: str
    sdk_app_id: str
    clock: Callable[[], datetime]
    daily_cap: int = DAILY_CAP
    flow_controlled: set[str] = field(default_factory=set)  # 11-digit numbers answered LimitExceeded.*
    blacklisted: set[str] = field(default_factory=set)  # 11-digit numbers on the do-not-disturb list
    accepted: list[dict[str, Any]] = field(default_factory=list)
    sent_at: dict[tuple[str, str], list[datetime]] = field(default_factory=dict)  # (number, template): times

    def answer(self, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        """Tencent's JSON answer to one POST; `headers` with lower-case names."""
        refused = self._authenticate(headers, body)
        if refused:
            return _error(*refused)
        if headers.get("x-tc-action") != "SendSms":
            return _error("InvalidAction", "The requested action does not exist.")
        if headers.get("x-tc-version") != "2021-01-11":
            return _error("InvalidParameter", "The requested version is not supported.")
        try:
            request = json.loads(body)
        except ValueError:
            return _error("FailedOperation.FailResolvePacket", "The request body cannot be parsed.")
        if not isinstance(request, dict):
            return _error("FailedOperation.FailResolvePacket", "The request body cannot be parsed.")
        if request.get("SmsSdkAppId") != self.sdk_app_id:
            return _error("InvalidParameterValue.SdkAppIdNotExist", "The SdkAppId does not exist.")
        if not request.get("TemplateId"):
            return _error("MissingParameter", "The parameter TemplateId is missing.")
        numbers = request.get("PhoneNumberSet")
        if not isinstance(numbers, list) or not numbers:
            return _error("MissingParameter", "The parameter PhoneNumberSet is missing.")
        return {"Response": {"SendStatusSet": [self._send(str(n), request) for n in numbers], "RequestId": _id()}}

    def _authenticate(self, headers: dict[str, str], body: bytes) -> tuple[str, str] | None:
        match = _AUTH.fullmatch(headers.get("authorization", ""))
        if match is None:
            return "AuthFailure.InvalidAuthorization", "The Authorization header does not conform to the standard."
        secret_id, date, service, signed_headers, signature = match.groups()
        names = signed_headers.split(";")
        if "content-type" not in names or "host" not in names or any(n not in headers for n in names):
            return "AuthFailure.InvalidAuthorization", "The Authorization header does not conform to the standard."
        if secret_id != self.secret_id:
            return "AuthFailure.SecretIdNotFound", "The SecretId is not found."
        try:
            timestamp = int(headers.get("x-tc-timestamp", ""))
        except ValueError:
            return "AuthFailure.SignatureExpire", "The X-TC-Timestamp header is missing or not a number."
        if abs(self.clock().timestamp() - timestamp) > CLOCK_SKEW:
            return "AuthFailure.SignatureExpire", "Signature expired. Timestamp and server time differ by over 5 min."
        canonical = "\n".join(
            [
                "POST",
                "/",
                "",
                "".join(f"{n}:{headers[n].strip().lower()}\n" for n in names),
                signed_headers,
                hashlib.sha256(body).hexdigest(),
            ]
        )
        string_to_sign = "\n".join(
            [
                "TC3-HMAC-SHA256",
                str(timestamp),
                f"{date}/{service}/tc3_request",
                hashlib.sha256(canonical.encode()).hexdigest(),
            ]
        )
        key = ("TC3" + self.secret_key).encode()
        for part in (date, service, "tc3_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
        utc_date = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")
        if service != "sms" or date != utc_date or not hmac.compare_digest(expected, signature):
            return "AuthFailure.SignatureFailure", "The provided credentials could not be validated."
        return None

    def _send(self, number: str, request: dict[str, Any]) -> dict[str, Any]:
        status = {"SerialNo": "", "PhoneNumber": number, "Fee": 0, "SessionContext": request.get("SessionContext", "")}
        status["IsoCode"] = "CN"
        if not _MOBILE.fullmatch(number):
            return {**status, "Code": "InvalidParameterValue.IncorrectPhoneNumber", "Message": "incorrect number"}
        mobile = number[3:]
        if mobile in self.blacklisted:
            return {**status, "Code": "FailedOperation.PhoneNumberInBlacklist", "Message": "in do-not-disturb list"}
        if mobile in self.flow_controlled:
            return {**status, "Code": "LimitExceeded.DeliveryFrequencyLimit", "Message": "frequency limit"}
        now, template = self.clock(), request["TemplateId"]
        times = self.sent_at.setdefault((mobile, template), [])
        if sum(now - t < timedelta(days=1) for t in times) >= self.daily_cap:
            return {**status, "Code": "LimitExceeded.PhoneNumberDailyLimit", "Message": "daily limit"}
        serial = f"2433:{len(self.accepted) + 1:018d}"
        self.accepted.append({**request, "mobile": mobile, "SerialNo": serial, "at": now})
        times.append(now)
        return {**status, "SerialNo": serial, "Fee": 1, "Code": "Ok", "Message": "send success"}


def tencent_app(
    secret_id: str,
    secret_key: str,
    sdk_app_id: str,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    daily_cap: int = DAILY_CAP,
) -> tuple[Starlette, TencentSandbox]:
    """The stand-in as a web app, and the sandbox behind it (what it accepted, what it is scripted to refuse)."""
    sandbox = TencentSandbox(secret_id, secret_key, sdk_app_id, clock, daily_cap)

    async def endpoint(request: Request) -> JSONResponse:
        headers = {k.lower(): v for k, v in request.headers.items()}
        return JSONResponse(sandbox.answer(headers, await request.body()))

    app = Starlette(routes=[Route("/", endpoint, methods=["POST"])])
    app.state.sandbox = sandbox
    return app, sandbox


def _id() -> str:
    return str(uuid.uuid4())


def _error(code: str, message: str) -> dict[str, Any]:
    return {"Response": {"Error": {"Code": code, "Message": message}, "RequestId": _id()}}
