"""The Kuaidi100 subscription protocol: the subscribe form, each answer code, verified pushes."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from helpers import KEY, SALT, answer_payload, md5_upper

from order_pipeline.carrier import protocol
from order_pipeline.carrier.protocol import Kuaidi100Error
from order_pipeline.carrier.subscription import (
    MONTHLY_CAP,
    RESUBSCRIBE_AFTER,
    Outcome,
    parse_subscribe_answer,
    subscribe_form,
    verified_push,
)

CALLBACK = "http://track.example.com/hooks/kuaidi100"


def test_subscribe_form_carries_the_documented_fields():
    form = subscribe_form(
        "shunfeng", "SF1234567890", KEY, CALLBACK, SALT, phone="13912345678", from_="浙江省杭州市", to="上海市浦东新区"
    )
    assert set(form) == {"schema", "param"} and form["schema"] == "json"
    assert json.loads(form["param"]) == {
        "company": "shunfeng",
        "number": "SF1234567890",
        "from": "浙江省杭州市",
        "to": "上海市浦东新区",
        "key": KEY,
        "parameters": {"callbackurl": CALLBACK, "salt": SALT, "resultv2": "8", "phone": "13912345678"},
    }
    assert "上海市" in form["param"]  # Chinese stays readable: Kuaidi100 reads the JSON, not an escape of it


def test_subscribe_form_asks_for_no_predicted_arrival_without_a_destination():
    param = json.loads(subscribe_form("yuantong", "YT100", KEY, CALLBACK, SALT)["param"])
    assert param["parameters"] == {"callbackurl": CALLBACK, "salt": SALT, "resultv2": "4"}
    assert "from" not in param and "to" not in param and "phone" not in param["parameters"]


def test_the_documented_limits():
    assert MONTHLY_CAP == 4 and RESUBSCRIBE_AFTER.total_seconds() == 30 * 60


@pytest.mark.parametrize(
    ("code", "outcome", "tracked"),
    [
        ("200", Outcome.ACCEPTED, True),
        ("501", Outcome.DUPLICATE, True),
        ("500", Outcome.RETRY_LATER, False),
        ("600", Outcome.STOP_KEY, False),
        ("601", Outcome.STOP_KEY, False),
        ("700", Outcome.REJECTED, False),
        ("701", Outcome.REJECTED, False),
        ("702", Outcome.REJECTED, False),
    ],
)
def test_each_answer_code(code: str, outcome: Outcome, tracked: bool):
    answer = parse_subscribe_answer({"result": code == "200", "returnCode": code, "message": "m"})
    assert answer.outcome is outcome and answer.return_code == code and answer.tracked is tracked


def test_a_rejection_says_what_its_code_means_and_what_kuaidi100_said():
    answer = parse_subscribe_answer(
        {"result": False, "returnCode": 702, "message": "POLL:识别不到该单号对应的快递公司"}
    )
    assert answer.reason == "the carrier of this number is not recognised: POLL:识别不到该单号对应的快递公司"


@pytest.mark.parametrize(
    "payload", [None, [], "ok", {"result": True}, {"returnCode": "999", "message": "?"}, {"returnCode": ""}]
)
def test_what_is_not_a_subscribe_answer_raises(payload):
    with pytest.raises(Kuaidi100Error):
        parse_subscribe_answer(payload)


def push(status: str = "polling", salt: str = SALT, **body) -> dict[str, str]:
    last = body.pop("lastResult", answer_payload(data=[{"time": "2026-11-24 08:00:00", "context": "已揽收"}]))
    param = json.dumps({"status": status, "message": "", "lastResult": last, **body}, ensure_ascii=False)
    return {"param": param, "sign": md5_upper(param + salt)}


def test_a_signed_push_is_verified_and_parsed_with_the_answer_parser():
    update = verified_push(push(), SALT)
    assert update.status == "polling" and update.waybill_no == "YT100" and update.carrier_code == "yuantong"
    assert update.answer is not None and update.answer.events[0].at == datetime(2026, 11, 24, 0, 0, tzinfo=UTC)
    assert not update.auto_check and update.com_old is None and update.com_new is None


def test_the_sign_is_compared_whatever_its_case():
    form = push()
    assert verified_push({**form, "sign": form["sign"].lower()}, SALT).waybill_no == "YT100"


@pytest.mark.parametrize(
    "form",
    [
        push(salt="another salt"),
        {**push(), "sign": "0" * 32},
        {**push(), "sign": ""},
        {"param": "", "sign": md5_upper(SALT)},
    ],
)
def test_a_wrong_or_missing_sign_is_refused(form):
    with pytest.raises(Kuaidi100Error, match="push refused"):
        verified_push(form, SALT)


def test_without_a_salt_no_push_verifies():
    form = push(salt="")
    with pytest.raises(Kuaidi100Error, match="sign"):
        verified_push(form, "")


@pytest.mark.parametrize(
    ("form", "problem"),
    [
        (push(status="finished"), "status 'finished'"),
        (push(lastResult={"message": "", "state": "0"}), "names no waybill"),
    ],
)
def test_a_signed_push_that_is_not_one_is_refused(form, problem):
    with pytest.raises(Kuaidi100Error, match=problem):
        verified_push(form, SALT)


def test_an_abort_names_its_waybill_without_tracking():
    last = {"message": "", "nu": "YT100", "com": "yuantong", "state": "0", "ischeck": "0"}
    update = verified_push(push("abort", lastResult=last), SALT)
    assert update.status == "abort" and update.answer is None and update.waybill_no == "YT100"


def test_auto_check_carries_the_corrected_carrier_code():
    update = verified_push(push("polling", autoCheck="1", comOld="yuantong", comNew="ems"), SALT)
    assert update.auto_check and update.com_old == "yuantong" and update.com_new == "ems"
    blank = verified_push(push("abort", autoCheck="0", comOld="", comNew=""), SALT)
    assert not blank.auto_check and blank.com_old is None and blank.com_new is None


@pytest.mark.parametrize(
    ("arrival", "expected"),
    [
        ("2026-11-27 18:00:00", datetime(2026, 11, 27, 10, 0, tzinfo=UTC)),
        ("2026-11-27 18:00", datetime(2026, 11, 27, 10, 0, tzinfo=UTC)),
        ("2026-11-27", datetime(2026, 11, 27, 15, 59, 59, tzinfo=UTC)),  # by the end of that day, China time
        ("", None),
        ("明天", None),
        (None, None),
    ],
)
def test_the_predicted_arrival_is_read_from_the_answer(arrival, expected):
    payload = answer_payload() | ({"arrivalTime": arrival} if arrival is not None else {})
    assert protocol.parse_answer(payload).predicted_arrival == expected


def test_a_push_carries_the_predicted_arrival_of_its_last_result():
    last = answer_payload(data=[{"time": "2026-11-24 08:00:00", "context": "已揽收"}]) | {
        "arrivalTime": "2026-11-26 12:00:00"
    }
    update = verified_push(push(lastResult=last), SALT)
    assert update.answer is not None
    assert update.answer.predicted_arrival == datetime(2026, 11, 26, 4, 0, tzinfo=UTC)
