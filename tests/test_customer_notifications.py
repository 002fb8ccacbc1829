"""Customer messages end to end on a warehouse: what is due, when it may go, and that it goes once."""

from __future__ import annotations

import json
import threading
from datetime import UTC, date, datetime, timedelta

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa
from helpers import NOW, D, H, M, make_config, order, publish_rows

from order_pipeline.contract.customer_schema import customer_notifications, customer_outbox, customer_suppressions
from order_pipeline.contract.parsing import ConfigError
from order_pipeline.contract.schema import RAW_TABLES
from order_pipeline.domain.links import TokenCheck, verify_token
from order_pipeline.notify import ledger
from order_pipeline.notify.phones import suppress
from order_pipeline.notify.runtime import build_notifier
from order_pipeline.notify.sandbox.aliyun import AliyunSandbox
from order_pipeline.notify.sandbox.tencent import TencentSandbox
from order_pipeline.notify.sandbox.wechat import WeChatSandbox, handler
from order_pipeline.notify.sender import Notifier
from order_pipeline.notify.settings import load_notify_settings

LINK_SECRET = "notify-link-secret-0123456789"
ALL_EVENTS = {e: {} for e in ("order_created", "shipped", "out_for_delivery", "delivered", "exception", "delayed")}
WEB = {"base_url": "https://track.example.com", "link_secret_env": "TEST_NOTIFY_LINK_SECRET"}
PHONE = "13812345678"


@pytest.fixture(autouse=True)
def _secrets(monkeypatch):
    monkeypatch.setenv("TEST_NOTIFY_LINK_SECRET", LINK_SECRET)
    monkeypatch.setenv("TEST_ALIYUN_ID", "LTAI5tTestKeyId")
    monkeypatch.setenv("TEST_ALIYUN_SECRET", "test-access-key-secret-0123")
    monkeypatch.setenv("TEST_WECHAT_SECRET", "wechat-app-secret-0123456789")
    monkeypatch.setenv("TEST_TENCENT_ID", "AKIDtestsecretid")
    monkeypatch.setenv("TEST_TENCENT_KEY", "tencent-secret-key-0123")


def notifier(tmp_path, engine, transports=None, **settings) -> Notifier:
    section = {"channels": {"outbox": {"type": "outbox"}}, "events": ALL_EVENTS, **settings}
    config = make_config(tmp_path, str(engine.url), web=WEB, notifications=section)
    built = build_notifier(config, engine, transports)
    assert built is not None
    return built


def rows(engine) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql(sa.select(customer_notifications).order_by(customer_notifications.c.id), conn)


def sent(engine) -> list[tuple[str, str]]:
    r = rows(engine)
    return list(r[r["status"] == "sent"][["order_no", "event"]].itertuples(index=False, name=None))


def outbox(engine) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql(sa.select(customer_outbox).order_by(customer_outbox.c.id), conn)


def new_order(no: str = "SO-1", **fields) -> dict:
    return order(no, "ordered", **({"ordered_at": NOW - H} | fields))


def shipped(no: str = "SO-1", stage: str = "shipped", **fields) -> dict:
    defaults = {"ordered_at": NOW - 2 * D, "paid_at": NOW - 2 * D, "locked_at": NOW - D, "shipped_at": NOW - 2 * H}
    defaults |= {"waybill_nos": "SF1234567890", "carrier_codes": "shunfeng", "parcel_count": 1}
    return order(no, stage, **(defaults | fields))


def delivered(no: str = "SO-1", **fields) -> dict:
    return shipped(no, "delivered", **({"delivered_at": NOW - M} | fields))


# --- what is due --------------------------------------------------------------------------------------


def test_a_new_order_gets_one_message_with_its_signed_link_across_reruns(tmp_path, engine):
    publish_rows(engine, [new_order()])
    n = notifier(tmp_path, engine)
    first = n.run(NOW)
    assert first.outcomes[("order_created", "outbox", "sent")] == 1
    for later in (NOW + M, NOW + 2 * H):
        publish_rows(engine, [new_order()], now=later)
        assert n.run(later).count("sent") == 0
    box = outbox(engine)
    assert len(box) == 1 and box["order_no"].iloc[0] == "SO-1"
    url = box["url"].iloc[0]
    assert url.startswith("https://track.example.com/order/SO-1?t=")
    token = url.split("t=", 1)[1]
    assert verify_token("SO-1", token, LINK_SECRET, NOW, max_ttl=timedelta(days=7)) is TokenCheck.VALID
    assert verify_token("SO-1", token, LINK_SECRET, NOW + 7 * D + M) is TokenCheck.EXPIRED
    assert json.loads(box["params"].iloc[0])["link"] == url
    r = rows(engine).iloc[0]
    assert (r["phone_masked"], r["attempts"]) == ("138****5678", 1)
    assert pd.Timestamp(r["link_expires_at"]).tz_localize(None) == pd.Timestamp(NOW + 7 * D).tz_localize(None)


def test_no_table_the_notifier_writes_holds_the_full_number(tmp_path, engine):
    publish_rows(engine, [new_order(), new_order("SO-2", customer_phone="+86 139-0000-1111")])
    n = notifier(tmp_path, engine)
    n.run(NOW)
    with engine.begin() as conn:
        suppress(conn, n.key, "13700002222", "manual", "asked by phone", NOW)
    for table in (customer_notifications, customer_outbox, customer_suppressions):
        with engine.connect() as conn:
            text = json.dumps([list(map(str, r)) for r in conn.execute(sa.select(table))], ensure_ascii=False)
        for number in (PHONE, "13900001111", "13700002222"):
            assert number not in text, table.name


def test_an_order_older_than_the_max_age_at_first_sight_is_not_messaged(tmp_path, engine):
    publish_rows(engine, [new_order("OLD", ordered_at=NOW - 24 * H - M), new_order("NEW", ordered_at=NOW - 24 * H)])
    result = notifier(tmp_path, engine).run(NOW)
    assert sent(engine) == [("NEW", "order_created")]
    assert result.too_old == 1


def test_an_order_that_moved_several_stages_between_runs_gets_only_the_latest_message(tmp_path, engine):
    publish_rows(engine, [new_order("A"), delivered("B", ordered_at=NOW - 3 * H)])
    n = notifier(tmp_path, engine)
    n.run(NOW)
    assert sorted(sent(engine)) == [("A", "order_created"), ("B", "delivered")]
    publish_rows(engine, [delivered("A", ordered_at=NOW - H), delivered("B", ordered_at=NOW - 3 * H)], now=NOW + H)
    n.run(NOW + H)
    assert sorted(sent(engine)) == [("A", "delivered"), ("A", "order_created"), ("B", "delivered")]


def test_a_message_held_for_the_night_is_dropped_when_a_later_one_is_due(tmp_path, engine):
    night = NOW + 12 * H  # 22:00 in Shanghai
    publish_rows(engine, [shipped(shipped_at=night - H)], now=night)
    n = notifier(tmp_path, engine)
    assert n.run(night).outcomes[("shipped", "-", "held")] == 1
    morning = NOW + 24 * H  # 10:00 the next day
    publish_rows(engine, [delivered(shipped_at=night - H, delivered_at=morning - H)], now=morning)
    n.run(morning)
    r = rows(engine).set_index("event")
    assert r.loc["shipped", "status"] == "superseded" and "delivered" in str(r.loc["shipped", "reason"])
    assert r.loc["delivered", "status"] == "sent"


def test_a_cancelled_order_is_not_messaged_and_loses_what_it_had_waiting(tmp_path, engine):
    night = NOW + 12 * H
    publish_rows(
        engine, [new_order("A", ordered_at=night - H), order("B", "cancelled", ordered_at=night - H)], now=night
    )
    n = notifier(tmp_path, engine)
    n.run(night)
    publish_rows(engine, [order("A", "cancelled", ordered_at=night - H)], now=night + H)
    n.run(night + H)
    r = rows(engine)
    assert r[["order_no", "status"]].values.tolist() == [["A", "superseded"]]
    assert r["reason"].iloc[0] == "cancelled"


def test_trouble_is_told_once_per_kind_in_the_customers_words(tmp_path, engine):
    trouble = shipped(stage="exception", latest_event_at=NOW - M)
    publish_rows(engine, [trouble | {"exception_reason": "疑难: 地址不详"}])
    n = notifier(tmp_path, engine)
    n.run(NOW)
    publish_rows(engine, [trouble | {"exception_reason": "疑难: 电话无人接听"}], now=NOW + H)
    n.run(NOW + H)
    publish_rows(engine, [trouble | {"exception_reason": "拒签: 收件人拒收"}], now=NOW + 2 * H)
    n.run(NOW + 2 * H)
    reasons = [json.loads(p)["reason"] for p in outbox(engine)["params"]]
    assert reasons == ["包裹运输遇到问题，我们正在处理", "包裹已被拒收"]


def test_delayed_is_sent_once_when_the_expected_date_passes_the_promised_one(tmp_path, engine):
    on_time = shipped(promised_date=date(2026, 11, 27), eta=NOW + D)  # 11-26 in Shanghai
    late = shipped(promised_date=date(2026, 11, 27), eta=NOW + 2 * D + 14 * H)  # 11-28 00:00 in Shanghai
    publish_rows(engine, [on_time])
    n = notifier(tmp_path, engine)
    n.run(NOW)
    assert ("SO-1", "delayed") not in sent(engine)
    for k in range(1, 3):
        publish_rows(engine, [late], now=NOW + k * H)
        n.run(NOW + k * H)
    assert sent(engine).count(("SO-1", "delayed")) == 1
    params = json.loads(outbox(engine)["params"].iloc[-1])
    assert (params["eta"], params["promised_date"]) == ("11月28日", "11月27日")


def test_an_open_order_gets_a_fresh_link_when_its_last_one_is_about_to_expire(tmp_path, engine):
    publish_rows(engine, [new_order()])
    n = notifier(tmp_path, engine, events={**ALL_EVENTS, "link_renewed": {}})
    n.run(NOW)
    n.run(NOW + 5 * D + 23 * H)  # the link expires in 25 h
    assert [e for _, e in sent(engine)] == ["order_created"]
    n.run(NOW + 6 * D + H)
    n.run(NOW + 6 * D + 2 * H)
    assert [e for _, e in sent(engine)] == ["order_created", "link_renewed"]
    publish_rows(engine, [delivered(ordered_at=NOW - H, delivered_at=NOW + 12 * D - H)], now=NOW + 12 * D)
    n.run(NOW + 12 * D)  # delivered: the next expiry is not renewed
    assert [e for _, e in sent(engine)] == ["order_created", "link_renewed", "delivered"]


# --- when it may go -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local_time", "held"),
    [("20:59", False), ("21:00", True), ("03:00", True), ("07:59", True), ("08:00", False)],
)
def test_quiet_hours_hold_a_message_until_they_end(tmp_path, engine, local_time, held):
    at = pd.Timestamp(f"2026-11-25 {local_time}", tz="Asia/Shanghai").tz_convert("UTC").to_pydatetime()
    publish_rows(engine, [new_order(ordered_at=at - H)], now=at)
    n = notifier(tmp_path, engine)
    result = n.run(at)
    assert result.count("held") == int(held) and result.count("sent") == int(not held)
    if held:
        due = pd.Timestamp(rows(engine)["due_at"].iloc[0])
        due = due.tz_localize("UTC") if due.tzinfo is None else due
        assert due.tz_convert("Asia/Shanghai").strftime("%H:%M") == "08:00"
        assert due > pd.Timestamp(at)
        assert n.run(due.to_pydatetime() - M).count("sent") == 0
        assert n.run(due.to_pydatetime()).count("sent") == 1


def test_quiet_hours_can_be_turned_off(tmp_path, engine):
    night = NOW + 17 * H  # 03:00
    publish_rows(engine, [new_order(ordered_at=night - H)], now=night)
    assert notifier(tmp_path, engine, quiet_hours="off").run(night).count("sent") == 1


def test_a_number_gets_at_most_the_daily_cap_and_the_rest_waits_for_the_morning(tmp_path, engine):
    publish_rows(engine, [new_order(f"SO-{i}") for i in range(4)])
    n = notifier(tmp_path, engine, daily_cap=3)
    result = n.run(NOW)
    assert (result.count("sent"), result.count("held")) == (3, 1)
    waiting = rows(engine).query("status == 'held'").iloc[0]
    assert waiting["reason"] == "daily cap of 3"
    assert n.run(NOW + 10 * H).count("sent") == 0  # 20:00, still the same day
    assert n.run(NOW + 22 * H).count("sent") == 1  # 08:00 the next day


def test_a_suppressed_number_is_not_messaged(tmp_path, engine):
    publish_rows(engine, [new_order("A"), new_order("B", customer_phone="13900001111")])
    n = notifier(tmp_path, engine)
    with engine.begin() as conn:
        suppress(conn, n.key, "+86 138 1234 5678", "manual", None, NOW)
    result = n.run(NOW)
    assert result.outcomes[("order_created", "-", "suppressed")] == 1
    assert sent(engine) == [("B", "order_created")]


# --- channels -----------------------------------------------------------------------------------------

WECHAT_SMS = {
    "channels": {
        "wechat": {"type": "wechat", "app_id": "wx0000000000000001", "app_secret_env": "TEST_WECHAT_SECRET"},
        "sms": {
            "type": "aliyun_sms",
            "access_key_id_env": "TEST_ALIYUN_ID",
            "access_key_secret_env": "TEST_ALIYUN_SECRET",
            "sign_name": "示例商城",
        },
    },
    "send": ["wechat", "sms"],
    "events": {
        "order_created": {
            "templates": {
                "wechat": {"id": "TPL-created", "params": {"character_string1": "{order_no}", "thing2": "{event}"}},
                "sms": {"id": "SMS_100000001", "params": {"order": "{order_no}", "code": "{link_code}"}},
            }
        }
    },
}


def aliyun_transport(sandbox: AliyunSandbox) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        status, doc = sandbox.answer(
            request.method, request.url.path, request.url.query.decode(), headers, request.content
        )
        return httpx.Response(status, json=doc)

    return httpx.MockTransport(answer)


def tencent_transport(sandbox: TencentSandbox) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        return httpx.Response(200, json=sandbox.answer(headers, request.content))

    return httpx.MockTransport(answer)


@pytest.fixture
def vendors():
    # The vendors check the signature's time against their own clock: theirs is the real one.
    wechat = WeChatSandbox(
        "wx0000000000000001", "wechat-app-secret-0123456789", followers=["oFOLLOWER"], templates=["TPL-created"]
    )
    aliyun = AliyunSandbox("LTAI5tTestKeyId", "test-access-key-secret-0123", lambda: datetime.now(UTC))
    return wechat, aliyun, {"wechat": httpx.MockTransport(handler(wechat)), "sms": aliyun_transport(aliyun)}


def with_openid(engine, pairs: dict[str, str | None]) -> None:
    orders = RAW_TABLES["orders"]
    with engine.begin() as conn:
        for no, openid in pairs.items():
            conn.execute(
                orders.insert().values(
                    order_no=no,
                    customer_name="张三",
                    customer_phone=PHONE,
                    ship_address="上海市",
                    amount=1.0,
                    ordered_at=NOW,
                    status="open",
                    updated_at=NOW,
                    customer_openid=openid,
                    _batch=1,
                )
            )


def test_wechat_first_and_sms_when_the_customer_has_no_openid_or_does_not_follow(tmp_path, engine, vendors):
    wechat, aliyun, transports = vendors
    publish_rows(engine, [new_order("FOLLOWS"), new_order("NO-OPENID"), new_order("LEFT")])
    with_openid(engine, {"FOLLOWS": "oFOLLOWER", "NO-OPENID": None, "LEFT": "oUNFOLLOWED"})
    n = notifier(tmp_path, engine, transports, **WECHAT_SMS)
    result = n.run(NOW)
    assert result.outcomes[("order_created", "wechat", "sent")] == 1
    assert result.outcomes[("order_created", "sms", "sent")] == 2
    assert [a.touser for a in wechat.accepted] == ["oFOLLOWER"]
    assert wechat.accepted[0].url.startswith("https://track.example.com/order/FOLLOWS?t=")
    assert sorted(json.loads(json.dumps(m["TemplateParam"]))["order"] for m in aliyun.accepted) == ["LEFT", "NO-OPENID"]
    code = aliyun.accepted[0]["TemplateParam"]["code"]
    assert len(code) == 10 and code.isalnum()
    assert wechat.token_calls == 1  # one token for the round, not one per message


def test_a_number_no_channel_can_reach_is_recorded_invalid_with_the_reasons(tmp_path, engine, vendors):
    _, aliyun, transports = vendors
    publish_rows(engine, [new_order("BAD", customer_phone="010-12345678")])
    with_openid(engine, {"BAD": None})
    result = notifier(tmp_path, engine, transports, **WECHAT_SMS).run(NOW)
    r = rows(engine).iloc[0]
    assert r["status"] == "invalid" and result.count("invalid") == 1
    assert "wechat: no openid" in r["reason"] and "sms: not a mainland mobile number" in r["reason"]
    assert aliyun.accepted == []


def test_flow_control_is_retried_later_and_then_sent(tmp_path, engine, vendors):
    _, aliyun, transports = vendors
    aliyun.flow_controlled.add(PHONE)
    publish_rows(engine, [new_order()])
    with_openid(engine, {"SO-1": None})
    n = notifier(tmp_path, engine, transports, **WECHAT_SMS)
    result = n.run(NOW)
    assert result.outcomes[("order_created", "sms", "pending")] == 1
    r = rows(engine).iloc[0]
    assert (r["error_code"], r["attempts"]) == ("isv.BUSINESS_LIMIT_CONTROL", 1)
    assert n.run(NOW + M / 2).count("sent") == 0  # not before its retry time
    aliyun.flow_controlled.clear()
    assert n.run(NOW + 2 * M).count("sent") == 1
    assert len(aliyun.accepted) == 1


def test_a_vendor_blacklist_answer_suppresses_the_number(tmp_path, engine):
    tencent = TencentSandbox("AKIDtestsecretid", "tencent-secret-key-0123", "1400000001", lambda: datetime.now(UTC))
    tencent.blacklisted.add(PHONE)
    section = {
        "channels": {
            "sms": {
                "type": "tencent_sms",
                "secret_id_env": "TEST_TENCENT_ID",
                "secret_key_env": "TEST_TENCENT_KEY",
                "sdk_app_id": "1400000001",
                "sign_name": "示例商城",
                "endpoint": "https://sms.tencentcloudapi.com",
            }
        },
        "events": {"order_created": {"templates": {"sms": {"id": "1234567", "params": {"1": "{order_no}"}}}}},
    }
    publish_rows(engine, [new_order("A"), new_order("B")])
    n = notifier(tmp_path, engine, {"sms": tencent_transport(tencent)}, **section)
    result = n.run(NOW)
    assert result.count("suppressed") == 2 and result.count("sent") == 0
    with engine.connect() as conn:
        listed = conn.execute(sa.select(customer_suppressions.c.source, customer_suppressions.c.phone_masked)).all()
    assert listed == [("sms", "138****5678")]


# --- exactly once --------------------------------------------------------------------------------------


class Crash(BaseException):
    """The process dies: nothing after the send runs (BaseException, so no handler catches it)."""


def test_an_sms_in_doubt_after_a_crash_is_never_sent_again_by_itself(tmp_path, engine, vendors):
    _, aliyun, transports = vendors
    publish_rows(engine, [new_order()])
    with_openid(engine, {"SO-1": None})

    def send_then_die(request: httpx.Request) -> httpx.Response:
        aliyun_transport(aliyun).handle_request(request)
        raise Crash

    n = notifier(tmp_path, engine, {**transports, "sms": httpx.MockTransport(send_then_die)}, **WECHAT_SMS)
    with pytest.raises(Crash):
        n.run(NOW)
    later = notifier(tmp_path, engine, transports, **WECHAT_SMS)
    assert later.run(NOW + M).count("sent") == 0  # the claim still stands
    result = later.run(NOW + 3 * M)
    assert result.in_doubt == 1
    assert rows(engine)["status"].tolist() == ["in_doubt"]
    later.run(NOW + 2 * H)
    assert len(aliyun.accepted) == 1


def sends_then_dies(wechat: WeChatSandbox) -> httpx.MockTransport:
    """WeChat takes the message, and the sender dies before it hears the answer."""
    inner = handler(wechat)

    def send_then_die(request: httpx.Request) -> httpx.Response:
        answer = inner(request)
        if request.url.path.endswith("/template/send"):
            raise Crash
        return answer

    return httpx.MockTransport(send_then_die)


def test_a_wechat_message_in_doubt_is_sent_again_and_wechat_keeps_it_one(tmp_path, engine, vendors):
    wechat, _, transports = vendors
    publish_rows(engine, [new_order()])
    with_openid(engine, {"SO-1": "oFOLLOWER"})
    n = notifier(tmp_path, engine, {**transports, "wechat": sends_then_dies(wechat)}, **WECHAT_SMS)
    with pytest.raises(Crash):
        n.run(NOW)
    result = notifier(tmp_path, engine, transports, **WECHAT_SMS).run(NOW + 3 * M)
    assert result.outcomes[("order_created", "wechat", "sent")] == 1 and result.in_doubt == 0
    assert len(wechat.accepted) == 1


def test_two_senders_at_once_send_each_message_once(tmp_path, engine):
    publish_rows(engine, [new_order(f"SO-{i}") for i in range(40)])
    senders = [notifier(tmp_path, engine, daily_cap=100) for _ in range(2)]
    barrier = threading.Barrier(2)

    def go(n: Notifier) -> None:
        barrier.wait()
        n.run(NOW)

    threads = [threading.Thread(target=go, args=(n,)) for n in senders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    box = outbox(engine)
    assert len(box) == 40 and box["order_no"].is_unique
    assert (rows(engine)["status"] == "sent").sum() == 40


# --- configuration -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "entry", "problem"),
    [
        ({"channels": {}}, "notifications.channels", "no channel"),
        ({"channels": {"x": {"type": "fax"}}}, "notifications.channels.x.type", "not a customer channel"),
        (
            {"channels": {"sms": {"type": "aliyun_sms", "sign_name": "店"}}},
            "notifications.channels.sms.access_key_id_env",
            "missing",
        ),
        ({"events": {"order_shipped": {}}}, "notifications.events.order_shipped", "unknown setting"),
        ({"events": {"shipped": {"send": ["sms"]}}}, "notifications.events.shipped.send", "unknown channel 'sms'"),
        ({"quiet_hours": "9pm-8am"}, "notifications.quiet_hours", "not a window"),
        ({"daily_cap": 0}, "notifications.daily_cap", "at least 1"),
        ({"link_url": "https://t.example.com/x"}, "notifications.link_url", "{order_no}"),
        (
            {"channels": {"sms": {**WECHAT_SMS["channels"]["sms"], "timeout": "soon"}}},
            "notifications.channels.sms.timeout",
            "not a duration",
        ),
    ],
)
def test_a_mistake_fails_at_load_naming_the_entry(tmp_path, section, entry, problem):
    doc = {"channels": {"outbox": {"type": "outbox"}}, "events": {"order_created": {}}, **section}
    with pytest.raises(ConfigError) as err:
        load_notify_settings(make_config(tmp_path, "sqlite://", notifications=doc))
    assert err.value.entry == entry and problem in err.value.problem


def test_a_real_channel_needs_a_template_and_its_fields_must_exist(tmp_path):
    channels = WECHAT_SMS["channels"]
    with pytest.raises(ConfigError) as err:
        load_notify_settings(
            make_config(tmp_path, "sqlite://", notifications={"channels": channels, "events": {"shipped": {}}})
        )
    assert err.value.entry == "notifications.events.shipped.templates.wechat"
    bad = {"templates": {"wechat": {"id": "T", "params": {"thing1": "{waybil}"}}, "sms": {"id": "S"}}}
    with pytest.raises(ConfigError) as err:
        load_notify_settings(
            make_config(tmp_path, "sqlite://", notifications={"channels": channels, "events": {"shipped": bad}})
        )
    assert err.value.entry == "notifications.events.shipped.templates.wechat.params.thing1"
    assert "waybill" in err.value.fix


def test_without_the_section_nothing_is_sent(tmp_path, engine):
    assert build_notifier(make_config(tmp_path, str(engine.url)), engine) is None
    assert ledger.next_due(engine.connect()) is None


def test_a_claim_left_by_a_crash_wakes_the_next_round_in_time_for_wechat(tmp_path, engine, vendors):
    wechat, _, transports = vendors
    publish_rows(engine, [new_order()])
    with_openid(engine, {"SO-1": "oFOLLOWER"})
    n = notifier(tmp_path, engine, {**transports, "wechat": sends_then_dies(wechat)}, **WECHAT_SMS)
    with pytest.raises(Crash):
        n.run(NOW)
    with engine.connect() as conn:
        assert ledger.next_due(conn) == NOW + ledger.CLAIM_TIMEOUT
