"""The Kuaidi100 client: the request it sends, which errors it retries and how long it waits."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qsl

import httpx
import pytest
from helpers import CUSTOMER, KEY, answer_payload, md5_upper

from order_pipeline.carrier.protocol import Kuaidi100Error, Kuaidi100Unavailable
from resources.carrier import Kuaidi100Client

REAL_URL = "https://poll.kuaidi100.com/poll/query.do"


class Recorder:
    """A MockTransport handler that replays scripted responses and keeps the requests."""

    def __init__(self, *steps: httpx.Response | Exception):
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    def form(self, index: int = 0) -> dict[str, str]:
        return dict(parse_qsl(self.requests[index].content.decode()))


def make_client(recorder: Recorder, delays: list[float], **fields) -> Kuaidi100Client:
    client = Kuaidi100Client(endpoint=REAL_URL, customer=CUSTOMER, key=KEY, **fields)
    return client.with_transport(httpx.MockTransport(recorder), sleep=delays.append)


def ok(payload: dict | None = None) -> httpx.Response:
    return httpx.Response(200, json=payload or answer_payload())


def test_request_carries_the_exact_form_signed_over_the_sent_param():
    recorder, delays = Recorder(ok()), []
    make_client(recorder, delays).query("yuantong", "YT100", "5678")
    request = recorder.requests[0]
    assert request.method == "POST" and str(request.url) == REAL_URL
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    form = recorder.form()
    assert set(form) == {"customer", "param", "sign"}
    assert form["customer"] == CUSTOMER
    assert form["param"] == '{"com":"yuantong","num":"YT100","phone":"5678","resultv2":"4"}'
    assert form["sign"] == md5_upper(form["param"] + KEY + CUSTOMER)


@pytest.mark.parametrize("code", ["400", "408", "503"])
def test_client_does_not_repeat_requests_that_need_a_fix(code: str):
    recorder, delays = Recorder(httpx.Response(200, json={"result": False, "returnCode": code, "message": "x"})), []
    with pytest.raises(Kuaidi100Error) as caught:
        make_client(recorder, delays).query("shunfeng", "SF1", None)
    assert caught.value.return_code == code and not caught.value.retryable
    assert len(recorder.requests) == 1 and delays == []


def test_client_leaves_no_record_yet_to_the_next_poll():
    no_record = {"result": False, "returnCode": "500", "message": "查询无结果，请隔段时间再查"}
    recorder, delays = Recorder(httpx.Response(200, json=no_record)), []
    with pytest.raises(Kuaidi100Error) as caught:
        make_client(recorder, delays).query("yuantong", "YT404", None)
    assert caught.value.return_code == "500" and caught.value.retryable
    assert len(recorder.requests) == 1 and delays == []


def test_client_retries_server_busy_answers():
    busy = httpx.Response(200, json={"result": False, "returnCode": "502", "message": "服务器繁忙"})
    recorder, delays = Recorder(busy, ok()), []
    answer = make_client(recorder, delays).query("yuantong", "YT100", None)
    assert answer.waybill_no == "YT100"
    assert delays == [0.5]


def test_client_rejects_a_non_json_body():
    recorder, delays = Recorder(httpx.Response(200, text="<html>portal</html>")), []
    with pytest.raises(Kuaidi100Error) as caught:
        make_client(recorder, delays).query("yuantong", "YT100", None)
    assert "not JSON" in caught.value.message and not caught.value.retryable
    assert delays == []


def test_client_rejects_malformed_json():
    recorder, delays = Recorder(httpx.Response(200, json={"message": "ok"})), []
    with pytest.raises(Kuaidi100Error) as caught:
        make_client(recorder, delays).query("yuantong", "YT100", None)
    assert "malformed" in caught.value.message and not caught.value.retryable


def test_client_does_not_retry_other_http_client_errors():
    recorder, delays = Recorder(httpx.Response(404)), []
    with pytest.raises(Kuaidi100Error) as caught:
        make_client(recorder, delays).query("yuantong", "YT100", None)
    assert "HTTP 404" in caught.value.message and not caught.value.retryable
    assert len(recorder.requests) == 1


def test_http_502_then_success():
    recorder, delays = Recorder(httpx.Response(502), ok()), []
    answer = make_client(recorder, delays).query("yuantong", "YT100", None)
    assert [e.context for e in answer.events] == ["已揽收", "派件中"]
    assert len(recorder.requests) == 2 and delays == [0.5]


def test_timeout_then_success():
    recorder, delays = Recorder(httpx.ReadTimeout("slow"), httpx.ConnectError("refused"), ok()), []
    make_client(recorder, delays).query("yuantong", "YT100", None)
    assert delays == [0.5, 1.0]


def test_timeouts_exhausted():
    recorder, delays = Recorder(*[httpx.ReadTimeout("slow")] * 4), []
    with pytest.raises(Kuaidi100Error) as caught:
        make_client(recorder, delays, timeout_seconds=2.5).query("yuantong", "YT100", None)
    assert caught.value.retryable and caught.value.return_code is None
    assert "gave up after 4 attempt(s)" in caught.value.message and "2.5 s" in caught.value.message
    assert len(recorder.requests) == 4 and delays == [0.5, 1.0, 2.0]


def test_server_busy_exhausted_keeps_the_return_code():
    busy = {"result": False, "returnCode": "501", "message": "服务器错误"}
    recorder, delays = Recorder(*[httpx.Response(200, json=busy)] * 2), []
    with pytest.raises(Kuaidi100Error) as caught:
        make_client(recorder, delays, retries=1, backoff_seconds=0.1).query("yuantong", "YT100", None)
    assert caught.value.return_code == "501" and caught.value.retryable
    assert delays == [0.1]


def test_retry_after_seconds_is_respected():
    recorder, delays = Recorder(httpx.Response(429, headers={"Retry-After": "7"}), ok()), []
    make_client(recorder, delays).query("yuantong", "YT100", None)
    assert delays == [7.0]


def test_retry_after_http_date_is_respected():
    later = datetime.now(UTC).timestamp() + 30
    header = datetime.fromtimestamp(later, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
    recorder, delays = Recorder(httpx.Response(503, headers={"Retry-After": header}), ok()), []
    make_client(recorder, delays).query("yuantong", "YT100", None)
    assert 25 <= delays[0] <= 31


def test_retry_after_too_long_is_left_to_the_next_poll():
    recorder, delays = Recorder(httpx.Response(429, headers={"Retry-After": "3600"})), []
    with pytest.raises(Kuaidi100Error) as caught:
        make_client(recorder, delays).query("yuantong", "YT100", None)
    assert caught.value.retryable and "retry after 3600 s" in caught.value.message
    assert len(recorder.requests) == 1 and delays == []


def test_one_http_client_per_resource():
    recorder, delays = Recorder(ok(), ok()), []
    client = make_client(recorder, delays)
    client.query("yuantong", "YT100", None)
    first = client._http
    client.query("yuantong", "YT100", None)
    assert client._http is first
    client.close()
    assert client._http is None


def test_only_failures_of_the_service_itself_say_it_is_unavailable():
    no_record = httpx.Response(
        200, json={"result": False, "returnCode": "500", "message": "查询无结果，请隔段时间再查"}
    )
    bad_sign = httpx.Response(200, json={"result": False, "returnCode": "503", "message": "验证签名失败"})
    busy = httpx.Response(200, json={"result": False, "returnCode": "502", "message": "服务器繁忙"})
    for steps, unavailable in [
        ([httpx.ReadTimeout("slow")] * 2, True),
        ([httpx.ConnectError("refused")] * 2, True),
        ([httpx.Response(503)] * 2, True),
        ([busy] * 2, True),
        ([no_record], False),
        ([bad_sign], False),
        ([httpx.Response(404)], False),
    ]:
        with pytest.raises(Kuaidi100Error) as caught:
            make_client(Recorder(*steps), [], retries=1).query("yuantong", "YT100", None)
        assert isinstance(caught.value, Kuaidi100Unavailable) is unavailable, steps
