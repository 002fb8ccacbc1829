"""Delivery of alerts: a failing channel is recorded and retried without holding up the others, a
rate-limited robot waits for its retry time, a burst becomes digests. Time is passed in, never slept."""

from __future__ import annotations

import json
from datetime import timedelta

import httpx
import pandas as pd
import sqlalchemy as sa
from helpers import GROUPS, NOW, M, S, deliveries, ledger_row, make_config, outbox, paid_order, publish_rows, tick

from order_pipeline.alerts import queue as alert_queue_ops
from order_pipeline.alerts.channels.outbox import OutboxChannel
from order_pipeline.alerts.channels.wecom import WeComRobot
from order_pipeline.alerts.dispatch import Dispatcher
from order_pipeline.alerts.evaluation import Alerting
from order_pipeline.contract.schema import alert_deliveries, alert_queue


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


def test_a_message_another_dispatcher_claimed_mid_round_is_left_to_it(tmp_path, engine):
    publish_rows(engine, [paid_order(f"SO-{i}") for i in range(3)])
    stub = WeComStub(45009)  # the first message is throttled: the round stops there
    alerting, dispatcher = wecom_runtime(tmp_path, engine, stub)
    alerting.evaluate(NOW)
    with engine.connect() as conn:
        robot_rows = pd.read_sql(sa.select(alert_queue).where(alert_queue.c.channel == "wecom_wh"), conn)
    robot = dispatcher.channels["wecom_wh"]
    send = robot.send

    def racing(msg):  # while the first goes out, another dispatcher claims the third
        alert_queue_ops.claim(engine, robot_rows.iloc[[2]], NOW)
        send(msg)

    robot.send = racing
    drained = dispatcher.drain(NOW)
    assert len(stub.posts) == 1 and drained.waiting == 2
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(alert_queue).where(alert_queue.c.channel == "wecom_wh").order_by(alert_queue.c.id)
        )
        second, third = list(rows.mappings())[1:]
    assert second["next_attempt_at"] is not None and second["claim_token"] is None  # waits for the next round
    assert third["claim_token"] is not None and third["next_attempt_at"] is None  # still the other's to send


def test_a_digest_part_another_dispatcher_claimed_goes_out_without_it(tmp_path, engine):
    publish_rows(engine, [paid_order(f"SO-{i:03d}") for i in range(20)])
    stub = WeComStub()
    alerting, dispatcher = wecom_runtime(tmp_path, engine, stub)
    robot = dispatcher.channels["wecom_wh"]
    robot.max_per_minute = 2  # room for two posts: the twenty become two digests
    alerting.evaluate(NOW)
    with engine.connect() as conn:
        robot_rows = pd.read_sql(sa.select(alert_queue).where(alert_queue.c.channel == "wecom_wh"), conn)
    send, taken = robot.send, robot_rows.iloc[[-1]]  # the last alert: in the second digest

    def racing(msg):  # while the first digest goes out, another dispatcher claims one of the second's
        if not stub.posts:
            alert_queue_ops.claim(engine, taken, NOW)
        send(msg)

    robot.send = racing
    drained = dispatcher.drain(NOW)
    assert len(stub.posts) == 2 and drained.waiting == 1
    folded = sum(int(p["markdown"]["content"].split(" 条告警汇总")[0].lstrip("*")) for p in stub.posts)
    assert folded == 19  # every alert but the one the other dispatcher sends
    with engine.connect() as conn:
        rows = pd.read_sql(sa.select(alert_queue).where(alert_queue.c.channel == "wecom_wh"), conn)
    other = rows[rows["id"] == int(taken["id"].iloc[0])].iloc[0]
    assert other["status"] == "pending" and other["claim_token"] is not None
    assert (rows[rows["id"] != other["id"]]["status"] == "sent").all()
