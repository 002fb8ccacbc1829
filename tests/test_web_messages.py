"""The ops order page's customer messages, and the staff's "resend the tracking link": CSRF-checked,
audited, once per order every ten minutes, never for a cancelled order."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from helpers import (
    NOW,
    ORDER_IN_TRANSIT,
    ORDER_PAID,
    RAW_PHONE,
    STAFF_USER,
    M,
    S,
    TestClient,
    WebClient,
    access_rows,
    build_world,
    login,
    page_csrf,
)

from order_pipeline.contract.customer_schema import customer_notifications
from order_pipeline.contract.schema import order_tracking_snapshot
from order_pipeline.notify import ledger
from order_pipeline.web.app import create_app

n = customer_notifications
RESEND_BUTTON = "重发物流查询链接"


def add_messages(engine: sa.Engine, *rows: dict) -> None:
    """The notifier's tables, and ledger rows as the sender leaves them."""
    ledger.ensure_schema(engine)
    if not rows:
        return
    defaults = {
        "channel": None,
        "reason": None,
        "phone_hash": None,
        "phone_masked": None,
        "attempts": 0,
        "sent_at": None,
        "requested_by": None,
    }
    full = [{**defaults, "due_at": r["created_at"], "event_key": r["event"], **r} for r in rows]
    with engine.begin() as conn:
        conn.execute(n.insert(), full)


def ledger_rows(engine: sa.Engine, order_no: str = ORDER_PAID) -> list[dict]:
    with engine.connect() as conn:
        q = sa.select(n).where(n.c.order_no == order_no).order_by(n.c.id)
        return [dict(r) for r in conn.execute(q).mappings()]


def resend(client: TestClient, order_no: str = ORDER_PAID, csrf: str | None = None):
    if csrf is None:
        csrf = page_csrf(client.get(f"/ops/order/{order_no}").text)
    return client.post(f"/ops/order/{order_no}/resend", data={"csrf": csrf}, follow_redirects=False)


def message_table(html: str) -> list[list[str]]:
    """The cells of the page's message table, row by row (header first)."""
    table = re.search(r'<table class="messages">(.*?)</table>', html, re.S)
    assert table, "no message table on the page"
    return [
        [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
        for row in re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S)
    ]


def cancel(engine: sa.Engine, order_no: str) -> None:
    s = order_tracking_snapshot
    with engine.begin() as conn:
        conn.execute(
            s.update()
            .where(s.c.order_no == order_no)
            .values(stage="cancelled", stage_label="已取消", status="cancelled")
        )


# --- the messages on the order page ----------------------------------------------------------------------


def test_the_order_page_lists_the_customers_messages_newest_first(client):
    add_messages(
        client.world.engine,
        {
            "order_no": ORDER_IN_TRANSIT,
            "event": "shipped",
            "status": "sent",
            "channel": "sms",
            "phone_masked": "138****5678",
            "attempts": 1,
            "created_at": datetime(2026, 11, 24, 1, 0, tzinfo=NOW.tzinfo),  # 09:00 in Shanghai
            "sent_at": datetime(2026, 11, 24, 1, 0, 5, tzinfo=NOW.tzinfo),
        },
        {
            "order_no": ORDER_IN_TRANSIT,
            "event": "out_for_delivery",
            "status": "held",
            "reason": "quiet hours",
            "phone_masked": "138****5678",
            "created_at": datetime(2026, 11, 24, 14, 30, tzinfo=NOW.tzinfo),  # 22:30
        },
        {
            "order_no": ORDER_IN_TRANSIT,
            "event": "resend",
            "event_key": "resend@20261125T013000",
            "status": "in_doubt",
            "channel": "sms",
            "reason": "the sender stopped between sending and recording",
            "attempts": 1,
            "requested_by": "bob",
            "created_at": NOW - 30 * M,
        },
        {"order_no": ORDER_PAID, "event": "order_created", "status": "sent", "created_at": NOW - 5 * M},
    )
    login(client)
    html = client.get(f"/ops/order/{ORDER_IN_TRANSIT}").text
    assert "客户消息（3）" in html
    header, *rows = message_table(html)
    assert header == ["记录时间", "消息", "渠道", "状态", "说明", "号码", "尝试次数", "发送时间", "重发人"]
    assert rows == [
        [
            "2026-11-25 09:30",
            "物流查询链接",
            "sms",
            "可能已发送（待核实）",
            "the sender stopped between sending and recording",
            "",
            "1",
            "",
            "bob",
        ],
        ["2026-11-24 22:30", "正在派送", "—", "暂缓发送", "quiet hours", "138****5678", "0", "", ""],
        ["2026-11-24 09:00", "已发货", "sms", "已发送", "", "138****5678", "1", "2026-11-24 09:00", ""],
    ]
    assert 'title="quiet hours"' in html  # the reason is the status's tooltip too
    assert RESEND_BUTTON in html
    table = re.search(r'<table class="messages">.*?</table>', html, re.S)
    assert table and RAW_PHONE not in table.group(0)  # the ledger holds masked numbers only


def test_an_order_without_messages_says_so(client):
    add_messages(client.world.engine)
    login(client)
    html = client.get(f"/ops/order/{ORDER_PAID}").text
    assert "客户消息（0）" in html and "暂无客户消息。" in html and RESEND_BUTTON in html


def test_without_the_notifiers_tables_the_page_renders_and_a_resend_is_refused(client):
    login(client)
    r = client.get(f"/ops/order/{ORDER_PAID}")
    assert r.status_code == 200 and "暂无客户消息（此仓库未启用客户消息）" in r.text
    assert RESEND_BUTTON not in r.text
    r = resend(client, csrf=page_csrf(r.text))
    assert r.status_code == 409 and "客户消息未启用，无法重发查询链接" in r.text
    assert access_rows(client)[-1]["outcome"] == "resend_unavailable"
    assert not sa.inspect(client.world.engine).has_table(n.name)  # the web app does not create them


def test_a_config_that_messages_no_customer_offers_no_resend(make_client):
    client = make_client(customer_messages=False)
    add_messages(client.world.engine)
    login(client)
    r = client.get(f"/ops/order/{ORDER_PAID}")
    assert r.status_code == 200 and RESEND_BUTTON not in r.text
    r = resend(client, csrf=page_csrf(r.text))
    assert r.status_code == 409 and "客户消息未启用" in r.text
    with client.world.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(n)).scalar() == 0


# --- resend ------------------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_client(request, tmp_path, clock, monkeypatch) -> Iterator[WebClient]:
    """A WebClient whose warehouse (SQLite or PostgreSQL) has the message ledger."""
    url = request.getfixturevalue("pg_database")() if request.param == "postgres" else None
    world = build_world(tmp_path / "w", url=url)
    add_messages(world.engine)
    for k, v in world.env.items():
        monkeypatch.setenv(k, v)
    client = WebClient(create_app(world.config(), engine=world.engine, clock=clock), world)
    yield client
    client.close()
    world.engine.dispose()


def test_a_resend_is_queued_once_audited_and_announced(ledger_client):
    client = ledger_client
    login(client)
    r = resend(client)
    assert r.status_code == 303 and r.headers["location"] == f"/ops/order/{ORDER_PAID}?notice=resend_queued"
    page = client.get(r.headers["location"])
    assert "已加入发送队列" in page.text
    assert message_table(page.text)[1][:4] == ["2026-11-25 10:00", "物流查询链接", "—", "待发送"]
    assert message_table(page.text)[1][-1] == STAFF_USER
    (row,) = ledger_rows(client.world.engine)
    assert (row["event"], row["event_key"], row["status"], row["requested_by"]) == (
        "resend",
        "resend@20261125T020000",
        "pending",
        STAFF_USER,
    )
    assert row["attempts"] == 0 and row["claim_token"] is None
    staff = [(a["order_no"], a["outcome"]) for a in access_rows(client) if a["actor"] == STAFF_USER]
    assert staff == [(None, "login"), (ORDER_PAID, "ok"), (ORDER_PAID, "resend_queued"), (ORDER_PAID, "ok")]


def test_one_resend_per_order_every_ten_minutes(ledger_client, clock):
    client = ledger_client
    login(client)
    assert resend(client).status_code == 303
    clock.advance((10 * M - S).total_seconds())  # 10:09:59
    r = resend(client)
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert f"10:00:00 已由 {STAFF_USER} 请求重发" in r.text and "请在 10:10:00 之后再试" in r.text
    assert len(ledger_rows(client.world.engine)) == 1
    assert resend(client, ORDER_IN_TRANSIT).status_code == 303  # another order has its own ten minutes
    clock.advance(1)  # 10:10:00, ten minutes after the first
    assert resend(client).status_code == 303
    keys = [r["event_key"] for r in ledger_rows(client.world.engine)]
    assert keys == ["resend@20261125T020000", "resend@20261125T021000"]
    outcomes = [a["outcome"] for a in access_rows(client) if a["outcome"].startswith("resend")]
    assert outcomes == ["resend_queued", "resend_too_soon", "resend_queued", "resend_queued"]


def test_a_colleagues_recent_resend_counts_and_is_named(client):
    add_messages(
        client.world.engine,
        {
            "order_no": ORDER_PAID,
            "event": "resend",
            "event_key": "resend@20261125T015500",
            "status": "sent",
            "requested_by": "bob",
            "created_at": NOW - 5 * M,
        },
    )
    login(client)
    r = resend(client)
    assert r.status_code == 429 and r.headers["retry-after"] == "300"
    assert "09:55:00 已由 bob 请求重发" in r.text and "请在 10:05:00 之后再试" in r.text
    assert len(ledger_rows(client.world.engine)) == 1


def test_a_resend_needs_the_forms_csrf_token(client):
    add_messages(client.world.engine)
    login(client)
    client.get(f"/ops/order/{ORDER_PAID}")
    assert client.post(f"/ops/order/{ORDER_PAID}/resend", data={}, follow_redirects=False).status_code == 403
    assert resend(client, csrf="forged").status_code == 403
    assert ledger_rows(client.world.engine) == []


def test_a_resend_needs_a_staff_session(client):
    add_messages(client.world.engine)
    r = client.post(f"/ops/order/{ORDER_PAID}/resend", data={"csrf": "x"}, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == f"/ops/login?next={quote(f'/ops/order/{ORDER_PAID}/resend', safe='')}"
    assert ledger_rows(client.world.engine) == []


def test_a_cancelled_order_gets_no_resend(client):
    add_messages(client.world.engine)
    cancel(client.world.engine, ORDER_PAID)
    login(client)
    page = client.get(f"/ops/order/{ORDER_PAID}")
    assert RESEND_BUTTON not in page.text and "订单已取消，不再给客户发送消息" in page.text
    r = resend(client, csrf=page_csrf(page.text))
    assert r.status_code == 409 and "此订单已取消，不再给客户发送消息" in r.text
    assert ledger_rows(client.world.engine) == []
    assert access_rows(client)[-1]["outcome"] == "resend_cancelled"


def test_a_resend_for_an_order_not_in_the_snapshot_is_404(client):
    add_messages(client.world.engine)
    login(client)
    csrf = page_csrf(client.get(f"/ops/order/{ORDER_PAID}").text)
    assert resend(client, "SO9999", csrf=csrf).status_code == 404
    assert resend(client, "bad order", csrf=csrf).status_code == 400
    assert ledger_rows(client.world.engine, "SO9999") == []
    assert access_rows(client)[-1]["outcome"] == "not_found"


def test_the_notice_is_one_of_the_pages_own_texts(client):
    login(client)
    html = client.get(f"/ops/order/{ORDER_PAID}", params={"notice": "<b>你的订单已退款</b>"}).text
    assert "你的订单已退款" not in html and 'role="status"' not in html
