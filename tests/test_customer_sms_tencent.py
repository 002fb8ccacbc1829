"""Tencent Cloud SMS SendSms: the TC3 signer against Tencent's worked example, the answer codes, the stand-in."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from helpers import NOW, M, serve_app

from order_pipeline.notify.channels import tencent_sms
from order_pipeline.notify.channels.message import CustomerMessage, Failure, SendError, Sent
from order_pipeline.notify.channels.tencent_sms import TencentSms, authorization, signing_key
from order_pipeline.notify.sandbox.tencent import TencentSandbox, tencent_app

SECRET_ID, SECRET_KEY, APP_ID = "AKIDsandboxSecretId0123", "sandbox-secret-key-0123456789", "1400787878"
MSG = CustomerMessage(
    key="SO-1:shipped", template="1874502", params=(("order", "SO-1"), ("carrier", "圆通")), phone="13812345678"
)


def channel(transport: httpx.BaseTransport | None = None, **kw) -> TencentSms:
    kw.setdefault("clock", lambda: NOW)
    return TencentSms(SECRET_ID, SECRET_KEY, APP_ID, "示例商城", transport=transport, **kw)


def answering(status: int, doc: object | None = None, text: str = "") -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=doc) if doc is not None else httpx.Response(status, text=text)

    return httpx.MockTransport(handle)


def per_number(code: str, message: str = "") -> dict:
    status = {"SerialNo": "", "PhoneNumber": "+8613812345678", "Fee": 0, "Code": code, "Message": message}
    return {"Response": {"SendStatusSet": [status], "RequestId": "R"}}


def error(code: str, message: str = "") -> dict:
    return {"Response": {"Error": {"Code": code, "Message": message}, "RequestId": "R"}}


# --- the signer -------------------------------------------------------------------------------------

# Tencent's "Signature v3" worked example: DescribeInstances on cvm, timestamp 1551113065.
EXAMPLE_PAYLOAD = rb'{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}'


def test_signer_reproduces_the_documented_tc3_example() -> None:
    assert authorization(
        "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE",
        "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE",
        "cvm",
        "cvm.tencentcloudapi.com",
        "application/json; charset=utf-8",
        EXAMPLE_PAYLOAD,
        1551113065,
    ) == (
        "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2019-02-25/cvm/tc3_request, "
        "SignedHeaders=content-type;host, "
        "Signature=72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
    )
    # The example's intermediate values, as the documentation gives them.
    assert (
        hashlib.sha256(EXAMPLE_PAYLOAD).hexdigest()
        == "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
    )


def test_the_key_chain_is_date_then_service_then_tc3_request() -> None:
    by_hand = hmac.new(b"TC3" + SECRET_KEY.encode(), b"2026-11-25", hashlib.sha256).digest()
    by_hand = hmac.new(by_hand, b"sms", hashlib.sha256).digest()
    by_hand = hmac.new(by_hand, b"tc3_request", hashlib.sha256).digest()
    assert signing_key(SECRET_KEY, "2026-11-25", "sms") == by_hand


def test_the_credential_date_is_utc() -> None:
    # 00:30 on the 25th in Shanghai is 16:30 on the 24th in UTC.
    at = int(datetime(2026, 11, 24, 16, 30, tzinfo=UTC).timestamp())
    assert "/2026-11-24/sms/tc3_request," in authorization("id", "key", "sms", "h", "application/json", b"{}", at)


def test_the_request_carries_the_documented_headers_and_body() -> None:
    request = channel().request(CustomerMessage(**{**MSG.__dict__, "phone": "+86 138 1234 5678"}))
    assert request.headers["X-TC-Action"] == "SendSms" and request.headers["X-TC-Version"] == "2021-01-11"
    assert request.headers["X-TC-Region"] == "ap-guangzhou"
    assert request.headers["X-TC-Timestamp"] == str(int(NOW.timestamp()))
    assert request.headers["Host"] == "sms.tencentcloudapi.com"
    assert request.headers["Authorization"].startswith(
        f"TC3-HMAC-SHA256 Credential={SECRET_ID}/2026-11-25/sms/tc3_request"
    )
    assert json.loads(request.content) == {
        "PhoneNumberSet": ["+8613812345678"],
        "SmsSdkAppId": APP_ID,
        "SignName": "示例商城",
        "TemplateId": "1874502",
        "TemplateParamSet": ["SO-1", "圆通"],
        "SessionContext": "SO-1:shipped",
    }


# --- what cannot go ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "variable_max", "reason"),
    [
        ({}, tencent_sms.VARIABLE_MAX, None),
        ({"phone": None}, tencent_sms.VARIABLE_MAX, "no mobile number"),
        ({"phone": "1381234567"}, tencent_sms.VARIABLE_MAX, "not a mainland mobile number"),
        ({"template": ""}, tencent_sms.VARIABLE_MAX, "no template"),
        ({"params": (("order", "张" * 12),)}, tencent_sms.VARIABLE_MAX, None),
        (
            {"params": (("order", "张" * 13),)},
            tencent_sms.VARIABLE_MAX,
            "parameter order has 13 characters, Tencent Cloud allows 12",
        ),
        ({"params": (("order", "张" * 13),)}, None, None),  # an enterprise account: no per-variable limit
    ],
)
def test_problem(change: dict, variable_max: int | None, reason: str | None) -> None:
    assert channel(variable_max=variable_max).problem(CustomerMessage(**{**MSG.__dict__, **change})) == reason


# --- answers ------------------------------------------------------------------------------------------


def test_ok_gives_the_serial_number() -> None:
    doc = per_number("Ok", "send success")
    doc["Response"]["SendStatusSet"][0]["SerialNo"] = "2433:6e5b2f7a"
    assert channel(answering(200, doc)).send(MSG) == Sent("2433:6e5b2f7a")


@pytest.mark.parametrize(
    ("doc", "code", "failure"),
    [
        (per_number("LimitExceeded.PhoneNumberDailyLimit"), "LimitExceeded.PhoneNumberDailyLimit", Failure.RETRY_LATER),
        (
            per_number("LimitExceeded.DeliveryFrequencyLimit"),
            "LimitExceeded.DeliveryFrequencyLimit",
            Failure.RETRY_LATER,
        ),
        (
            per_number("FailedOperation.PhoneNumberInBlacklist"),
            "FailedOperation.PhoneNumberInBlacklist",
            Failure.OPTED_OUT,
        ),
        (
            per_number("InvalidParameterValue.IncorrectPhoneNumber"),
            "InvalidParameterValue.IncorrectPhoneNumber",
            Failure.PERMANENT,
        ),
        (
            per_number("FailedOperation.TemplateIncorrectOrUnapproved"),
            "FailedOperation.TemplateIncorrectOrUnapproved",
            Failure.PERMANENT,
        ),
        (
            per_number("FailedOperation.SignatureIncorrectOrUnapproved"),
            "FailedOperation.SignatureIncorrectOrUnapproved",
            Failure.PERMANENT,
        ),
        (per_number("FailedOperation.ContainSensitiveWord"), "FailedOperation.ContainSensitiveWord", Failure.PERMANENT),
        (per_number("InternalError.Timeout"), "InternalError.Timeout", Failure.RETRY_LATER),
        (error("AuthFailure.SignatureExpire"), "AuthFailure.SignatureExpire", Failure.RETRY_LATER),
        (error("AuthFailure.SignatureFailure"), "AuthFailure.SignatureFailure", Failure.RETRY_LATER),
        (error("AuthFailure.SecretIdNotFound"), "AuthFailure.SecretIdNotFound", Failure.RETRY_LATER),
        (error("InternalError"), "InternalError", Failure.RETRY_LATER),
        (error("RequestLimitExceeded"), "RequestLimitExceeded", Failure.RETRY_LATER),
        (
            error("InvalidParameterValue.TemplateParameterFormatError"),
            "InvalidParameterValue.TemplateParameterFormatError",
            Failure.PERMANENT,
        ),
        ({"Response": {"SendStatusSet": [], "RequestId": "R"}}, "no_status", Failure.PERMANENT),
    ],
)
def test_answer_codes(doc: dict, code: str, failure: Failure) -> None:
    # Whatever Tencent quotes back, the full number does not reach the error text.
    for entry in [doc["Response"].get("Error") or {}, *doc["Response"].get("SendStatusSet", [])]:
        entry["Message"] = "refused +8613812345678"
    with pytest.raises(SendError) as e:
        channel(answering(200, doc)).send(MSG)
    assert (e.value.failure, e.value.code) == (failure, code)
    text = str(e.value)
    assert SECRET_KEY not in text and "13812345678" not in text and "138****5678" in text


def test_a_stale_clock_says_so() -> None:
    with pytest.raises(SendError, match="clock"):
        channel(answering(200, error("AuthFailure.SignatureExpire", "expired"))).send(MSG)


@pytest.mark.parametrize(
    ("status", "failure"), [(502, Failure.RETRY_LATER), (429, Failure.RETRY_LATER), (404, Failure.PERMANENT)]
)
def test_an_answer_without_a_response(status: int, failure: Failure) -> None:
    with pytest.raises(SendError) as e:
        channel(answering(status, text="<html>gateway</html>")).send(MSG)
    assert (e.value.failure, e.value.code) == (failure, str(status))


@pytest.mark.parametrize("exc", [httpx.ReadTimeout("slow"), httpx.ConnectError("refused")])
def test_a_timeout_or_an_unreachable_server_is_retried_later(exc: Exception) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(SendError) as e:
        channel(httpx.MockTransport(handle)).send(MSG)
    assert e.value.failure is Failure.RETRY_LATER and SECRET_KEY not in str(e.value)


def test_the_secret_is_not_in_the_repr() -> None:
    text = repr(channel())
    assert SECRET_KEY not in text and "tencent_sms" in text


# --- end to end through the stand-in --------------------------------------------------------------------


class Clock:
    def __init__(self, at: datetime):
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def stand_in() -> Iterator[tuple[TencentSandbox, str, Clock]]:
    clock = Clock(NOW)
    app, sandbox = tencent_app(SECRET_ID, SECRET_KEY, APP_ID, clock=clock, daily_cap=2)
    with serve_app(app) as port:
        yield sandbox, f"http://127.0.0.1:{port}", clock


def test_end_to_end_accepted(stand_in: tuple[TencentSandbox, str, Clock]) -> None:
    sandbox, url, _ = stand_in
    sent = channel(endpoint=url).send(MSG)
    record = sandbox.accepted[0]
    assert sent.provider_id == record["SerialNo"]
    assert record["PhoneNumberSet"] == ["+8613812345678"] and record["SessionContext"] == "SO-1:shipped"
    assert record["TemplateParamSet"] == ["SO-1", "圆通"]


def test_end_to_end_wrong_secret_refused(stand_in: tuple[TencentSandbox, str, Clock]) -> None:
    sandbox, url, _ = stand_in
    wrong = TencentSms(SECRET_ID, "not-the-key", APP_ID, "示例商城", endpoint=url, clock=lambda: NOW)
    with pytest.raises(SendError) as e:
        wrong.send(MSG)
    assert e.value.code == "AuthFailure.SignatureFailure" and "not-the-key" not in str(e.value)
    assert sandbox.accepted == []


def test_end_to_end_unknown_secret_id_refused(stand_in: tuple[TencentSandbox, str, Clock]) -> None:
    _, url, _ = stand_in
    with pytest.raises(SendError) as e:
        TencentSms("AKIDother", SECRET_KEY, APP_ID, "示例商城", endpoint=url, clock=lambda: NOW).send(MSG)
    assert e.value.code == "AuthFailure.SecretIdNotFound"


def test_end_to_end_unsigned_request_refused(stand_in: tuple[TencentSandbox, str, Clock]) -> None:
    _, url, _ = stand_in
    doc = httpx.post(f"{url}/", json={"PhoneNumberSet": ["+8613812345678"]}).json()
    assert doc["Response"]["Error"]["Code"] == "AuthFailure.InvalidAuthorization"


@pytest.mark.parametrize(("offset", "accepted"), [(-6 * M, False), (6 * M, False), (-4 * M, True), (4 * M, True)])
def test_end_to_end_clock_skew(stand_in: tuple[TencentSandbox, str, Clock], offset, accepted: bool) -> None:
    sandbox, url, _ = stand_in
    skewed = channel(endpoint=url, clock=lambda: NOW + offset)
    if accepted:
        skewed.send(MSG)
        assert len(sandbox.accepted) == 1
        return
    with pytest.raises(SendError) as e:
        skewed.send(MSG)
    assert (e.value.code, e.value.failure) == ("AuthFailure.SignatureExpire", Failure.RETRY_LATER)
    assert "clock" in str(e.value) and sandbox.accepted == []


def test_end_to_end_scripted_blacklist_and_flow_control(stand_in: tuple[TencentSandbox, str, Clock]) -> None:
    sandbox, url, _ = stand_in
    sandbox.blacklisted.add("13900000001")
    sandbox.flow_controlled.add("13900000002")
    client = channel(endpoint=url)
    with pytest.raises(SendError) as e:
        client.send(CustomerMessage(**{**MSG.__dict__, "phone": "13900000001"}))
    assert (e.value.code, e.value.failure) == ("FailedOperation.PhoneNumberInBlacklist", Failure.OPTED_OUT)
    assert "139****0001" in str(e.value) and "13900000001" not in str(e.value)
    with pytest.raises(SendError) as e:
        client.send(CustomerMessage(**{**MSG.__dict__, "phone": "13900000002"}))
    assert (e.value.code, e.value.failure) == ("LimitExceeded.DeliveryFrequencyLimit", Failure.RETRY_LATER)
    assert client.send(MSG).provider_id
    assert [m["mobile"] for m in sandbox.accepted] == ["13812345678"]


def test_end_to_end_daily_cap(stand_in: tuple[TencentSandbox, str, Clock]) -> None:
    sandbox, url, clock = stand_in
    client = channel(endpoint=url, clock=clock)
    client.send(MSG)
    client.send(MSG)
    with pytest.raises(SendError) as e:
        client.send(MSG)
    assert (e.value.code, e.value.failure) == ("LimitExceeded.PhoneNumberDailyLimit", Failure.RETRY_LATER)
    assert client.send(CustomerMessage(**{**MSG.__dict__, "template": "1874503"})).provider_id
    clock.at = NOW + 24 * 60 * M
    assert client.send(MSG).provider_id
    assert len(sandbox.accepted) == 4


def test_end_to_end_a_tampered_body_is_refused(stand_in: tuple[TencentSandbox, str, Clock]) -> None:
    sandbox, url, _ = stand_in
    signed = channel(endpoint=url).request(MSG)
    tampered = signed.content.replace(b"13812345678", b"13912345678")
    doc = httpx.post(f"{url}/", headers=dict(signed.headers), content=tampered).json()
    assert doc["Response"]["Error"]["Code"] == "AuthFailure.SignatureFailure"
    assert sandbox.accepted == []
