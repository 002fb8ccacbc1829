"""The Kuaidi100 push receiver (signed pushes stored, anything else refused) and the health check."""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from contextlib import closing
from datetime import timedelta

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa
from helpers import KEY, NOW, PUSH_SALT, PUSH_SALT_ENV, WAYBILL, push_form, serve_app, write_carrier_db

from order_pipeline.carrier import sandbox as carrier_sandbox
from order_pipeline.carrier.subscription import subscribe_form
from order_pipeline.contract.schema import carrier_subscriptions, raw_tracking, raw_tracking_events


def stored_tracking(client) -> list[dict]:
    with client.world.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(raw_tracking)).mappings()]


def test_push_with_good_sign_is_stored(client):
    r = client.post("/hooks/kuaidi100", data=push_form())
    assert r.status_code == 200
    assert r.json() == {"result": True, "returnCode": "200", "message": "成功"}
    rows = stored_tracking(client)
    assert [(t["waybill_no"], t["via"]) for t in rows] == [(WAYBILL, "push")]
    with client.world.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(raw_tracking_events)).scalar() == 2


def test_the_carriers_predicted_arrival_in_a_push_is_stored_with_the_waybill(client):
    assert client.post("/hooks/kuaidi100", data=push_form(arrival="2026-11-27 18:00:00")).status_code == 200
    (row,) = stored_tracking(client)
    assert pd.Timestamp(row["predicted_arrival"]).tz_localize(None) == pd.Timestamp("2026-11-27 10:00")  # UTC
    assert client.post("/hooks/kuaidi100", data=push_form()).status_code == 200  # the next push has none
    (row,) = stored_tracking(client)
    assert row["predicted_arrival"] is None


def test_push_as_multipart_is_read_too(client):
    form = push_form()
    r = client.post("/hooks/kuaidi100", files={k: (None, v) for k, v in form.items()})
    assert r.status_code == 200 and r.json()["result"] is True


@pytest.mark.parametrize(
    "change, status",
    [
        (lambda f: {**f, "sign": "0" * 32}, 403),
        (lambda f: {**f, "param": f["param"].replace("深圳", "广州")}, 403),  # param changed after signing
        (lambda f: {"param": f["param"]}, 400),
        (lambda f: {}, 400),
        (lambda f: push_form(salt="someone-elses-salt"), 403),
    ],
)
def test_push_with_bad_or_missing_sign_stores_nothing(client, caplog, change, status):
    r = client.post("/hooks/kuaidi100", data=change(push_form()))
    assert r.status_code == status
    body = r.json()
    assert body["result"] is False and body["returnCode"] == str(status) and body["message"]
    assert stored_tracking(client) == []
    assert any("Kuaidi100 push" in rec.getMessage() and "refused" in rec.getMessage() for rec in caplog.records)


def test_signed_but_malformed_push_is_refused(client):
    param = '{"status": "polling"'
    sign = hashlib.md5((param + PUSH_SALT).encode()).hexdigest().upper()
    r = client.post("/hooks/kuaidi100", data={"param": param, "sign": sign})
    assert r.status_code == 400 and r.json()["result"] is False
    assert stored_tracking(client) == []


def test_push_without_configured_salt_is_refused(client, monkeypatch):
    monkeypatch.setattr(client.web, "push_salt", None)
    r = client.post("/hooks/kuaidi100", data=push_form())
    assert r.status_code == 403 and stored_tracking(client) == []


def test_push_salt_env_is_read_at_start(make_client, monkeypatch):
    monkeypatch.delenv(PUSH_SALT_ENV, raising=False)
    client = make_client()
    assert client.web.push_salt == PUSH_SALT


def test_health(client):
    assert client.get("/healthz").text == "ok"


def test_signed_push_nested_too_deeply_is_refused_with_a_clear_message(client, caplog):
    param = "[" * 100_000 + "]" * 100_000
    sign = hashlib.md5((param + PUSH_SALT).encode()).hexdigest().upper()
    with caplog.at_level(logging.INFO):
        r = client.post("/hooks/kuaidi100", data={"param": param, "sign": sign})
    assert r.status_code == 400
    assert r.json()["result"] is False and "nested" in r.json()["message"]
    assert stored_tracking(client) == []
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR or rec.exc_info]


@pytest.mark.parametrize(
    "base_url, hsts", [("https://track.example.com", "max-age=31536000"), ("http://track.example.com", None)]
)
def test_strict_transport_security_only_when_served_over_https(make_client, base_url, hsts):
    client = make_client({"base_url": base_url})
    for path in ("/healthz", "/ops/login", "/order/SO1?t=bad"):
        assert client.get(path).headers.get("strict-transport-security") == hsts, path
    assert client.post("/hooks/kuaidi100", data={}).headers.get("strict-transport-security") == hsts


def signed(change: dict, salt: str = PUSH_SALT) -> dict[str, str]:
    """A push_form() with some of its param's fields changed, signed again."""
    param = {**json.loads(push_form()["param"]), **change}
    text = json.dumps(param, ensure_ascii=False)
    return {"param": text, "sign": hashlib.md5((text + salt).encode("utf-8")).hexdigest().upper()}


def subscription(client) -> dict:
    with client.world.engine.connect() as conn:
        return dict(conn.execute(sa.select(carrier_subscriptions)).mappings().one())


def test_a_push_records_the_waybill_as_subscribed(client):
    assert client.post("/hooks/kuaidi100", data=push_form()).status_code == 200
    row = subscription(client)
    assert (row["waybill_no"], row["state"], row["carrier_code"]) == (WAYBILL, "subscribed", "shunfeng")
    assert row["last_push_at"] is not None


def test_an_abort_push_leaves_the_waybill_to_be_subscribed_again_after_30_minutes(client, clock):
    r = client.post("/hooks/kuaidi100", data=signed({"status": "abort", "message": "3天查询无记录"}))
    assert r.status_code == 200
    row = subscription(client)
    assert row["state"] == "aborted" and row["message"] == "3天查询无记录"
    assert pd.Timestamp(row["next_attempt_at"]).tz_localize(None) == pd.Timestamp(
        clock.now + timedelta(minutes=30)
    ).tz_localize(None)
    assert stored_tracking(client)  # what it carried is stored all the same: polling takes over


def test_a_shutdown_push_finishes_the_waybill_and_a_later_push_does_not_reopen_it(client):
    client.post("/hooks/kuaidi100", data=signed({"status": "shutdown"}))
    assert subscription(client)["state"] == "finished"
    client.post("/hooks/kuaidi100", data=push_form())
    assert subscription(client)["state"] == "finished"


def test_a_push_that_corrected_the_carrier_code_is_adopted(client):
    last = {**json.loads(push_form()["param"])["lastResult"], "com": "zhongtong"}
    change = {"autoCheck": "1", "comOld": "shunfeng", "comNew": "zhongtong", "lastResult": last}
    assert client.post("/hooks/kuaidi100", data=signed(change)).status_code == 200
    assert subscription(client)["carrier_code"] == "zhongtong"
    assert stored_tracking(client)[0]["carrier_code"] == "zhongtong"


def test_the_stand_ins_pushes_over_http_to_the_running_receiver_leave_each_waybill_as_the_protocol_says(
    client, tmp_path
):
    """Subscribed with the running server's address, the stand-in POSTs signed pushes to it."""
    carrier_db = write_carrier_db(tmp_path / "carrier.db")
    with serve_app(client.app) as port, httpx.Client(timeout=10) as http:
        callback = f"http://127.0.0.1:{port}/hooks/kuaidi100"
        for company, number in (("shunfeng", "SF2000002"), ("yuantong", "YT1000001"), ("zhongtong", "ZT3000003")):
            form = subscribe_form(company, number, KEY, callback, PUSH_SALT, "13912345678", to="上海市浦东新区")
            assert carrier_sandbox.subscribe(carrier_db, form, KEY, NOW)["returnCode"] == "200"
        sent: list[dict[str, str]] = []

        def deliver(url: str, form: dict[str, str]) -> bool:
            sent.append(form)
            return carrier_sandbox.http_deliver(http)(url, form)

        first = carrier_sandbox.push_updates(carrier_db, NOW, deliver)
        assert {(p.number, p.status, p.delivered) for p in first} == {
            ("SF2000002", "polling", True),
            ("YT1000001", "shutdown", True),
        }
        aborted = carrier_sandbox.push_updates(carrier_db, NOW + timedelta(days=3), deliver)
        assert [(p.number, p.status, p.delivered) for p in aborted] == [("ZT3000003", "abort", True)]
        # News, then a replay of the older first push: acknowledged, and the newer tracking stays.
        with closing(sqlite3.connect(carrier_db)) as conn, conn:
            conn.execute(
                "INSERT INTO carrier_events VALUES ('SF2000002', '2026-11-25 08:00:00', '到达上海转运中心', NULL, NULL)"
            )
        (news,) = carrier_sandbox.push_updates(carrier_db, NOW + timedelta(days=3, minutes=1), deliver)
        assert news.status == "polling" and news.delivered
        replay = http.post(callback, data=next(f for f in sent if "SF2000002" in f["param"]))
        assert replay.status_code == 200
        # Signed with another salt: refused.
        refused = http.post(callback, data=push_form("SF2000002", salt="someone-elses-salt"))
        assert refused.status_code == 403 and refused.json()["result"] is False
    rows = {r["waybill_no"]: r for r in stored_tracking(client)}
    assert {w: r["via"] for w, r in rows.items()} == {"SF2000002": "push", "YT1000001": "push"}
    assert rows["YT1000001"]["is_signed"] and rows["SF2000002"]["predicted_arrival"] is not None
    assert rows["SF2000002"]["last_context"] == "到达上海转运中心"  # not rolled back by the replay
    with client.world.engine.connect() as conn:
        states = {r.waybill_no: r for r in conn.execute(sa.select(carrier_subscriptions))}
    assert {w: r.state for w, r in states.items()} == {
        "SF2000002": "subscribed",
        "YT1000001": "finished",
        "ZT3000003": "aborted",
    }
    assert states["ZT3000003"].message == "3天查询无记录"


def test_a_corrected_carrier_code_and_an_updateall_push_over_http_reach_the_waybill(client, tmp_path):
    """Subscribed under the wrong code, the stand-in aborts naming the right one, then pushes under it
    with autoCheck 1; an `updateall` push is stored like any news."""
    carrier_db = write_carrier_db(tmp_path / "carrier.db")
    with serve_app(client.app) as port, httpx.Client(timeout=10) as http:
        callback = f"http://127.0.0.1:{port}/hooks/kuaidi100"
        form = subscribe_form("yunda", "YT1000001", KEY, callback, PUSH_SALT)  # the stand-in knows it as yuantong
        assert carrier_sandbox.subscribe(carrier_db, form, KEY, NOW)["returnCode"] == "200"
        deliver = carrier_sandbox.http_deliver(http)
        (aborted,) = carrier_sandbox.push_updates(carrier_db, NOW + timedelta(days=3), deliver)
        (corrected,) = carrier_sandbox.push_updates(carrier_db, NOW + timedelta(days=3, minutes=1), deliver)
        assert (aborted.status, aborted.delivered) == ("abort", True)
        assert (corrected.company, corrected.status, corrected.delivered) == ("yuantong", "shutdown", True)
        assert http.post(callback, data=push_form("SF2000002", status="updateall")).status_code == 200
    rows = {r["waybill_no"]: r for r in stored_tracking(client)}
    assert rows["YT1000001"]["carrier_code"] == "yuantong" and rows["YT1000001"]["is_signed"]
    assert rows["SF2000002"]["via"] == "push"
    with client.world.engine.connect() as conn:
        states = {r.waybill_no: r for r in conn.execute(sa.select(carrier_subscriptions))}
    assert (states["YT1000001"].state, states["YT1000001"].carrier_code) == ("finished", "yuantong")
    assert states["SF2000002"].state == "subscribed"
