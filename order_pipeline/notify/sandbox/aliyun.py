"""A stand-in for Aliyun SMS SendSms (2017-05-25) that checks ACS3-HMAC-SHA256 signatures as Aliyun does.

`aliyun_app(...)` returns the Starlette app and its `AliyunSandbox`: `accepted` lists what went through,
`flow_controlled` and `keyword_blocked` script answers for chosen numbers, and a notification to the same
signature + template + number past `daily_cap` in 24 hours is refused with isv.BUSINESS_LIMIT_CONTROL, as
Aliyun's default flow control (50 a day) does.
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
from urllib.parse import parse_qsl, quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

CLOCK_SKEW = timedelta(minutes=15)  # Aliyun refuses an x-acs-date more than 15 minutes off
DAILY_CAP = 50  # notifications per signature + template + number in 24 hours, Aliyun's default flow control
VARIABLE_MAX = 35  # characters per template variable of a notification template
_REQUIRED = ("host", "x-acs-action", "x-acs-version", "x-acs-date", "x-acs-signature-nonce", "x-acs-content-sha256")
_MOBILE = re.compile(r"1[3-9][0-9]{9}")
_AUTH = re.compile(r"ACS3-HMAC-SHA256 Credential=([^,]+),SignedHeaders=([^,]+),Signature=([0-9a-f]{64})")


@dataclass
class AliyunSandbox:
    access_key_id: str
    access_key_secret: str
    clock: Callable[[], datetime]
    daily_cap: int = DAILY_CAP
    flow_controlled: set[str] = field(default_factory=set)  # numbers answered isv.BUSINESS_LIMIT_CONTROL
    keyword_blocked: set[str] = field(default_factory=set)  # numbers answered isv.BLACK_KEY_CONTROL_LIMIT
    accepted: list[dict[str, Any]] = field(default_factory=list)
    nonces: set[str] = field(default_factory=set)
    # When each (signature, template, number) was accepted: the daily cap counts them without a scan.
    sent_at: dict[tuple[str, str, str], list[datetime]] = field(default_factory=dict)

    def answer(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes) -> tuple[int, dict]:
        """Aliyun's HTTP status and JSON answer to one request; `headers` with lower-case names."""
        refused = self._authenticate(method, path, query, headers, body)
        if refused:
            return refused
        if headers["x-acs-action"] != "SendSms":
            return _error(
                404, "InvalidAction.NotFound", "Specified api is not found, please check your url and method."
            )
        if headers["x-acs-version"] != "2017-05-25":
            return _error(400, "InvalidVersion", "Specified parameter Version is not valid.")
        return self._send(dict(parse_qsl(query, keep_blank_values=True)))

    def _authenticate(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict] | None:
        match = _AUTH.fullmatch(headers.get("authorization", ""))
        if match is None or any(h not in headers for h in _REQUIRED):
            return _error(400, "IncompleteSignature", "The request signature does not conform to Aliyun standards.")
        key_id, signed_headers, signature = match.groups()
        names = signed_headers.split(";")
        if any(h not in names for h in _REQUIRED) or any(n not in headers for n in names):
            return _error(400, "IncompleteSignature", "The request signature does not conform to Aliyun standards.")
        if key_id != self.access_key_id:
            return _error(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
        payload_hash = hashlib.sha256(body).hexdigest()
        pairs = sorted((_encode(k), _encode(v)) for k, v in parse_qsl(query, keep_blank_values=True))
        canonical = "\n".join(
            [
                method,
                path,
                "&".join(f"{k}={v}" for k, v in pairs),
                "".join(f"{n}:{headers[n].strip()}\n" for n in names),
                signed_headers,
                payload_hash,
            ]
        )
        string_to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical.encode()).hexdigest()
        expected = hmac.new(self.access_key_secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()
        if headers["x-acs-content-sha256"] != payload_hash or not hmac.compare_digest(expected, signature):
            return _error(
                400,
                "SignatureDoesNotMatch",
                f"Specified signature does not match our calculation. server string to sign is:{string_to_sign}",
            )
        try:
            sent_at = datetime.strptime(headers["x-acs-date"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            return _error(400, "InvalidTimeStamp.Format", "Specified time stamp or date value is not well formatted.")
        if abs(self.clock() - sent_at) > CLOCK_SKEW:
            return _error(400, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.")
        nonce = headers["x-acs-signature-nonce"]
        if nonce in self.nonces:
            return _error(400, "SignatureNonceUsed", "Specified signature nonce was used already.")
        self.nonces.add(nonce)
        return None

    def _send(self, params: dict[str, str]) -> tuple[int, dict]:
        phone, sign, template = params.get("PhoneNumbers", ""), params.get("SignName"), params.get("TemplateCode")
        for name, value in (("PhoneNumbers", phone), ("SignName", sign), ("TemplateCode", template)):
            if not value:
                return _error(400, f"Missing{name}", f"{name} is mandatory for this action.")
        if not _MOBILE.fullmatch(phone):
            return _ok_shape("isv.MOBILE_NUMBER_ILLEGAL", "非法手机号")
        try:
            variables = json.loads(params.get("TemplateParam") or "{}")
        except ValueError:
            return _ok_shape("isv.INVALID_JSON_PARAM", "JSON参数不合法，只接受字符串值")
        if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
            return _ok_shape("isv.INVALID_JSON_PARAM", "JSON参数不合法，只接受字符串值")
        if any(len(v) > VARIABLE_MAX for v in variables.values()):
            return _ok_shape("isv.PARAM_LENGTH_LIMIT", "参数超出长度限制")
        if phone in self.flow_controlled:
            return _ok_shape("isv.BUSINESS_LIMIT_CONTROL", "触发分钟级流控Permits:1")
        if phone in self.keyword_blocked:
            return _ok_shape("isv.BLACK_KEY_CONTROL_LIMIT", "黑名单管控")
        now = self.clock()
        times = self.sent_at.setdefault((str(sign), str(template), phone), [])
        if sum(now - t < timedelta(days=1) for t in times) >= self.daily_cap:
            return _ok_shape("isv.BUSINESS_LIMIT_CONTROL", f"触发天级流控Permits:{self.daily_cap}")
        biz_id = f"{len(self.accepted) + 900000000000000000}^0"
        self.accepted.append({**params, "TemplateParam": variables, "BizId": biz_id, "at": now})
        times.append(now)
        return 200, {"Code": "OK", "Message": "OK", "BizId": biz_id, "RequestId": _request_id()}


def aliyun_app(
    access_key_id: str,
    access_key_secret: str,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    daily_cap: int = DAILY_CAP,
) -> tuple[Starlette, AliyunSandbox]:
    """The stand-in as a web app, and the sandbox behind it (what it accepted, what it is scripted to refuse)."""
    sandbox = AliyunSandbox(access_key_id, access_key_secret, clock, daily_cap)

    async def endpoint(request: Request) -> JSONResponse:
        headers = {k.lower(): v for k, v in request.headers.items()}
        status, doc = sandbox.answer(request.method, request.url.path, request.url.query, headers, await request.body())
        return JSONResponse(doc, status_code=status)

    app = Starlette(routes=[Route("/", endpoint, methods=["POST", "GET"])])
    app.state.sandbox = sandbox
    return app, sandbox


def _encode(text: str) -> str:
    return quote(text, safe="-_.~")


def _request_id() -> str:
    return str(uuid.uuid4()).upper()


def _error(status: int, code: str, message: str) -> tuple[int, dict]:
    return status, {"RequestId": _request_id(), "HostId": "dysmsapi.aliyuncs.com", "Code": code, "Message": message}


def _ok_shape(code: str, message: str) -> tuple[int, dict]:
    # SendSms business refusals come back with HTTP 200 and the code in the body.
    return 200, {"Code": code, "Message": message, "RequestId": _request_id()}
