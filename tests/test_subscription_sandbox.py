"""The Kuaidi100 stand-in's subscriptions: it checks the subscribe request, answers each code, pushes signed news."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from helpers import KEY, NOW, SALT, D, M, write_carrier_db

from order_pipeline.carrier import protocol, sandbox
from order_pipeline.carrier.receiver import in_process_deliver
from order_pipeline.carrier.subscription import subscribe_form, verified_push
from order_pipeline.contract.schema import carrier_subscriptions, raw_tracking
from order_pipeline.warehouse.engine import Warehouse

CALLBACK = "http://127.0.0.1:8080/hooks/kuaidi100"
PHONE = "13912345678"


@pytest.fixture
def carrier_db(tmp_path: Path) -> Path:
    return write_carrier_db(tmp_path / "carrier.db")


def sub(db: Path, company: str, number: str, now: datetime = NOW, **kw) -> dict:
    kw.setdefault("phone", PHONE)
    key = kw.pop("key", KEY)
    form = subscribe_form(company, number, key, kw.pop("callback", CALLBACK), kw.pop("salt", SALT), **kw)
    return sandbox.subscribe(db, form, KEY, now, expired_keys=frozenset({"old-key"}))


class Callback:
    """Stands in for the receiver: keeps each push, acknowledges as told."""

    def __init__(self, ok: bool = True):
        self.ok, self.pushes = ok, []

    def __call__(self, url: str, form: dict[str, str]) -> bool:
        self.pushes.append((url, form))
        return self.ok

    def updates(self):
        return [verified_push(form, SALT) for _, form in self.pushes]


def test_a_subscription_is_accepted_once_while_it_is_tracked(carrier_db: Path):
    assert sub(carrier_db, "shunfeng", "SF2000002") == {"result": True, "returnCode": "200", "message": "提交成功"}
    again = sub(carrier_db, "shunfeng", "SF2000002")
    assert again == {"result": False, "returnCode": "501", "message": "重复订阅"}


@pytest.mark.parametrize(
    ("kw", "company", "number", "code"),
    [
        ({"key": "wrong"}, "yuantong", "YT1000001", "600"),
        ({"key": "old-key"}, "yuantong", "YT1000001", "601"),
        ({"callback": ""}, "yuantong", "YT1000001", "700"),
        ({"callback": "ftp://example.com/x"}, "yuantong", "YT1000001", "700"),
        ({"callback": "http:///hooks"}, "yuantong", "YT1000001", "700"),
        ({"salt": ""}, "yuantong", "YT1000001", "700"),
        ({"phone": None}, "shunfeng", "SF2000002", "700"),
        ({"phone": None}, "zhongtong", "ZT3000003", "700"),
        ({}, "yuantong", "YT1", "700"),
        ({}, "yuantong", "Y" * 33, "700"),
        ({}, "", "YT1000001", "700"),
        ({}, "nosuchcarrier", "YT1000001", "702"),
    ],
)
def test_the_stand_in_checks_the_subscribe_request(carrier_db: Path, kw, company, number, code):
    answer = sub(carrier_db, company, number, **kw)
    assert answer["result"] is False and answer["returnCode"] == code and answer["message"]


def test_without_a_phone_other_carriers_subscribe(carrier_db: Path):
    assert sub(carrier_db, "yuantong", "YT1000001", phone=None)["returnCode"] == "200"


def test_a_request_out_of_spec_gets_a_server_error(carrier_db: Path):
    for form in ({"schema": "json", "param": "{not json"}, {"schema": "xml", "param": "{}"}, {}):
        assert sandbox.subscribe(carrier_db, form, KEY, NOW)["returnCode"] == "500"


def test_auto_com_finds_the_carrier_of_a_known_number_only(carrier_db: Path):
    def auto(number: str) -> dict:
        param = json.loads(subscribe_form("", number, KEY, CALLBACK, SALT)["param"])
        param["parameters"]["autoCom"] = "1"
        return sandbox.subscribe(carrier_db, {"schema": "json", "param": json.dumps(param)}, KEY, NOW)

    assert auto("YT1000001")["returnCode"] == "200"
    assert auto("XX9999999")["returnCode"] == "702"


def test_news_is_pushed_signed_once_and_the_signature_ends_tracking(carrier_db: Path):
    sub(carrier_db, "shunfeng", "SF2000002")
    sub(carrier_db, "yuantong", "YT1000001")
    callback = Callback()
    pushed = sandbox.push_updates(carrier_db, NOW, callback)
    assert [(p.number, p.status, p.delivered) for p in pushed] == [
        ("SF2000002", "polling", True),
        ("YT1000001", "shutdown", True),
    ]
    assert {url for url, _ in callback.pushes} == {CALLBACK}
    polling, shutdown = callback.updates()
    assert polling.answer is not None and [e.context for e in polling.answer.events] == ["顺丰速运 已收取快件"]
    assert shutdown.answer is not None and shutdown.answer.is_signed and len(shutdown.answer.events) == 2

    assert sandbox.push_updates(carrier_db, NOW + 1 * M, callback) == []  # no news
    with closing(sqlite3.connect(carrier_db)) as conn, conn:
        conn.execute(
            "INSERT INTO carrier_events VALUES ('SF2000002', '2026-11-25 08:00:00', '到达上海转运中心', NULL, NULL)"
        )
    assert [p.status for p in sandbox.push_updates(carrier_db, NOW + 2 * M, callback)] == ["polling"]
    latest = callback.updates()[-1]
    assert latest.answer is not None and len(latest.answer.events) == 2
    # A shut-down waybill can be subscribed again (say, a return), unlike one still tracked.
    assert sub(carrier_db, "yuantong", "YT1000001")["returnCode"] == "200"


def test_a_push_the_callback_does_not_acknowledge_is_pushed_again(carrier_db: Path):
    sub(carrier_db, "shunfeng", "SF2000002")
    refusing = Callback(ok=False)
    assert [p.delivered for p in sandbox.push_updates(carrier_db, NOW, refusing)] == [False]
    accepting = Callback()
    assert [p.delivered for p in sandbox.push_updates(carrier_db, NOW + 1 * M, accepting)] == [True]
    assert refusing.pushes[0][1]["param"] == accepting.pushes[0][1]["param"]


def test_the_predicted_arrival_comes_with_resultv2_8(carrier_db: Path):
    sub(carrier_db, "shunfeng", "SF2000002", to="上海市浦东新区")
    callback = Callback()
    sandbox.push_updates(carrier_db, NOW, callback)
    (update,) = callback.updates()
    assert update.answer is not None
    assert update.answer.predicted_arrival == datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def test_three_days_without_a_record_abort_and_the_fifth_subscription_in_a_month_is_refused(carrier_db: Path):
    callback, now = Callback(), datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
    for _ in range(4):
        assert sub(carrier_db, "zhongtong", "ZT3000003", now)["returnCode"] == "200"
        assert sandbox.push_updates(carrier_db, now + 3 * D - M, callback) == []
        (aborted,) = sandbox.push_updates(carrier_db, now + 3 * D, callback)
        assert aborted.status == "abort"
        now += 3 * D + 30 * M
    update = callback.updates()[-1]
    assert update.message == "3天查询无记录" and update.waybill_no == "ZT3000003" and update.answer is None
    # Kuaidi100 answers a 5th subscription of the month as a duplicate.
    assert sub(carrier_db, "zhongtong", "ZT3000003", now)["returnCode"] == "501"
    assert sub(carrier_db, "zhongtong", "ZT3000003", datetime(2026, 12, 1, tzinfo=UTC))["returnCode"] == "200"


def test_sixty_days_without_news_abort(carrier_db: Path):
    sub(carrier_db, "shunfeng", "SF2000002")
    callback = Callback()
    sandbox.push_updates(carrier_db, NOW, callback)
    newest = datetime(2026, 11, 24, 1, 0, tzinfo=UTC)  # 09:00 China time
    assert sandbox.push_updates(carrier_db, newest + 60 * D - M, callback) == []
    (aborted,) = sandbox.push_updates(carrier_db, newest + 60 * D, callback)
    assert aborted.status == "abort" and callback.updates()[-1].message == "60天无变化"


def test_a_generated_carrier_database_takes_subscriptions(tmp_path: Path):
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path)) as conn, conn:
        sandbox.create_schema(conn)  # what the demo generator writes
        conn.execute("INSERT INTO carrier_waybills VALUES ('YT1000001', 'yuantong', NULL, 0, 0)")
        conn.execute("INSERT INTO carrier_events VALUES ('YT1000001', '2026-11-23 08:00:00', '已揽收', NULL, NULL)")
    param = json.dumps({"com": "yuantong", "num": "YT1000001", "resultv2": "8"})
    query = {"customer": "C", "param": param, "sign": protocol.sign(param, KEY, "C")}
    answered = sandbox.answer(path, query, "C", KEY)
    assert answered["nu"] == "YT1000001" and "arrivalTime" not in answered
    assert sub(path, "yuantong", "YT1000001")["returnCode"] == "200"
    assert [p.status for p in sandbox.push_updates(path, NOW, Callback())] == ["polling"]


def test_the_in_process_transport_routes_subscriptions(carrier_db: Path):
    transport = httpx.MockTransport(sandbox.handler(carrier_db, "C", KEY, clock=lambda: NOW))
    with httpx.Client(transport=transport) as client:
        form = subscribe_form("yuantong", "YT1000001", KEY, CALLBACK, SALT)
        response = client.post(f"http://sandbox{sandbox.SUBSCRIBE_PATH}", data=form)
        assert response.json()["returnCode"] == "200"
        assert client.post("http://sandbox/elsewhere", data=form).status_code == 404


def test_pushes_are_delivered_over_http_as_form_posts():
    seen = []

    def receiver(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        ok = b"sign=" in request.content
        return httpx.Response(200, json={"result": ok, "returnCode": "200" if ok else "500", "message": "成功"})

    with httpx.Client(transport=httpx.MockTransport(receiver)) as client:
        deliver = sandbox.http_deliver(client)
        assert deliver(CALLBACK, {"param": "{}", "sign": "X"}) is True
        assert deliver(CALLBACK, {"param": "{}"}) is False
    assert seen[0].headers["content-type"] == "application/x-www-form-urlencoded"

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with httpx.Client(transport=httpx.MockTransport(down)) as client:
        assert sandbox.http_deliver(client)(CALLBACK, {"param": "{}", "sign": "X"}) is False


def test_a_wrong_carrier_code_is_corrected_as_kuaidi100_does(carrier_db: Path):
    assert sub(carrier_db, "yunda", "YT1000001")["returnCode"] == "200"  # the stand-in knows it as yuantong
    callback = Callback()
    assert sandbox.push_updates(carrier_db, NOW + 3 * D - M, callback) == []
    (aborted,) = sandbox.push_updates(carrier_db, NOW + 3 * D, callback)
    assert aborted.status == "abort" and aborted.company == "yunda"
    abort = callback.updates()[-1]
    assert abort.com_new == "yuantong" and not abort.auto_check and abort.com_old is None
    (corrected,) = sandbox.push_updates(carrier_db, NOW + 3 * D + M, callback)
    assert (corrected.company, corrected.status) == ("yuantong", "shutdown")
    news = callback.updates()[-1]
    assert news.auto_check and news.com_old == "yunda" and news.com_new == "yuantong"
    assert news.answer is not None and len(news.answer.events) == 2


def test_pushes_handed_over_in_process_are_stored_as_the_receiver_stores_them(carrier_db: Path, tmp_path: Path):
    """Without a server, the stand-in's pushes go through the receiver's own checks and store."""
    warehouse = Warehouse(f"sqlite:///{tmp_path / 'wh.db'}")
    warehouse.create_schema()
    sub(carrier_db, "shunfeng", "SF2000002", to="上海市浦东新区")
    sub(carrier_db, "yuantong", "YT1000001")
    pushed = sandbox.push_updates(carrier_db, NOW, in_process_deliver(warehouse.engine, SALT, lambda: NOW))
    assert [(p.number, p.delivered) for p in pushed] == [("SF2000002", True), ("YT1000001", True)]
    with warehouse.engine.connect() as conn:
        stored = {r.waybill_no: r for r in conn.execute(sa.select(raw_tracking))}
        states = dict(conn.execute(sa.select(carrier_subscriptions.c.waybill_no, carrier_subscriptions.c.state)).all())
    assert {w: r.via for w, r in stored.items()} == {"SF2000002": "push", "YT1000001": "push"}
    assert stored["SF2000002"].predicted_arrival is not None and stored["YT1000001"].is_signed
    assert states == {"SF2000002": "subscribed", "YT1000001": "finished"}
    # A receiver with another salt refuses them, and the stand-in keeps them for the next round.
    sub(carrier_db, "zhongtong", "ZT3000003", phone="13912345678")
    with closing(sqlite3.connect(carrier_db)) as conn, conn:
        conn.execute("INSERT INTO carrier_events VALUES ('ZT3000003', '2026-11-25 08:00:00', '已揽收', NULL, NULL)")
    wrong = in_process_deliver(warehouse.engine, "another-salt", lambda: NOW)
    assert [p.delivered for p in sandbox.push_updates(carrier_db, NOW + M, wrong)] == [False]
