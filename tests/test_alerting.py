"""The alert ledger and dispatch: dedup, cool-down, escalation, resolution, failing channels, rate limits,
crashes between the steps, freshness, run failures and customer tracking links. Time is passed in, never slept."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa
from helpers import (
    GROUPS,
    NOW,
    TZ,
    D,
    H,
    M,
    S,
    add_rows,
    alerting_for,
    deliveries,
    ledger_row,
    make_config,
    order,
    outbox,
    paid_order,
    publish_rows,
    tick,
)

from order_pipeline.alerts import ledger as alert_ledger
from order_pipeline.alerts.channels import OutboxChannel, WeComRobot
from order_pipeline.alerts.dispatch import Dispatcher, build_channels
from order_pipeline.alerts.evaluation import Alerting
from order_pipeline.alerts.freshness import source_ages
from order_pipeline.alerts.settings import CARRIER, SourceSla
from order_pipeline.contract.config import Secret, SourceConfig
from order_pipeline.contract.schema import (
    BATCH,
    alert_deliveries,
    alert_queue,
    raw_tracking,
)
from order_pipeline.warehouse.engine import Warehouse, set_state

# --- dedup, cool-down, escalation, resolution ----------------------------------------------------------


def test_sent_once_resent_after_the_cooldown_escalated_then_resolved(tmp_path, engine):
    publish_rows(engine, [paid_order()])
    alerting, dispatcher = alerting_for(tmp_path, engine)

    ev, drained = tick(alerting, dispatcher, NOW)
    assert ev.breaching["paid_not_locked"] == 1
    sent = outbox(engine)
    assert sent["channel"].tolist() == ["wh_box"]
    assert sent["recipient"].tolist() == ["13800000000"]
    first = ledger_row(engine, "paid_not_locked", "SO-1")
    assert first["attempts"] == 1 and first["escalation_level"] == 0 and first["resolved_at"] is None
    assert pd.Timestamp(first["notified_at"]).tz_localize(None) >= pd.Timestamp(NOW).tz_localize(None)

    for later in (M, 2 * H - S):  # within the cool-down: nothing new
        tick(alerting, dispatcher, NOW + later)
    assert len(outbox(engine)) == 1

    tick(alerting, dispatcher, NOW + 2 * H)  # the cool-down passed: re-sent once
    assert outbox(engine)["channel"].tolist() == ["wh_box", "wh_box"]
    tick(alerting, dispatcher, NOW + 2 * H + M)
    assert len(outbox(engine)) == 2

    tick(alerting, dispatcher, NOW + 4 * H)  # open for escalate_after: the ops lead hears, and the group again
    sent = outbox(engine)
    assert sent["channel"].tolist()[2:] == ["wh_box", "lead_box"]
    assert sent["title"].iloc[-1].startswith("【升级】")
    assert ledger_row(engine, "paid_not_locked", "SO-1")["escalation_level"] == 1
    tick(alerting, dispatcher, NOW + 8 * H + M)  # max_escalations is 1: no second escalation
    assert "lead_box" not in outbox(engine)["channel"].tolist()[4:]

    publish_rows(engine, [order("SO-1", "locked", paid_at=NOW - 3 * H, locked_at=NOW + 9 * H)], batch=2)
    tick(alerting, dispatcher, NOW + 9 * H)
    row = ledger_row(engine, "paid_not_locked", "SO-1")
    assert row["resolved_at"] is not None
    notes = outbox(engine).iloc[-2:]
    assert set(notes["channel"]) == {"wh_box", "lead_box"}  # told where it was heard, escalation included
    assert all(t.startswith("【已恢复】") for t in notes["title"])
    count = len(outbox(engine))
    tick(alerting, dispatcher, NOW + 9 * H + M)
    assert len(outbox(engine)) == count


def test_a_flapping_condition_waits_out_its_cooldown(tmp_path, engine):
    publish_rows(engine, [paid_order()])
    alerting, dispatcher = alerting_for(tmp_path, engine, alerts={**GROUPS["alerts"], "resolve_note": False})
    tick(alerting, dispatcher, NOW)
    publish_rows(engine, [order("SO-1", "locked", paid_at=NOW - 3 * H, locked_at=NOW)], batch=2)
    tick(alerting, dispatcher, NOW + M)
    publish_rows(engine, [paid_order()], batch=3)  # released again
    tick(alerting, dispatcher, NOW + 2 * M)
    row = ledger_row(engine, "paid_not_locked", "SO-1")
    assert row["resolved_at"] is None and len(outbox(engine)) == 1
    tick(alerting, dispatcher, NOW + 2 * H)
    assert len(outbox(engine)) == 2


def test_dedup_across_orders_and_ticks(tmp_path, engine):
    publish_rows(engine, [paid_order("A"), paid_order("B"), order("C", "locked", locked_at=NOW)])
    alerting, dispatcher = alerting_for(tmp_path, engine)
    for minutes in range(3):
        tick(alerting, dispatcher, NOW + minutes * M)
    assert sorted(outbox(engine)["title"].str.split().str[-1]) == ["A", "B"]
    assert deliveries(engine)["ok"].all()


# --- the message ---------------------------------------------------------------------------------------


def test_message_is_short_chinese_with_order_stage_wait_owner_and_link(tmp_path, engine):
    publish_rows(engine, [paid_order(hours=3)])
    alerting, dispatcher = alerting_for(
        tmp_path, engine, alerts={**GROUPS["alerts"], "board_url": "https://ops.example.com"}
    )
    tick(alerting, dispatcher, NOW + 15 * M)
    body = outbox(engine)["body"].iloc[0]
    assert "SO-1" in body and "支付确认" in body and "已等待：3小时15分" in body and "负责人：仓库" in body
    assert "https://ops.example.com/ops/order/SO-1" in body
    assert len(body.encode()) < 600


def test_stuck_parcel_marks_the_order_high_risk(tmp_path, engine):
    publish_rows(
        engine,
        [
            order(
                "SO-9",
                "in_transit",
                shipped_at=NOW - 3 * D,
                latest_event_at=NOW - 50 * H,
                parcel_count=1,
                waybill_nos="YT123",
            )
        ],
    )
    alerting, dispatcher = alerting_for(tmp_path, engine)
    tick(alerting, dispatcher, NOW)
    row = ledger_row(engine, "stuck_parcel", "SO-9")
    assert row["risk"] == "high" and row["severity"] == "critical"
    assert outbox(engine)["channel"].tolist() == ["cs_box"]
    assert "风险：高" in outbox(engine)["body"].iloc[0]


# --- failing channels ------------------------------------------------------------------------------------


class WeComStub:
    """Answers like the WeCom robot: `codes` in turn, then errcode 0; records every payload."""

    def __init__(self, *codes):
        self.codes, self.posts = list(codes), []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.posts.append(json.loads(request.content))
        code = self.codes.pop(0) if self.codes else 0
        return httpx.Response(200, json={"errcode": code, "errmsg": "ok" if code == 0 else "refused"})


def wecom_runtime(tmp_path, engine, stub, **dispatch):
    channels = {
        "wecom_wh": WeComRobot(
            "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k",
            name="wecom_wh",
            transport=httpx.MockTransport(stub),
        ),
        "wh_box": OutboxChannel(engine, name="wh_box"),
    }
    alerts = {
        **GROUPS["alerts"],
        "groups": {**GROUPS["alerts"]["groups"], "warehouse": {"channels": ["wecom_wh", "wh_box"]}},
    }
    sections = {"channels": {**GROUPS["channels"], "wecom_wh": {"type": "outbox"}}, "alerts": alerts}
    config = make_config(tmp_path, str(engine.url), **sections)
    alerting = Alerting(config, engine)
    return alerting, Dispatcher(engine, channels, **dispatch)


def test_a_failing_channel_is_recorded_retried_later_and_does_not_hold_up_the_others(tmp_path, engine):
    publish_rows(engine, [paid_order()])
    stub = WeComStub(93000)  # a wrong key: not worth retrying at once
    alerting, dispatcher = wecom_runtime(tmp_path, engine, stub)
    _, drained = tick(alerting, dispatcher, NOW)
    assert outbox(engine)["channel"].tolist() == ["wh_box"]  # the other channel got it
    d = deliveries(engine)
    failed = d[~d["ok"]]
    assert failed["channel"].tolist() == ["wecom_wh"] and "93000" in failed["error"].iloc[0]
    assert ledger_row(engine, "paid_not_locked", "SO-1")["attempts"] == 2
    with engine.connect() as conn:
        q = conn.execute(sa.select(alert_queue).where(alert_queue.c.channel == "wecom_wh")).mappings().one()
    assert q["status"] == "pending" and q["next_attempt_at"] is not None

    dispatcher.drain(NOW + 30 * S)  # not yet: it waits for its retry time (a minute after a first failure)
    assert len(stub.posts) == 1
    drained = dispatcher.drain(NOW + 5 * M)  # the key was fixed meanwhile: delivered, not lost
    assert drained.delivered == 1 and len(stub.posts) == 2
    assert stub.posts[-1]["msgtype"] == "markdown" and "SO-1" in stub.posts[-1]["markdown"]["content"]
    assert deliveries(engine)["ok"].tolist()[-1]


def test_a_rate_limited_robot_gets_one_attempt_a_round_and_waits_for_its_retry_time(tmp_path, engine):
    publish_rows(engine, [paid_order()])
    stub = WeComStub(45009, 45009)
    slept = []
    alerting, dispatcher = wecom_runtime(tmp_path, engine, stub, sleep=slept.append)

    def wecom():
        d = deliveries(engine)
        return d[d["channel"] == "wecom_wh"]["ok"].tolist()

    tick(alerting, dispatcher, NOW)
    assert wecom() == [False] and "45009" in deliveries(engine)["error"].dropna().iloc[0]
    dispatcher.drain(NOW + 30 * S)  # its retry time is a minute after the first failure
    assert wecom() == [False]
    dispatcher.drain(NOW + M)
    assert wecom() == [False, False]
    dispatcher.drain(NOW + 2 * M)  # then two minutes after the second
    assert wecom() == [False, False]
    assert dispatcher.drain(NOW + 3 * M).delivered == 1
    assert wecom() == [False, False, True]
    assert slept == []


def test_with_retries_a_drain_retries_a_rate_limited_robot_with_backoff(tmp_path, engine):
    publish_rows(engine, [paid_order()])
    stub = WeComStub(45009, 45009)
    slept = []
    alerting, dispatcher = wecom_runtime(tmp_path, engine, stub, retries=3, sleep=slept.append)
    _, drained = tick(alerting, dispatcher, NOW)
    d = deliveries(engine)
    assert d[d["channel"] == "wecom_wh"]["ok"].tolist() == [False, False, True]
    assert slept == [1.0, 2.0] and drained.failed == 0


def test_a_robot_that_is_down_holds_up_one_message_not_the_round(tmp_path, engine):
    publish_rows(engine, [paid_order(f"SO-{i}") for i in range(3)])
    down = {"on": True}
    posts = []

    def server(request):
        posts.append(request)
        return httpx.Response(502 if down["on"] else 200, json={"errcode": 0, "errmsg": "ok"})

    alerting, dispatcher = wecom_runtime(tmp_path, engine, server)
    _, drained = tick(alerting, dispatcher, NOW)
    assert len(posts) == 1  # one attempt at one message; the other two wait for the next round
    assert drained.waiting == 2 and drained.failed == 1
    assert len(outbox(engine)) == 3  # the outbox channel was not held up
    down["on"] = False
    drained = dispatcher.drain(NOW + 5 * M)
    assert drained.delivered == 3 and drained.failed == 0


def test_a_burst_becomes_digests_within_twenty_messages_a_minute(tmp_path, engine):
    publish_rows(engine, [paid_order(f"SO-{i:03d}") for i in range(120)])
    stub = WeComStub()
    alerting, dispatcher = wecom_runtime(tmp_path, engine, stub)
    # The robot already took 18 messages this minute (recorded by earlier sends).
    with engine.begin() as conn:
        conn.execute(
            alert_deliveries.insert(),
            [
                {
                    "rule_id": "x",
                    "entity_key": str(i),
                    "channel": "wecom_wh",
                    "kind": "notify",
                    "attempted_at": NOW - timedelta(seconds=50 - i),
                    "ok": True,
                }
                for i in range(18)
            ],
        )
    _, drained = tick(alerting, dispatcher, NOW)
    assert len(stub.posts) == 2  # 20 a minute: two posts left, each a digest
    assert all("条告警汇总" in p["markdown"]["content"] for p in stub.posts)
    assert all(len(p["markdown"]["content"].encode()) <= 4096 for p in stub.posts)
    assert drained.waiting > 0

    for minutes in range(1, 6):  # the rest goes out in later minutes, nothing dropped, nothing twice
        dispatcher.drain(NOW + minutes * M + S)
    with engine.connect() as conn:
        statuses = dict(
            conn.execute(
                sa.select(alert_queue.c.status, sa.func.count())
                .where(alert_queue.c.channel == "wecom_wh")
                .group_by(alert_queue.c.status)
            ).all()
        )
    assert statuses == {"sent": 120}
    text = "".join(p["markdown"]["content"] for p in stub.posts)
    assert all(text.count(f"SO-{i:03d} ") >= 1 for i in range(120))


# --- crashes between the steps ----------------------------------------------------------------------------


class Crash(BaseException):
    """The process dies: nothing after this point runs."""


def test_a_crash_between_send_and_record_never_sends_twice_within_the_cooldown(tmp_path, engine, monkeypatch):
    publish_rows(engine, [paid_order()])
    alerting, dispatcher = alerting_for(tmp_path, engine)

    def crash(*args, **kwargs):
        raise Crash()

    with monkeypatch.context() as m:
        m.setattr(alert_ledger, "record_outcome", crash)
        with pytest.raises(Crash):
            tick(alerting, dispatcher, NOW)
    assert len(outbox(engine)) == 1  # it went out, but the ledger never heard
    assert deliveries(engine).empty

    for later in (M, H, 2 * H - S):  # restarted: the claim is in doubt, so nothing is sent again
        tick(alerting, dispatcher, NOW + later)
    assert len(outbox(engine)) == 1

    tick(alerting, dispatcher, NOW + 2 * H)  # a cool-down later: sent once more, not twice
    assert len(outbox(engine)) == 2
    with engine.connect() as conn:
        rows = conn.execute(sa.select(alert_queue.c.status)).scalars().all()
    assert sorted(rows) == ["sent", "superseded"]


def test_a_crash_between_claim_and_send_delays_but_never_loses(tmp_path, engine, monkeypatch):
    publish_rows(engine, [paid_order()])
    alerting, dispatcher = alerting_for(tmp_path, engine)
    import order_pipeline.alerts.dispatch as dispatch

    def crash(*args, **kwargs):
        raise Crash()

    alerting.evaluate(NOW)
    with monkeypatch.context() as m:
        m.setattr(dispatch, "deliver", crash)
        with pytest.raises(Crash):
            dispatcher.drain(NOW)
    assert outbox(engine).empty
    dispatcher.drain(NOW + H)
    assert outbox(engine).empty  # in doubt until the claim expires
    dispatcher.drain(NOW + 2 * H)
    assert len(outbox(engine)) == 1


# --- freshness, run failures -------------------------------------------------------------------------------


def test_a_stale_source_alerts_the_data_owner_and_resolves_when_fresh(tmp_path, engine):
    config_sources = {"inventory": SourceConfig("inventory", Secret(value="sqlite://"), "inv", None, {}, TZ)}
    config = make_config(tmp_path, str(engine.url), **GROUPS)
    config = type(config)(**{**config.__dict__, "sources": config_sources})
    alerting = Alerting(config, engine)
    dispatcher = Dispatcher(engine, build_channels(alerting.settings, engine))
    publish_rows(engine, [])
    with engine.begin() as conn:
        set_state(conn, "watermark:inventory", (NOW - 30 * M).isoformat(), NOW)
    ev, _ = tick(alerting, dispatcher, NOW)  # exactly 30 minutes: still fresh
    assert [a.stale for a in ev.sources if a.source == "inventory"] == [False]
    assert outbox(engine).empty
    ev, _ = tick(alerting, dispatcher, NOW + S)
    sent = outbox(engine)
    assert sent["channel"].tolist() == ["data_box"]
    assert "inventory" in sent["title"].iloc[0] and "30分钟" in sent["body"].iloc[0]
    assert ledger_row(engine, "source_freshness", "raw_inventory")["scope"] == "source"
    with engine.begin() as conn:
        set_state(conn, "watermark:inventory", (NOW + M).isoformat(), NOW + M)
    tick(alerting, dispatcher, NOW + 2 * M)
    assert ledger_row(engine, "source_freshness", "raw_inventory")["resolved_at"] is not None
    assert outbox(engine)["title"].iloc[-1].startswith("【已恢复】")


def test_the_carrier_feed_is_stale_only_while_a_parcel_waits_for_an_answer(engine):
    sla = SourceSla(CARRIER, 2 * H, ("data",))

    def carrier():
        with engine.connect() as conn:
            [age] = source_ages(conn, [sla], NOW)
        return age.stale, age.newest

    def shipment(order_no, waybill_no):
        return {
            "order_no": order_no,
            "waybill_no": waybill_no,
            "carrier_code": "shunfeng",
            "shipped_at": NOW - 5 * H,
            "updated_at": NOW - 5 * H,
        }

    assert carrier() == (False, None)  # no parcel: nothing to wait for
    add_rows(engine, "shipments", [shipment("SO-1", "SF1")])
    assert carrier() == (True, None)  # shipped, never answered
    with engine.begin() as conn:
        conn.execute(
            raw_tracking.insert().values(waybill_no="SF1", is_signed=False, polled_at=NOW - 2 * H, **{BATCH: 1})
        )
    assert carrier() == (False, NOW - 2 * H)  # answered exactly the SLA ago
    with engine.begin() as conn:
        conn.execute(raw_tracking.update().values(polled_at=NOW - 2 * H - S))
    assert carrier() == (True, NOW - 2 * H - S)
    with engine.begin() as conn:
        conn.execute(raw_tracking.update().values(state=3))  # Kuaidi100's "signed", before `ischeck` says so
    assert carrier() == (False, NOW - 2 * H - S)
    add_rows(engine, "shipments", [shipment("SO-2", "SF2")])
    add_rows(
        engine,
        "orders",
        [
            {
                "order_no": "SO-2",
                "customer_name": "李四",
                "customer_phone": "13900000000",
                "ship_address": "上海",
                "amount": 10.0,
                "ordered_at": NOW - D,
                "status": "cancelled",
                "updated_at": NOW - H,
            }
        ],
    )
    assert carrier()[0] is False  # a cancelled order's parcel waits for nothing


def test_a_failed_run_alerts_the_data_team_once_and_a_success_resolves_it(tmp_path, engine):
    alerting, dispatcher = alerting_for(tmp_path, engine)
    failed = "assets:raw_order_lines,raw_orders"
    for minutes in (0, 5):
        alerting.run_failed(
            failed, "raw_order_lines 等2个资产", f"run-{minutes}", "raw_orders: cannot reach ERP", NOW + minutes * M
        )
        dispatcher.drain(NOW + minutes * M)
    sent = outbox(engine)
    assert sent["channel"].tolist() == ["data_box"] and "cannot reach ERP" in sent["body"].iloc[0]
    alerting.run_succeeded("__ASSET_JOB", ["raw_orders"], NOW + 8 * M)  # covers only part of it
    assert ledger_row(engine, "run_failure", failed)["resolved_at"] is None
    alerting.run_succeeded("__ASSET_JOB", ["raw_orders", "raw_order_lines", "unified_orders"], NOW + 10 * M)
    dispatcher.drain(NOW + 10 * M)
    assert ledger_row(engine, "run_failure", failed)["resolved_at"] is not None
    assert outbox(engine)["title"].iloc[-1].startswith("【已恢复】")


# --- customer tracking links ---------------------------------------------------------------------------------


def test_each_new_order_gets_one_tracking_link(tmp_path, engine, monkeypatch):
    monkeypatch.setenv("TEST_LINK_SECRET", "s" * 32)
    publish_rows(
        engine,
        [
            order("NEW-1", "ordered", ordered_at=NOW - H),
            order("OLD-1", "ordered", ordered_at=NOW - 3 * D),
            order("GONE-1", "cancelled", ordered_at=NOW - H),
        ],
    )
    web = {"base_url": "https://track.example.com", "link_secret_env": "TEST_LINK_SECRET"}
    alerting, dispatcher = alerting_for(tmp_path, engine, web=web)
    ev, _ = tick(alerting, dispatcher, NOW)
    assert ev.links_queued == 1
    tick(alerting, dispatcher, NOW + M)
    links = outbox(engine)
    links = links[links["title"].str.contains("物流查询链接")]
    assert len(links) == 1 and "NEW-1" in links["title"].iloc[0]
    assert "https://track.example.com/order/NEW-1?t=" in links["body"].iloc[0]
    assert links["recipient"].iloc[0] == "138****5678"  # the log and the outbox see a masked phone


def test_without_a_web_section_links_are_skipped_and_logged(tmp_path, engine, caplog):
    publish_rows(engine, [order("NEW-1", "ordered", ordered_at=NOW - H)])
    with caplog.at_level(logging.INFO, logger="order_pipeline.alerts.evaluation"):
        alerting, dispatcher = alerting_for(tmp_path, engine)
    ev, _ = tick(alerting, dispatcher, NOW)
    assert ev.links_queued == 0
    assert "tracking links are not sent" in caplog.text


def test_the_alerting_creates_its_tables_in_an_empty_warehouse(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    engine = Warehouse(url).engine  # no create_schema: the alert tables are the alerting's to create
    alerting, dispatcher = alerting_for(tmp_path, engine)
    assert {"order_alerts", "alert_queue", "alert_deliveries", "alert_outbox", "tracking_link_sends"} <= set(
        sa.inspect(engine).get_table_names()
    )
    alerting.run_failed("order_pipeline", "order_pipeline", "run-1", "boom", NOW)
    assert dispatcher.drain(NOW).delivered == 1
    alert_ledger.ensure_schema(engine)  # again: nothing to do, nothing lost
    assert len(outbox(engine)) == 1
