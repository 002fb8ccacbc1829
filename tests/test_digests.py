"""Status digests: the `alerts.digests` config, the schedule's periods, what a digest counts and names,
the board list of exactly its orders, the channel's size limit, and once per period across reruns."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime, time, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from helpers import ORDER_PAID, TZ, login, make_config, mock, order, outbox, publish_rows

from order_pipeline.alerts.channels.wecom import WeComRobot
from order_pipeline.alerts.digests import (
    KIND,
    MAX_NAMED,
    Digest,
    board_link,
    queue_digests,
    read_digest,
    render,
)
from order_pipeline.alerts.dispatch import Dispatcher, build_channels
from order_pipeline.alerts.evaluation import Alerting
from order_pipeline.alerts.schedules import DigestSchedule, period_key
from order_pipeline.alerts.settings import load_alert_settings
from order_pipeline.contract.parsing import ConfigError
from order_pipeline.contract.schema import alert_digests, alert_queue, order_tracking_snapshot
from order_pipeline.domain.times import as_utc, zone
from order_pipeline.warehouse.frames import insert_frame


def local(day: int, hhmm: str, tz: str = TZ) -> datetime:
    """2026-11-`day` at `hhmm` on the business clock, as an aware time."""
    h, m = map(int, hhmm.split(":"))
    return datetime(2026, 11, day, h, m, tzinfo=zone(tz))


def _found(pattern: str, text: str) -> str:
    m = re.search(pattern, text)
    assert m is not None, f"{pattern!r} not in {text!r}"
    return m.group(1)


AT_9_16 = DigestSchedule("warehouse", "warehouse", at=(time(9), time(16)))
HOURLY = DigestSchedule("finance", "finance", every=timedelta(hours=1))


# --- config ----------------------------------------------------------------------------------------


def settings_of(tmp_path, digests, **alerts):
    config = make_config(tmp_path, "sqlite://", alerts={**alerts, "digests": digests})
    return load_alert_settings(config)


def test_no_digests_by_default(tmp_path):
    assert load_alert_settings(make_config(tmp_path, "sqlite://")).digests == ()
    assert settings_of(tmp_path, {}).digests == ()


def test_digest_schedules_are_parsed(tmp_path):
    s = settings_of(
        tmp_path,
        {
            "warehouse": {"at": ["16:00", "9:05"]},
            "finance": {"every": "1h"},
            "ops_lead": {"at": "18:00", "role": "all"},
            "east": {"every": "30m", "role": "carrier"},
        },
        groups={"east": {"channels": ["outbox"]}},
    )
    assert s.digests == (
        DigestSchedule("warehouse", "warehouse", at=(time(9, 5), time(16))),
        DigestSchedule("finance", "finance", every=timedelta(hours=1)),
        DigestSchedule("ops_lead", None, at=(time(18),)),
        DigestSchedule("east", "carrier", every=timedelta(minutes=30)),
    )


@pytest.mark.parametrize(
    ("digests", "entry", "fix"),
    [
        ({"nobody": {"every": "1h"}}, "alerts.digests.nobody", "use one of:"),
        ({"warehouse": {"at": ["09:00"], "weekly": True}}, "alerts.digests.warehouse.weekly", "use one of: at, every"),
        ({"warehouse": {"at": ["09:00", "25:00"]}}, "alerts.digests.warehouse.at[1]", "24-hour clock"),
        ({"warehouse": {"at": ["09:00", "9:00"]}}, "alerts.digests.warehouse.at[1]", "list each time once"),
        ({"warehouse": {"at": []}}, "alerts.digests.warehouse.at", 'at: ["09:00", "16:00"]'),
        ({"warehouse": {"at": ["09:00"], "every": "1h"}}, "alerts.digests.warehouse", "write one of them"),
        ({"warehouse": {}}, "alerts.digests.warehouse", "write one of them"),
        ({"warehouse": {"every": "7h"}}, "alerts.digests.warehouse.every", "30m, 1h"),
        ({"warehouse": {"every": "10m"}}, "alerts.digests.warehouse.every", "30m, 1h"),
        ({"warehouse": {"every": "hourly"}}, "alerts.digests.warehouse.every", "a number and a unit"),
        ({"warehouse": {"every": "1h", "role": "boss"}}, "alerts.digests.warehouse.role", "customer_service"),
        ({"ops_lead": {"every": "1h"}}, "alerts.digests.ops_lead.role", "(or `all` for every order)"),
        (["warehouse"], "alerts.digests", "warehouse: {at:"),
    ],
)
def test_a_bad_digest_fails_at_load_naming_the_entry_and_the_fix(tmp_path, digests, entry, fix):
    with pytest.raises(ConfigError) as e:
        settings_of(tmp_path, digests)
    assert e.value.entry == entry and fix in e.value.fix


def test_an_unquoted_afternoon_time_is_refused_with_the_quoting_fix(tmp_path):
    # YAML reads 16:00 as 960 (base 60) and 09:00 as text: the first would otherwise be 00:16 or an error.
    digests = yaml.safe_load("warehouse: {at: [09:00, 16:00]}")
    assert digests["warehouse"]["at"] == ["09:00", 960]
    with pytest.raises(ConfigError) as e:
        settings_of(tmp_path, digests)
    assert e.value.entry == "alerts.digests.warehouse.at[1]" and '["16:00"]' in e.value.fix


# --- periods ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "start", "following"),
    [
        (local(25, "08:59"), local(24, "16:00"), local(25, "09:00")),
        (local(25, "09:00"), local(25, "09:00"), local(25, "16:00")),  # a slot starts its own period
        (local(25, "15:59"), local(25, "09:00"), local(25, "16:00")),
        (local(25, "16:00"), local(25, "16:00"), local(26, "09:00")),  # across midnight
        (local(25, "23:59"), local(25, "16:00"), local(26, "09:00")),
        (local(26, "00:00"), local(25, "16:00"), local(26, "09:00")),
    ],
)
def test_fixed_times_of_day(now, start, following):
    assert AT_9_16.period_start(now, TZ) == start
    assert AT_9_16.next_start(now, TZ) == following
    assert AT_9_16.period_start(now - timedelta(microseconds=1), TZ) <= start


def test_period_keys_and_the_period_before():
    assert period_key(local(25, "09:00"), TZ) == "2026-11-25T09:00+08:00"
    assert AT_9_16.previous_start(local(25, "09:00"), TZ) == local(24, "16:00")
    assert AT_9_16.previous_start(local(25, "16:00"), TZ) == local(25, "09:00")


def test_hourly_across_midnight():
    assert HOURLY.period_start(local(25, "10:59") + timedelta(seconds=59), TZ) == local(25, "10:00")
    assert HOURLY.period_start(local(25, "11:00"), TZ) == local(25, "11:00")
    assert HOURLY.next_start(local(25, "23:30"), TZ) == local(26, "00:00")
    assert HOURLY.previous_start(local(26, "00:00"), TZ) == local(25, "23:00")
    daily = DigestSchedule("finance", "finance", every=timedelta(days=1))
    assert daily.period_start(local(25, "23:59"), TZ) == local(25, "00:00")
    assert daily.next_start(local(25, "00:00"), TZ) == local(26, "00:00")


@pytest.mark.parametrize(
    ("tz", "key"), [("UTC", "2026-11-25T09:00+00:00"), ("America/Bogota", "2026-11-25T09:00-05:00")]
)
def test_other_zones_count_on_their_own_clock(tz, key):
    now = local(25, "09:00", tz)
    start = AT_9_16.period_start(now, tz)
    assert start == now and period_key(start, tz) == key
    assert AT_9_16.next_start(local(25, "16:30", tz), tz) == local(26, "09:00", tz)


# --- what a digest counts and names ----------------------------------------------------------------


def rows_around_9() -> list[dict]:
    """Orders around the window (11-24 16:00, 11-25 09:00] of the warehouse's 09:00 digest."""
    return [
        # Ordered and paid in the window: counted under both stages.
        order("W1", "paid", ordered_at=local(24, "20:00"), paid_at=local(25, "08:00"), responsible_role="warehouse"),
        # Paid at the window's end: in it.
        order("W2", "paid", ordered_at=local(20, "10:00"), paid_at=local(25, "09:00"), responsible_role="warehouse"),
        # Paid at the window's start: the previous digest had it.
        order("W3", "paid", ordered_at=local(20, "10:00"), paid_at=local(24, "16:00"), responsible_role="warehouse"),
        # After the window: the next digest's.
        order("W4", "paid", ordered_at=local(20, "10:00"), paid_at=local(25, "09:01"), responsible_role="warehouse"),
        # Locked in the window, but logistics owns it now.
        order(
            "L1",
            "locked",
            ordered_at=local(20, "10:00"),
            paid_at=local(21, "10:00"),
            locked_at=local(25, "07:00"),
            responsible_role="logistics",
        ),
        order("C1", "cancelled", source_updated_at=local(25, "06:00"), responsible_role="finance", paid_amount=10.0),
        order(
            "X1",
            "exception",
            latest_event_at=local(25, "05:00"),
            waiting_since=local(25, "05:00"),
            responsible_role="customer_service",
        ),
    ]


def test_a_digest_counts_per_stage_reached_and_names_the_longest_waiting(engine):
    publish_rows(engine, rows_around_9())
    with engine.connect() as conn:
        d = read_digest(conn, AT_9_16, "仓库", local(24, "16:00"), local(25, "09:00"), "https://ops.example.com", TZ)
        cs = DigestSchedule("customer_service", "customer_service", every=timedelta(hours=1))
        x = read_digest(conn, cs, "客服", local(25, "04:00"), local(25, "05:00"), "https://ops.example.com", TZ)
        every = DigestSchedule("ops_lead", None, at=(time(9),))
        all_ = read_digest(conn, every, "运营", local(24, "16:00"), local(25, "09:00"), "https://ops.example.com", TZ)
    assert d.orders == 2 and d.counts == {"ordered": 1, "paid": 2}
    assert [r["order_no"] for r in d.named] == ["W1", "W2"]  # W1 has waited since 08:00, W2 since 09:00
    assert x.orders == 1 and x.counts == {"exception": 1}  # 配送异常 at the carrier event that put it there
    assert all_.orders == 5 and all_.counts == {"ordered": 1, "paid": 2, "locked": 1, "cancelled": 1, "exception": 1}
    msg = render(d, local(25, "09:00"), TZ, None)
    assert msg.title == "【订单动态】仓库 11-25 09:00"
    assert "11-24 16:00 至 11-25 09:00，仓库负责的订单中有 2 单进入新阶段：" in msg.body_markdown
    assert "> 下单完成：1 单\n> 支付确认：2 单" in msg.body_markdown
    assert "- [W1](https://ops.example.com/ops/order/W1) 支付确认，已等待 1小时" in msg.body_markdown
    assert "- W2 支付确认，已等待 不到1分钟" in msg.body_text
    assert f"[在看板查看这 2 单]({d.link})" in msg.body_markdown and f"看板：{d.link}" in msg.body_text
    assert d.link == (
        "https://ops.example.com/ops/orders?role=warehouse"
        "&changed_since=2026-11-24T16:00%2B08:00&changed_until=2026-11-25T09:00%2B08:00"
    )
    assert "负责人：客服" in render(all_, local(25, "09:00"), TZ, None).body_text  # every owner's orders: who owns it


def digest_of(named: int, order_no_len: int = 150) -> Digest:
    rows = [
        {"order_no": f"SO{i:03d}-" + "X" * order_no_len, "stage": "paid", "responsible_role": "warehouse"}
        for i in range(named)
    ]
    rows = [{**r, "waiting_since": local(25, "08:00")} for r in rows]
    since, until = local(24, "16:00"), local(25, "09:00")
    link = board_link("https://ops.example.com", "warehouse", since, until, TZ)
    return Digest(
        "warehouse", "仓库", "warehouse", since, until, {"paid": 250}, 250, rows, link, "https://ops.example.com"
    )


def test_a_long_digest_drops_names_before_counts_and_keeps_the_link():
    d = digest_of(MAX_NAMED)
    whole = render(d, local(25, "09:00"), TZ, None)
    assert len(whole.body_markdown.encode()) > 3584  # more than a WeCom message takes
    msg = render(d, local(25, "09:00"), TZ, 3584)
    for body, head in ((msg.body_markdown, f"**{msg.title}**\n"), (msg.body_text, f"【{msg.title}】\n")):
        assert len((head + body).encode()) <= 3584
        assert "支付确认：250 单" in body and d.link in body
    shown = int(_found(r"等待最久的 (\d+) 单", msg.body_markdown))
    assert 0 < shown < MAX_NAMED and f"其余 {250 - shown} 单见看板。" in msg.body_markdown
    bare = render(d, local(25, "09:00"), TZ, 600)  # no room for a single name: counts and the link
    assert "等待最久" not in bare.body_markdown and "订单明细见看板。" in bare.body_markdown
    assert f"[在看板查看这 250 单]({d.link})" in bare.body_markdown


# --- queued once per period ------------------------------------------------------------------------

RULES = ("paid_not_locked", "stock_below_safety", "stuck_parcel", "promise_due_not_shipped")
DIGESTS = {"warehouse": {"at": ["09:00", "16:00"]}, "finance": {"every": "1h"}}


def alerting(tmp_path, engine, digests=DIGESTS, channels=None, specs=None, groups=None) -> tuple[Alerting, Dispatcher]:
    specs = specs or {"wh_box": {"type": "outbox"}, "fin_box": {"type": "outbox"}}
    groups = groups or {
        "warehouse": {"channels": ["wh_box"], "mentions": ["zhangsan"]},
        "finance": {"channels": ["fin_box"]},
    }
    sections = {
        "channels": specs,
        "alerts": {"board_url": "https://ops.example.com", "groups": groups, "digests": digests},
        "rules": {r: {"enabled": False} for r in RULES},  # only the digests speak
        "freshness": {"carrier": "off"},
    }
    config = make_config(tmp_path, str(engine.url), **sections)
    a = Alerting(config, engine)
    return a, Dispatcher(engine, build_channels(a.settings, engine) if channels is None else channels)


def digest_rows(engine) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql(sa.select(alert_queue).where(alert_queue.c.kind == KIND).order_by(alert_queue.c.id), conn)


def recorded(engine) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql(
            sa.select(alert_digests).order_by(alert_digests.c.period_start, alert_digests.c.group_name), conn
        )


def test_digests_go_out_once_per_period_across_reruns(tmp_path, engine):
    publish_rows(engine, rows_around_9())
    alerts, dispatcher = alerting(tmp_path, engine)
    ev = alerts.evaluate(local(25, "09:00") + timedelta(seconds=30))
    dispatcher.drain(local(25, "09:01"))
    queued = digest_rows(engine)
    # The warehouse's 09:00 digest; finance's 09:00 hour (08:00, 09:00] had no change: nothing sent.
    assert queued[["rule_id", "entity_key", "target", "channel", "status"]].values.tolist() == [
        ["digest:warehouse", "2026-11-25T09:00+08:00", "warehouse", "wh_box", "sent"]
    ]
    assert ev.digests_queued == 1 and ev.queued == 1
    assert json.loads(queued["payload"][0])["mentions"] == ["zhangsan"]
    sent = outbox(engine)
    assert sent["title"].tolist() == ["【订单动态】仓库 11-25 09:00"] and "支付确认：2 单" in sent["body"][0]
    assert ev.next_due == local(25, "10:00")  # finance's next hour, before the warehouse's 16:00
    assert recorded(engine)[["group_name", "period", "orders"]].values.tolist() == [
        ["finance", "2026-11-25T09:00+08:00", 0],
        ["warehouse", "2026-11-25T09:00+08:00", 2],
    ]
    for again in (local(25, "09:00") + timedelta(seconds=30), local(25, "15:59")):  # reruns in the same period
        alerts, dispatcher = alerting(tmp_path, engine)  # a new process: nothing kept in memory
        ev = alerts.evaluate(again)
        dispatcher.drain(again)
        assert ev.digests_queued == 0  # finance's later hours had no change either
    assert len(digest_rows(engine)) == 1 and len(outbox(engine)) == 1
    # The next period counts from the end of this one.
    publish_rows(
        engine, [*rows_around_9(), order("W5", "paid", paid_at=local(25, "12:00"), responsible_role="warehouse")]
    )
    ev = alerts.evaluate(local(25, "16:00"))
    dispatcher.drain(local(25, "16:00"))
    assert ev.digests_queued == 1
    body = outbox(engine)["body"].iloc[-1]
    assert "11-25 09:00 至 11-25 16:00" in body and "有 2 单进入新阶段" in body  # W4 (09:01) and W5
    assert "W1" not in body and "W4" in body and "W5" in body


def test_a_digest_rolled_back_with_its_transaction_is_queued_by_the_next_evaluation(tmp_path, engine):
    publish_rows(engine, rows_around_9())
    alerts, _ = alerting(tmp_path, engine)
    now = local(25, "09:00")
    with pytest.raises(RuntimeError), engine.begin() as conn:
        assert queue_digests(conn, alerts.settings, "https://ops.example.com", now, TZ).queued == 1
        raise RuntimeError("the evaluation died before commit")
    assert recorded(engine).empty and digest_rows(engine).empty
    with engine.begin() as conn:
        assert queue_digests(conn, alerts.settings, "https://ops.example.com", now, TZ).queued == 1
    with engine.begin() as conn:  # a second evaluator, in its own transaction
        assert queue_digests(conn, alerts.settings, "https://ops.example.com", now, TZ).queued == 0
    assert len(digest_rows(engine)) == 1


def test_a_missed_slot_is_covered_by_the_next_digest(tmp_path, engine):
    publish_rows(engine, rows_around_9())
    alerts, _ = alerting(tmp_path, engine, digests={"warehouse": {"at": ["09:00", "16:00"]}})
    with engine.begin() as conn:
        queue_digests(conn, alerts.settings, "https://ops.example.com", local(24, "16:05"), TZ)
    # Nothing ran from 16:05 until 17:00 the next day: one digest, for 16:00, counting since the last one.
    ev = alerts.evaluate(local(25, "17:00"))
    assert ev.digests_queued == 1
    last = recorded(engine).iloc[-1]
    assert last["period"] == "2026-11-25T16:00+08:00" and as_utc(last["window_start"]) == local(24, "16:00")
    payload = json.loads(digest_rows(engine)["payload"].iloc[-1])
    assert "11-24 16:00 至 11-25 16:00" in payload["body_text"] and "有 3 单" in payload["body_text"]  # W1 W2 W4


def test_a_group_without_changes_gets_no_message(tmp_path, engine):
    publish_rows(engine, [order("W9", "paid", paid_at=local(20, "10:00"), responsible_role="warehouse")])
    alerts, dispatcher = alerting(tmp_path, engine)
    ev = alerts.evaluate(local(25, "09:00"))
    dispatcher.drain(local(25, "09:00"))
    assert ev.digests_queued == 0 and outbox(engine).empty
    assert sorted(recorded(engine)["group_name"]) == ["finance", "warehouse"]  # looked at, not sent
    assert ev.next_due == local(25, "10:00")


def test_through_wecom_a_long_digest_fits_4096_bytes_as_counts_names_and_the_link(tmp_path, engine):
    long_no = "SO-" + "北" * 50  # 150 bytes each, 450 more in each order's link
    publish_rows(
        engine,
        [order(f"{long_no}{i:03d}", "paid", paid_at=local(25, "08:00") - i * timedelta(minutes=1)) for i in range(40)],
    )
    transport, seen = mock(httpx.Response(200, json={"errcode": 0, "errmsg": "ok"}))
    robot = WeComRobot("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k", name="wecom_wh", transport=transport)
    alerts, dispatcher = alerting(
        tmp_path,
        engine,
        digests={"warehouse": {"at": ["09:00"]}},
        channels={"wecom_wh": robot},
        specs={"wecom_wh": {"type": "wecom", "webhook_url_env": "WECOM_WH_URL"}},
        groups={"warehouse": {"channels": ["wecom_wh"]}},
    )
    alerts.evaluate(local(25, "09:00"))
    drained = dispatcher.drain(local(25, "09:00"))
    assert drained.delivered == 1 and len(seen) == 1
    content = json.loads(seen[0].content)["markdown"]["content"]
    assert len(content.encode()) <= WeComRobot.MARKDOWN_BYTES
    assert "支付确认：40 单" in content and "[在看板查看这 40 单](https://ops.example.com/ops/orders?role=" in content
    shown = int(_found(r"等待最久的 (\d+) 单", content))
    assert 0 < shown < MAX_NAMED and f"其余 {40 - shown} 单见看板。" in content
    assert "…(已截断)" not in content  # fitted, not cut


# --- the board shows exactly the digest's orders ---------------------------------------------------


def test_the_board_link_lists_exactly_the_digests_orders(client):
    engine = client.world.engine
    extra = [
        order("SO-W2", "paid", paid_at=local(25, "09:00"), responsible_role="warehouse"),  # the window's end: in
        order("SO-W3", "paid", paid_at=local(24, "16:00"), responsible_role="warehouse"),  # its start: out
        order("SO-W4", "paid", paid_at=local(25, "09:05"), responsible_role="warehouse"),  # after: out
        order("SO-L1", "locked", locked_at=local(25, "07:00"), responsible_role="logistics"),  # another owner: out
    ]
    frame = pd.DataFrame(extra).reindex(columns=[c.name for c in order_tracking_snapshot.c])
    with engine.begin() as conn:
        insert_frame(conn, order_tracking_snapshot, frame)
        # The seeded SO1002 (warehouse) was paid at 01:00 on 11-25.
        d = read_digest(conn, AT_9_16, "仓库", local(24, "16:00"), local(25, "09:00"), "http://testserver", TZ)
    assert {r["order_no"] for r in d.named} == {ORDER_PAID, "SO-W2"} and d.orders == 2
    login(client)
    link = urlsplit(d.link)
    r = client.get(f"{link.path}?{link.query}")
    assert r.status_code == 200
    listed = set(re.findall(r'href="/ops/order/([^"]+)"', r.text))
    assert listed == {ORDER_PAID, "SO-W2"}
    assert "11-24 16:00 至 11-25 09:00 有阶段变化" in r.text
    export = _found(r'href="(/ops/orders\.csv\?[^"]+)"', r.text).replace("&amp;", "&")
    assert parse_qs(urlsplit(export).query) == parse_qs(link.query)
    rows = csv.DictReader(io.StringIO(client.get(export).content.decode("utf-8-sig")))
    assert {row["order_no"] for row in rows} == {ORDER_PAID, "SO-W2"}
    # The same filter typed with an unencoded "+", and without a role: every owner's changed orders.
    r = client.get("/ops/orders?changed_since=2026-11-24T16:00+08:00&changed_until=2026-11-25T09:00+08:00")
    assert set(re.findall(r'href="/ops/order/([^"]+)"', r.text)) == {ORDER_PAID, "SO-W2", "SO-L1"}
    # A garbled time is ignored like any unknown filter value.
    r = client.get("/ops/orders?role=warehouse&changed_since=yesterday")
    assert "有阶段变化" not in r.text and "SO-W4" in r.text
