"""Delivery: digests that fold a burst within a byte limit, per-minute budgets, and the plan of what goes now."""

from __future__ import annotations

import httpx
from helpers import MSG, Sleeps, mock

from order_pipeline.alerts.channels.delivery import RateBudget, deliver, digest, plan
from order_pipeline.alerts.channels.message import TRUNCATED, AlertMessage
from order_pipeline.alerts.channels.wecom import WeComRobot

# --- digests and budgets -------------------------------------------------------------------------


def _burst(n: int) -> list[AlertMessage]:
    return [
        AlertMessage(
            f"订单 SO-{i:04d} 支付后未锁库",
            f"订单 **SO-{i:04d}** 已支付 {i} 小时，仓库尚未锁定库存。" * 3,
            f"订单 SO-{i:04d} 已支付 {i} 小时",
            mentions=("13800000000",) if i % 2 else ("lisi",),
            severity="critical" if i == 44 else "warning",
            keys=(f"r1:SO-{i:04d}",),
        )
        for i in range(n)
    ]


def test_digest_packs_every_order_within_the_limit():
    messages = _burst(45)
    limit = WeComRobot.max_bytes
    assert limit is not None
    pieces = digest(messages, limit)
    assert 1 < len(pieces) < 45
    for piece in pieces:
        assert len(piece.body_markdown.encode()) <= limit and len(piece.body_text.encode()) <= limit
        assert piece.title.endswith("条告警汇总")
    everything = "".join(p.body_markdown for p in pieces)
    assert all(f"SO-{i:04d}" in everything for i in range(45))
    assert sum(int(p.title.split()[0]) for p in pieces) == 45
    assert [k for p in pieces for k in p.keys] == [m.keys[0] for m in messages]
    assert set(pieces[0].mentions) == {"13800000000", "lisi"}
    assert pieces[-1].severity == "critical"


def test_digest_of_one_and_without_limit():
    one = _burst(1)
    assert digest(one, 4096) == one
    (whole,) = digest(_burst(45), None)
    assert whole.title == "45 条告警汇总"


def test_digest_cuts_a_message_too_large_to_share():
    big = AlertMessage("大", "字" * 5000, "字" * 5000, keys=("k0",))
    pieces = digest([big, *_burst(2)], 1000)
    assert all(len(p.body_markdown.encode()) <= 1000 and len(p.body_text.encode()) <= 1000 for p in pieces)
    assert pieces[0].title == "大" and pieces[0].keys == ("k0",)
    assert pieces[0].body_markdown.endswith(TRUNCATED)


def test_rate_budget_sliding_window():
    now = [0.0]
    budget = RateBudget(20, clock=lambda: now[0])
    assert budget.available() == 20
    budget.record(15)
    now[0] = 30.0
    budget.record(5)
    assert budget.available() == 0
    now[0] = 59.9
    assert budget.available() == 0
    now[0] = 60.0  # the first 15 leave the window
    assert budget.available() == 15
    now[0] = 90.0
    assert budget.available() == 20


def test_plan_sends_as_is_within_budget_and_digests_beyond():
    now = [0.0]
    budget = RateBudget(20, clock=lambda: now[0])
    robot = WeComRobot("https://x")
    few = [m for m in _burst(10) if "lisi" in m.mentions]  # one post each
    assert plan(robot, few, budget) == few

    burst = _burst(45)
    budget.record(14)  # 6 posts left: digests with mobiles take 2 each
    batch = plan(robot, burst, budget)
    assert sum(robot.posts(p) for p in batch) <= 6
    assert all(p.title.endswith("条告警汇总") for p in batch)
    sent = {k for p in batch for k in p.keys}
    waiting = [m for m in burst if m.keys[0] not in sent]
    assert sent and waiting  # the rest waits for the next round, none is lost
    assert len(sent) + len(waiting) == 45

    budget.record(6)
    assert plan(robot, burst, budget) == []


def test_deliver_charges_the_budget_per_attempt():
    transport, _ = mock(httpx.Response(200, json={"errcode": 45009}), httpx.Response(200, json={"errcode": 0}))
    budget = RateBudget(20, clock=lambda: 0.0)
    deliver(WeComRobot("https://x", transport=transport), MSG, sleep=Sleeps(), budget=budget)
    assert budget.available() == 18
