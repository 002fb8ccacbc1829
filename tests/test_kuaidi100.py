"""Kuaidi100 protocol, client retries, push callbacks and the SQLite-backed sandbox."""

from __future__ import annotations

import hashlib
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl

import httpx
import pytest
import uvicorn

from order_pipeline.carrier import protocol as kuaidi100
from order_pipeline.carrier import sandbox as carrier_sandbox
from order_pipeline.carrier.protocol import Kuaidi100Error
from order_pipeline.domain import carrier_states
from resources.carrier import Kuaidi100Client

CUSTOMER, KEY, SALT = "CUST0001", "key-abc", "salt-xyz"
REAL_URL = "https://poll.kuaidi100.com/poll/query.do"


def md5_upper(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest().upper()


def answer_payload(state: str = "0", ischeck: str = "0", data: list[dict] | None = None) -> dict:
    return {
        "message": "ok",
        "nu": "YT100",
        "ischeck": ischeck,
        "condition": "00",
        "com": "yuantong",
        "status": "200",
        "state": state,
        "data": data
        if data is not None
        else [
            {
                "time": "2026-11-24 09:00:00",
                "ftime": "2026-11-24 09:00:00",
                "context": "派件中",
                "areaName": "上海,上海市",
                "status": "派件",
            },
            {
                "time": "2026-11-23 20:00:00",
                "ftime": "2026-11-23 20:00:00",
                "context": "已揽收",
                "areaName": None,
                "status": "揽收",
            },
        ],
    }


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


# --- signing and the request --------------------------------------------------------------


def test_sign_is_upper_md5_of_param_key_customer():
    param = '{"com":"yuantong","num":"YT100"}'
    expected = hashlib.md5(b'{"com":"yuantong","num":"YT100"}key-abcCUST0001').hexdigest().upper()
    assert kuaidi100.sign(param, KEY, CUSTOMER) == expected
    assert expected == expected.upper() and len(expected) == 32


def test_query_form_param_is_compact_json_and_phone_only_when_given():
    with_phone = kuaidi100.query_form("shunfeng", "SF1", "13812345678", CUSTOMER, KEY)
    assert with_phone["param"] == '{"com":"shunfeng","num":"SF1","phone":"13812345678","resultv2":"4"}'
    assert with_phone["customer"] == CUSTOMER
    assert with_phone["sign"] == md5_upper(with_phone["param"] + KEY + CUSTOMER)
    without = kuaidi100.query_form("yuantong", "YT1", None, CUSTOMER, KEY)
    assert json.loads(without["param"]) == {"com": "yuantong", "num": "YT1", "resultv2": "4"}


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


# --- states and answers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "category", "label"),
    [
        (0, "in_transit", "在途"),
        (1, "shipped", "揽收"),
        (2, "exception", "疑难"),
        (3, "signed", "签收"),
        (4, "exception", "退签"),
        (5, "in_transit", "派件"),
        (6, "exception", "退回"),
        (7, "in_transit", "转投"),
        (8, "in_transit", "清关"),
        (10, "in_transit", "待清关"),
        (11, "in_transit", "清关中"),
        (12, "in_transit", "已清关"),
        (13, "in_transit", "清关异常"),
        (14, "exception", "拒签"),
        # finer resultv2=4 states fall under their basic state
        (103, "shipped", "已揽收"),
        (1002, "in_transit", "干线"),
        (203, "exception", "拒收"),
        (304, "signed", "投柜或站签收"),
        (501, "in_transit", "投柜或驿站"),
        # unknown states never claim delivery or trouble
        (9, "in_transit", "状态9"),
        (99, "in_transit", "状态99"),
    ],
)
def test_state_category_and_label(state: int, category: str, label: str):
    assert carrier_states.category(state) == category
    assert carrier_states.label(state) == label


def test_every_basic_state_is_mapped():
    assert set(carrier_states.STATE_CATEGORY) == set(range(15)) - {9}
    assert set(carrier_states.STATE_CATEGORY) <= set(carrier_states.STATE_LABEL)


def test_exception_reason():
    assert carrier_states.exception_reason(2, "地址不详") == "疑难: 地址不详"
    assert carrier_states.exception_reason(14, None) == "拒签"
    assert carrier_states.exception_reason(204, "联系不上收件人") == "派件异常: 联系不上收件人"
    assert carrier_states.exception_reason(3, "已签收") is None
    assert carrier_states.exception_reason(99, "?") is None


def test_answer_keeps_state_number_and_out_for_delivery():
    answer = kuaidi100.parse_answer(answer_payload(state="5"))
    assert answer.state == 5 and answer.category == "in_transit" and answer.out_for_delivery
    unknown = kuaidi100.parse_answer(answer_payload(state="99"))
    assert unknown.state == 99 and unknown.category == "in_transit" and not unknown.out_for_delivery
    signed = kuaidi100.parse_answer(answer_payload(state="304", ischeck="1"))
    assert signed.is_signed and signed.category == "signed"


def test_events_are_sorted_deduplicated_and_in_utc():
    data = [
        {"time": "2026-11-24 09:00:00", "context": "派件中", "areaName": "上海,上海市", "status": "派件"},
        {"time": "2026-11-23 08:00:00", "context": "已揽收", "status": "揽收"},  # out of order
        {"time": "2026-11-24 09:00:00", "context": "派件中", "areaName": "上海,上海市", "status": "派件"},  # repeat
        {"time": "2026-11-23 20:00:00", "context": "到达上海", "areaName": "", "status": ""},
        {"time": "2026-11-23 20:00:00", "context": "离开杭州", "areaName": "浙江,杭州市", "status": "干线"},
    ]
    answer = kuaidi100.parse_answer(answer_payload(data=data))
    assert [e.context for e in answer.events] == ["已揽收", "离开杭州", "到达上海", "派件中"]
    first = answer.events[0]
    assert first.at == datetime(2026, 11, 23, 0, 0, tzinfo=UTC)  # 08:00 in Shanghai
    assert first.at.utcoffset().total_seconds() == 0
    assert first.area is None and first.status == "揽收"
    assert answer.events[2].area is None and answer.events[2].status is None
    assert answer.events[3].area == "上海,上海市"
    assert answer.waybill_no == "YT100" and answer.carrier_code == "yuantong" and not answer.is_signed


def test_events_in_another_business_zone():
    data = [{"time": "2026-11-23 08:00:00", "context": "picked up"}]
    answer = kuaidi100.parse_answer(answer_payload(data=data), tz="Europe/Berlin")
    assert answer.events[0].at == datetime(2026, 11, 23, 7, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("code", "retryable"),
    [("400", False), ("408", False), ("500", True), ("501", True), ("502", True), ("503", False), ("601", False)],
)
def test_error_answers(code: str, retryable: bool):
    with pytest.raises(Kuaidi100Error) as caught:
        kuaidi100.parse_answer({"result": False, "returnCode": code, "message": "说明"})
    assert caught.value.return_code == code
    assert caught.value.message == "说明"
    assert caught.value.retryable is retryable


@pytest.mark.parametrize(
    "payload",
    [
        ["not", "a", "dict"],
        {"message": "ok", "nu": "YT100", "com": "yuantong", "data": []},  # no state
        {"message": "ok", "nu": "YT100", "com": "yuantong", "state": "0"},  # no data
        answer_payload(state="signed"),
        answer_payload(data=[{"time": "yesterday", "context": "?"}]),
    ],
)
def test_malformed_answers_are_not_retryable(payload):
    with pytest.raises(Kuaidi100Error) as caught:
        kuaidi100.parse_answer(payload)
    assert caught.value.retryable is False and caught.value.return_code is None
    assert "malformed" in caught.value.message


# --- the client: errors and retries --------------------------------------------------------


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


# --- push -----------------------------------------------------------------------------------


def push_param(status: str = "polling", last: dict | None = None) -> str:
    body = {
        "status": status,
        "billstatus": "got",
        "message": "变化",
        "lastResult": last or answer_payload(state="3", ischeck="1"),
    }
    return json.dumps(body, ensure_ascii=False)


def test_push_verify_and_parse():
    param = push_param()
    sign = md5_upper(param + SALT)
    assert kuaidi100.verify_push(param, sign, SALT)
    update = kuaidi100.parse_push(param)
    assert update.status == "polling" and update.message == "变化"
    assert update.answer is not None and update.answer.is_signed and update.answer.category == "signed"
    assert [e.context for e in update.answer.events] == ["已揽收", "派件中"]


def test_push_tampered_or_unsalted_is_rejected():
    param = push_param()
    sign = md5_upper(param + SALT)
    assert not kuaidi100.verify_push(param.replace("YT100", "YT999"), sign, SALT)
    assert not kuaidi100.verify_push(param, sign, "other-salt")
    assert not kuaidi100.verify_push(param, "", SALT)
    assert not kuaidi100.verify_push(param, md5_upper(param), "")


def test_push_abort_without_tracking():
    update = kuaidi100.parse_push(
        json.dumps({"status": "abort", "message": "3天查询无记录", "lastResult": {"message": "3天查询无记录"}})
    )
    assert update.status == "abort" and update.answer is None


@pytest.mark.parametrize("param", ["not json", "[]", '{"message": "x"}', '{"status": "polling"}'])
def test_push_malformed(param: str):
    with pytest.raises(Kuaidi100Error) as caught:
        kuaidi100.parse_push(param)
    assert not caught.value.retryable


def test_push_replies():
    assert kuaidi100.PUSH_OK == {"result": True, "returnCode": "200", "message": "成功"}
    assert kuaidi100.push_reply(True, "成功") == kuaidi100.PUSH_OK
    assert kuaidi100.push_reply(False, "签名错误") == {"result": False, "returnCode": "500", "message": "签名错误"}


# --- the sandbox --------------------------------------------------------------------------


@pytest.fixture
def carrier_db(tmp_path: Path) -> Path:
    path = tmp_path / "carrier.db"
    with sqlite3.connect(path) as conn:
        carrier_sandbox.create_schema(conn)
        conn.executemany(
            "INSERT INTO carrier_waybills VALUES (?, ?, ?, ?, ?)",
            [("YT100", "yuantong", None, 3, 1), ("SF200", "shunfeng", "5678", 0, 0)],
        )
        conn.executemany(
            "INSERT INTO carrier_events VALUES (?, ?, ?, ?, ?)",
            [
                ("YT100", "2026-11-23 08:00:00", "已揽收", "浙江,杭州市", "揽收"),
                ("YT100", "2026-11-24 15:30:00", "已签收", "上海,上海市", "签收"),
                ("YT100", "2026-11-23 22:10:00", "离开杭州", None, "干线"),
                ("SF200", "2026-11-24 09:00:00", "顺丰速运 已收取快件", "广东,深圳市", "揽收"),
            ],
        )
    conn.close()
    return path


def form_for(com: str, num: str, phone: str | None = None) -> dict[str, str]:
    return kuaidi100.query_form(com, num, phone, CUSTOMER, KEY)


def test_sandbox_answers_in_the_real_shape(carrier_db: Path):
    payload = carrier_sandbox.answer(carrier_db, form_for("yuantong", "YT100"), CUSTOMER, KEY)
    assert payload["message"] == "ok" and payload["status"] == "200"
    assert payload["state"] == "3" and payload["ischeck"] == "1"
    assert payload["nu"] == "YT100" and payload["com"] == "yuantong" and "condition" in payload
    assert [d["time"] for d in payload["data"]] == ["2026-11-24 15:30:00", "2026-11-23 22:10:00", "2026-11-23 08:00:00"]
    assert payload["data"][0] == {
        "time": "2026-11-24 15:30:00",
        "ftime": "2026-11-24 15:30:00",
        "context": "已签收",
        "areaName": "上海,上海市",
        "status": "签收",
    }


@pytest.mark.parametrize(
    ("form", "code"),
    [
        (form_for("yuantong", "YT100") | {"sign": "0" * 32}, "503"),
        (form_for("yuantong", "YT100") | {"customer": "SOMEONE"}, "400"),
        ({"customer": CUSTOMER}, "400"),
        (form_for("yuantong", "NOPE"), "500"),
        (form_for("zhongtong", "YT100"), "500"),
        (form_for("shunfeng", "SF200"), "408"),
        (form_for("shunfeng", "SF200", "1111"), "408"),
    ],
)
def test_sandbox_error_answers(carrier_db: Path, form: dict[str, str], code: str):
    payload = carrier_sandbox.answer(carrier_db, form, CUSTOMER, KEY)
    assert payload["result"] is False and payload["returnCode"] == code and payload["message"]


def test_sandbox_endpoint_uses_the_in_process_transport(carrier_db: Path):
    client = Kuaidi100Client(endpoint=f"sandbox://{carrier_db}", customer=CUSTOMER, key=KEY)
    answer = client.query("yuantong", "YT100", None)
    assert answer.is_signed and [e.context for e in answer.events] == ["已揽收", "离开杭州", "已签收"]
    assert answer.events[-1].at == datetime(2026, 11, 24, 7, 30, tzinfo=UTC)
    client.close()


@pytest.fixture
def sandbox_url(carrier_db: Path) -> Iterator[str]:
    """The sandbox served by uvicorn on a free loopback port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(carrier_sandbox.app(carrier_db, CUSTOMER, KEY), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}{carrier_sandbox.QUERY_PATH}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the sandbox server did not start")
        time.sleep(0.02)


def test_sandbox_over_loopback_http(sandbox_url: str):
    client = Kuaidi100Client(endpoint=sandbox_url, customer=CUSTOMER, key=KEY, timeout_seconds=5)
    answer = client.query("yuantong", "YT100", None)
    assert answer.category == "signed" and len(answer.events) == 3

    with pytest.raises(Kuaidi100Error) as caught:
        client.query("shunfeng", "SF200", None)
    assert caught.value.return_code == "408" and not caught.value.retryable

    for phone in ("5678", "13912345678"):
        shunfeng = client.query("shunfeng", "SF200", phone)
        assert shunfeng.carrier_code == "shunfeng" and shunfeng.category == "in_transit"
        assert shunfeng.events[0].area == "广东,深圳市"

    with pytest.raises(Kuaidi100Error) as caught:
        client.query("yuantong", "NOPE", None)
    assert caught.value.return_code == "500" and caught.value.retryable

    wrong_key = Kuaidi100Client(endpoint=sandbox_url, customer=CUSTOMER, key="wrong")
    with pytest.raises(Kuaidi100Error) as caught:
        wrong_key.query("yuantong", "YT100", None)
    assert caught.value.return_code == "503"
    client.close()
    wrong_key.close()
