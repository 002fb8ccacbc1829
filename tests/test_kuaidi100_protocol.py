"""The Kuaidi100 protocol: the signed query form, states and answers, error answers, push callbacks."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest
from helpers import CUSTOMER, KEY, SALT, answer_payload, md5_upper

from order_pipeline.carrier import protocol as kuaidi100
from order_pipeline.carrier.protocol import Kuaidi100Error
from order_pipeline.domain import carrier_states

# --- signing --------------------------------------------------------------------------------


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
    offset = first.at.utcoffset()
    assert offset is not None and offset.total_seconds() == 0
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
