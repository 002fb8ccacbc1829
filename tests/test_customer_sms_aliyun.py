"""Aliyun SMS SendSms: the V3 signer against Aliyun's documented example, the answer codes, and the stand-in."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from datetime import datetime
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from helpers import NOW, M, serve_app

from order_pipeline.notify.channels import aliyun_sms
from order_pipeline.notify.channels.aliyun_sms import AliyunSms, authorization, canonical_query
from order_pipeline.notify.channels.message import CustomerMessage, Failure, SendError, Sent, mainland_mobile
from order_pipeline.notify.sandbox.aliyun import AliyunSandbox, aliyun_app

KEY_ID, SECRET = "LTAI5tSandboxKeyId", "sandbox-access-key-secret-0123"
MSG = CustomerMessage(
    key="SO-1:shipped", template="SMS_465001", params=(("order", "SO-1"), ("carrier", "圆通")), phone="13812345678"
)


def _nonces() -> Callable[[], str]:
    count = iter(range(1_000_000))
    return lambda: f"nonce-{next(count):06d}"


def channel(transport: httpx.BaseTransport | None = None, **kw) -> AliyunSms:
    kw.setdefault("clock", lambda: NOW)
    kw.setdefault("nonce", _nonces())
    return AliyunSms(KEY_ID, SECRET, "示例商城", transport=transport, **kw)


def answering(status: int, doc: object | None = None, text: str | None = None) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if doc is not None:
            return httpx.Response(status, json=doc)
        return httpx.Response(status, text=text or "")

    return httpx.MockTransport(handle)


# --- the signer -------------------------------------------------------------------------------------


def test_signer_reproduces_the_documented_v3_example() -> None:
    # Aliyun's "V3版本请求体&签名机制" fixed-parameter example (RunInstances, ecs.cn-shanghai).
    headers = {
        "host": "ecs.cn-shanghai.aliyuncs.com",
        "x-acs-action": "RunInstances",
        "x-acs-version": "2014-05-26",
        "x-acs-date": "2023-10-26T10:22:32Z",
        "x-acs-signature-nonce": "3156853299f313e23d1673dc12e1703d",
        "x-acs-content-sha256": hashlib.sha256(b"").hexdigest(),
    }
    query = {"ImageId": "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd", "RegionId": "cn-shanghai"}
    assert authorization("YourAccessKeyId", "YourAccessKeySecret", "POST", "/", query, headers, b"") == (
        "ACS3-HMAC-SHA256 Credential=YourAccessKeyId,"
        "SignedHeaders=host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,"
        "Signature=06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
    )


def test_canonical_query_is_rfc3986_encoded_and_sorted() -> None:
    assert canonical_query({"b": "a b*~", "A": "签", "a": "+,/"}) == "A=%E7%AD%BE&a=%2B%2C%2F&b=a%20b%2A~"


def test_the_request_carries_the_documented_headers_and_parameters() -> None:
    request = channel().request(CustomerMessage(**{**MSG.__dict__, "phone": "+86 138-1234-5678"}))
    assert request.method == "POST" and request.content == b""
    assert request.headers["x-acs-action"] == "SendSms" and request.headers["x-acs-version"] == "2017-05-25"
    assert request.headers["x-acs-date"] == "2026-11-25T02:00:00Z"
    assert request.headers["x-acs-signature-nonce"] == "nonce-000000"
    assert request.headers["x-acs-content-sha256"] == hashlib.sha256(b"").hexdigest()
    assert request.headers["host"] == "dysmsapi.aliyuncs.com"
    assert request.headers["Authorization"].startswith(f"ACS3-HMAC-SHA256 Credential={KEY_ID},SignedHeaders=host;")
    params = dict(parse_qsl(urlsplit(str(request.url)).query))
    assert params["PhoneNumbers"] == "13812345678"
    assert params["SignName"] == "示例商城" and params["TemplateCode"] == "SMS_465001"
    assert params["OutId"] == "SO-1:shipped"
    assert json.loads(params["TemplateParam"]) == {"order": "SO-1", "carrier": "圆通"}


def test_the_same_clock_and_nonce_give_the_same_signature() -> None:
    a = channel(nonce=lambda: "n1").request(MSG).headers["Authorization"]
    assert a == channel(nonce=lambda: "n1").request(MSG).headers["Authorization"]
    assert a != channel(nonce=lambda: "n2").request(MSG).headers["Authorization"]


# --- the mobile number and what cannot go -------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "mobile"),
    [
        ("13812345678", "13812345678"),
        ("19912345678", "19912345678"),
        ("+86 138 1234 5678", "13812345678"),
        ("86-138-1234-5678", "13812345678"),
        ("008613812345678", "13812345678"),
        ("12812345678", None),  # 1 then 2: not a mobile prefix
        ("1381234567", None),  # 10 digits
        ("138123456789", None),  # 12 digits
        ("+85213812345678", None),
        ("", None),
        (None, None),
    ],
)
def test_mainland_mobile(raw: str | None, mobile: str | None) -> None:
    assert mainland_mobile(raw) == mobile


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({}, None),
        ({"phone": None}, "no mobile number"),
        ({"phone": "0571-88881234"}, "not a mainland mobile number"),
        ({"template": " "}, "no template"),
        ({"params": (("name", "张" * 35),)}, None),
        ({"params": (("name", "张" * 36),)}, "parameter name has 36 characters, Aliyun allows 35"),
    ],
)
def test_problem(change: dict, reason: str | None) -> None:
    assert channel().problem(CustomerMessage(**{**MSG.__dict__, **change})) == reason


def test_a_message_with_a_problem_is_refused_before_anything_is_sent() -> None:
    def never(request: httpx.Request) -> httpx.Response:
        raise AssertionError("sent")

    with pytest.raises(SendError) as e:
        channel(httpx.MockTransport(never)).send(CustomerMessage(**{**MSG.__dict__, "phone": "12345"}))
    assert e.value.failure is Failure.PERMANENT


# --- answers ------------------------------------------------------------------------------------------


def test_ok_gives_the_biz_id() -> None:
    doc = {"Code": "OK", "Message": "OK", "BizId": "900619746936498440^0", "RequestId": "R"}
    assert channel(answering(200, doc)).send(MSG) == Sent("900619746936498440^0")


@pytest.mark.parametrize(
    ("status", "code", "failure"),
    [
        (200, "isv.BUSINESS_LIMIT_CONTROL", Failure.RETRY_LATER),
        (200, "isv.DAY_LIMIT_CONTROL", Failure.RETRY_LATER),
        (200, "isv.AMOUNT_NOT_ENOUGH", Failure.RETRY_LATER),
        (200, "isv.OUT_OF_SERVICE", Failure.RETRY_LATER),
        (200, "isp.SYSTEM_ERROR", Failure.RETRY_LATER),
        (400, "Throttling.User", Failure.RETRY_LATER),
        (400, "InvalidTimeStamp.Expired", Failure.RETRY_LATER),
        (400, "SignatureDoesNotMatch", Failure.RETRY_LATER),
        (503, "ServiceUnavailable", Failure.RETRY_LATER),
        (500, "isv.SOMETHING_NEW", Failure.RETRY_LATER),
        (200, "isv.MOBILE_NUMBER_ILLEGAL", Failure.PERMANENT),
        (200, "isv.SMS_TEMPLATE_ILLEGAL", Failure.PERMANENT),
        (200, "isv.SMS_SIGNATURE_ILLEGAL", Failure.PERMANENT),
        (200, "isv.TEMPLATE_MISSING_PARAMETERS", Failure.PERMANENT),
        (200, "isv.PARAM_LENGTH_LIMIT", Failure.PERMANENT),
        (200, "isv.PARAM_NOT_SUPPORT_URL", Failure.PERMANENT),
        (200, "isv.BLACK_KEY_CONTROL_LIMIT", Failure.PERMANENT),
        (200, "isv.INVALID_JSON_PARAM", Failure.PERMANENT),
    ],
)
def test_answer_codes(status: int, code: str, failure: Failure) -> None:
    doc = {"Code": code, "Message": f"refused 13812345678 under {code}", "RequestId": "R"}
    with pytest.raises(SendError) as e:
        channel(answering(status, doc)).send(MSG)
    assert (e.value.failure, e.value.code) == (failure, code)
    text = str(e.value)
    assert SECRET not in text and "13812345678" not in text and "138****5678" in text


def test_a_stale_clock_says_so() -> None:
    with pytest.raises(SendError, match="clock"):
        channel(answering(400, {"Code": "InvalidTimeStamp.Expired", "Message": "expired"})).send(MSG)


@pytest.mark.parametrize(
    ("status", "failure"), [(502, Failure.RETRY_LATER), (429, Failure.RETRY_LATER), (404, Failure.PERMANENT)]
)
def test_an_answer_without_json(status: int, failure: Failure) -> None:
    with pytest.raises(SendError) as e:
        channel(answering(status, text="<html>gateway</html>")).send(MSG)
    assert (e.value.failure, e.value.code) == (failure, str(status))


@pytest.mark.parametrize("error", [httpx.ReadTimeout("slow"), httpx.ConnectError("refused")])
def test_a_timeout_or_an_unreachable_server_is_retried_later(error: Exception) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        raise error

    with pytest.raises(SendError) as e:
        channel(httpx.MockTransport(handle)).send(MSG)
    assert e.value.failure is Failure.RETRY_LATER and SECRET not in str(e.value)


def test_the_secret_is_not_in_the_repr() -> None:
    text = repr(channel())
    assert SECRET not in text and "aliyun_sms" in text


def test_the_vendor_limit_is_named() -> None:
    assert aliyun_sms.VARIABLE_MAX == 35


# --- end to end through the stand-in --------------------------------------------------------------------


class Clock:
    def __init__(self, at: datetime):
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def stand_in() -> Iterator[tuple[AliyunSandbox, str, Clock]]:
    clock = Clock(NOW)
    app, sandbox = aliyun_app(KEY_ID, SECRET, clock=clock, daily_cap=2)
    with serve_app(app) as port:
        yield sandbox, f"http://127.0.0.1:{port}", clock


def test_end_to_end_accepted(stand_in: tuple[AliyunSandbox, str, Clock]) -> None:
    sandbox, url, _ = stand_in
    sent = channel(endpoint=url).send(MSG)
    assert sent.provider_id == sandbox.accepted[0]["BizId"]
    record = sandbox.accepted[0]
    assert (record["PhoneNumbers"], record["OutId"], record["SignName"]) == ("13812345678", "SO-1:shipped", "示例商城")
    assert record["TemplateParam"] == {"order": "SO-1", "carrier": "圆通"}


def test_end_to_end_wrong_secret_refused(stand_in: tuple[AliyunSandbox, str, Clock]) -> None:
    sandbox, url, _ = stand_in
    wrong = AliyunSms(KEY_ID, "not-the-secret", "示例商城", endpoint=url, clock=lambda: NOW)
    with pytest.raises(SendError) as e:
        wrong.send(MSG)
    assert e.value.code == "SignatureDoesNotMatch" and "not-the-secret" not in str(e.value)
    assert sandbox.accepted == []


def test_end_to_end_unknown_key_id_refused(stand_in: tuple[AliyunSandbox, str, Clock]) -> None:
    _, url, _ = stand_in
    with pytest.raises(SendError) as e:
        AliyunSms("LTAIother", SECRET, "示例商城", endpoint=url, clock=lambda: NOW).send(MSG)
    assert e.value.code == "InvalidAccessKeyId.NotFound"


def test_end_to_end_unsigned_request_refused(stand_in: tuple[AliyunSandbox, str, Clock]) -> None:
    _, url, _ = stand_in
    resp = httpx.post(f"{url}/?PhoneNumbers=13812345678", headers={"x-acs-action": "SendSms"})
    assert resp.status_code == 400 and resp.json()["Code"] == "IncompleteSignature"


@pytest.mark.parametrize(("offset", "accepted"), [(-16 * M, False), (16 * M, False), (-14 * M, True), (14 * M, True)])
def test_end_to_end_clock_skew(stand_in: tuple[AliyunSandbox, str, Clock], offset, accepted: bool) -> None:
    sandbox, url, _ = stand_in
    skewed = channel(endpoint=url, clock=lambda: NOW + offset)
    if accepted:
        skewed.send(MSG)
        assert len(sandbox.accepted) == 1
        return
    with pytest.raises(SendError) as e:
        skewed.send(MSG)
    assert (e.value.code, e.value.failure) == ("InvalidTimeStamp.Expired", Failure.RETRY_LATER)
    assert "clock" in str(e.value) and sandbox.accepted == []


def test_end_to_end_a_replayed_nonce_is_refused(stand_in: tuple[AliyunSandbox, str, Clock]) -> None:
    _, url, _ = stand_in
    same = channel(endpoint=url, nonce=lambda: "always-the-same")
    same.send(MSG)
    with pytest.raises(SendError) as e:
        same.send(MSG)
    assert e.value.code == "SignatureNonceUsed"


def test_end_to_end_scripted_flow_control_and_blocked_keyword(stand_in: tuple[AliyunSandbox, str, Clock]) -> None:
    sandbox, url, _ = stand_in
    sandbox.flow_controlled.add("13900000001")
    sandbox.keyword_blocked.add("13900000002")
    client = channel(endpoint=url)
    with pytest.raises(SendError) as e:
        client.send(CustomerMessage(**{**MSG.__dict__, "phone": "13900000001"}))
    assert (e.value.code, e.value.failure) == ("isv.BUSINESS_LIMIT_CONTROL", Failure.RETRY_LATER)
    with pytest.raises(SendError) as e:
        client.send(CustomerMessage(**{**MSG.__dict__, "phone": "13900000002"}))
    assert (e.value.code, e.value.failure) == ("isv.BLACK_KEY_CONTROL_LIMIT", Failure.PERMANENT)
    assert "139****0002" in str(e.value) and "13900000002" not in str(e.value)
    assert client.send(MSG).provider_id  # other numbers still go
    assert [m["PhoneNumbers"] for m in sandbox.accepted] == ["13812345678"]


def test_end_to_end_daily_cap_per_signature_template_and_number(stand_in: tuple[AliyunSandbox, str, Clock]) -> None:
    sandbox, url, clock = stand_in
    client = channel(endpoint=url, clock=clock)
    client.send(MSG)
    client.send(MSG)
    with pytest.raises(SendError) as e:
        client.send(MSG)
    assert (e.value.code, e.value.failure) == ("isv.BUSINESS_LIMIT_CONTROL", Failure.RETRY_LATER)
    assert client.send(CustomerMessage(**{**MSG.__dict__, "template": "SMS_465002"})).provider_id
    assert client.send(CustomerMessage(**{**MSG.__dict__, "phone": "13912345678"})).provider_id
    clock.at = NOW + 24 * 60 * M  # a day after the first two: the window has rolled past them
    assert client.send(MSG).provider_id
    assert len(sandbox.accepted) == 5


def test_end_to_end_a_tampered_request_is_refused(stand_in: tuple[AliyunSandbox, str, Clock]) -> None:
    sandbox, url, _ = stand_in
    signed = channel(endpoint=url).request(MSG)
    tampered = str(signed.url).replace("13812345678", "13912345678")
    resp = httpx.post(tampered, headers=dict(signed.headers), content=signed.content)
    assert resp.status_code == 400 and resp.json()["Code"] == "SignatureDoesNotMatch"
    assert sandbox.accepted == []
