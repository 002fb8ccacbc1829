"""The customer tracking page: what it shows and never shows, its statuses, rate limits, the access
audit, and serving while a publish holds the warehouse."""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa
from helpers import (
    COURIER_PHONE,
    COURIER_PHONE_INTL,
    FULL_ADDRESS,
    FULL_NAME,
    NOW,
    ORDER_EXCEPTION,
    ORDER_IN_TRANSIT,
    ORDER_PAID,
    RAW_PHONE,
    SECRET,
    SIGNER_NAME,
    STREET,
    WAYBILL,
    WebClient,
    access_rows,
    build_world,
    link_path,
)
from sqlalchemy.exc import OperationalError

from order_pipeline.contract.schema import order_tracking_events, order_tracking_snapshot, tracking_access_log
from order_pipeline.domain.links import make_token
from order_pipeline.web.app import create_app
from order_pipeline.web.customer import page as customer_module
from order_pipeline.web.ops import queries
from order_pipeline.web.security.audit import AccessLog

# "8765" is the middle of both courier numbers, whatever way they are written.
NEVER_SHOWN = [
    RAW_PHONE,
    FULL_NAME,
    FULL_ADDRESS,
    STREET,
    COURIER_PHONE,
    COURIER_PHONE_INTL,
    "8765",
    SIGNER_NAME,
    "腾讯大厦",
]


def test_customer_page_shows_masked_timeline_events_and_next_step(client):
    r = client.get(link_path(ORDER_IN_TRANSIT))
    assert r.status_code == 200
    html = r.text
    assert "138****5678" in html and "张*" in html and "广东省深圳市南山区" in html
    for label in ("下单完成", "支付确认", "库存锁定", "打包出库", "配送中", "签收完成"):
        assert label in html
    assert '<li class="current">配送中' in html
    assert "2026-11-23 08:00" in html  # ordered 50 h before 10:00 Shanghai time
    assert "2026-11-25 08:00" in html  # newest carrier event, in Shanghai time
    assert html.index("深圳南山营业点】，快递员") < html.index("深圳转运中心") < html.index("已收取快件")
    assert "139****4321" in html and "139****0000" in html
    assert WAYBILL in html and "顺丰速运" in html
    assert "预计送达" in html and "2026-11-26" in html
    assert "包裹正在运输途中" in html
    assert r.headers["referrer-policy"] == "no-referrer" and r.headers["cache-control"] == "no-store"
    assert "<script" not in html


def test_english_page(client):
    r = client.get(link_path(ORDER_IN_TRANSIT, lang="en"))
    assert r.status_code == 200
    assert 'lang="en"' in r.text
    for label in (
        "Order placed",
        "Payment confirmed",
        "Stock reserved",
        "Packed and shipped",
        "In transit",
        "Delivered",
    ):
        assert label in r.text
    assert "SF Express" in r.text and "Your parcel is on its way" in r.text and "Beijing time" in r.text
    assert "138****5678" in r.text


def test_off_path_orders_say_so(client):
    token = make_token(ORDER_EXCEPTION, NOW + timedelta(days=1), SECRET)
    r = client.get(f"/order/{ORDER_EXCEPTION}?t={token}")
    assert r.status_code == 200
    assert "配送异常" in r.text and "拒签: 收件人拒收" in r.text and "客服会跟进处理" in r.text
    assert "收件人 欧* 拒收" in r.text and SIGNER_NAME not in r.text


def test_carrier_texts_and_areas_hide_the_street_id_numbers_and_every_way_of_writing_a_mobile(client):
    with client.world.engine.begin() as conn:
        conn.execute(
            sa.insert(order_tracking_events),
            {
                "order_no": ORDER_IN_TRANSIT,
                "event_at": NOW - timedelta(hours=1),
                "kind": "carrier",
                "waybill_no": WAYBILL,
                "context": f"快件已送达{FULL_ADDRESS}，代收人身份证 440305199001011234，"
                "快递员黄飞鸿电话１３６１２３４５６７８，备用 135.1234.5678",
                "area": "广东省深圳市南山区科技园南区深南大道10000号",
            },
        )
    html = client.get(link_path(ORDER_IN_TRANSIT)).text
    assert (
        "快件已送达广东省深圳市南山区****，代收人身份证 44****************，快递员黄*电话136****5678，备用 135****5678"
    ) in html
    assert '<span class="area">广东省深圳市南山区****</span>' in html
    for secret in (*NEVER_SHOWN, "科技园南区", "440305199001011234", "１２３４５６７８", "1234.5678", "黄飞鸿"):
        assert secret not in html, secret


@pytest.mark.parametrize(
    "path, status",
    [
        (f"/order/{ORDER_IN_TRANSIT}", 403),  # no token
        (f"/order/{ORDER_IN_TRANSIT}?t=garbage", 403),
        (
            "/order/SO9999?t=" + make_token(ORDER_IN_TRANSIT, NOW + timedelta(days=1), SECRET),
            403,
        ),  # another order's token
        ("/order/SO9999?t=1.abc", 403),  # unknown order, bad token: 403, not 404
        ("/order/SO9999?t=" + make_token("SO9999", NOW + timedelta(days=1), SECRET), 404),
        (f"/order/{ORDER_IN_TRANSIT}?t=" + make_token(ORDER_IN_TRANSIT, NOW - timedelta(seconds=1), SECRET), 410),
        ("/order/bad%20no?t=x", 400),
        ("/order/" + "A" * 80 + "?t=x", 400),
        ("/order/-leading-dash?t=x", 400),
    ],
)
def test_customer_statuses(client, path, status):
    r = client.get(path)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("text/html")


def test_tampered_expiry_is_forbidden_not_expired(client):
    expires, sig = make_token(ORDER_IN_TRANSIT, NOW + timedelta(days=1), SECRET).split(".")
    r = client.get(f"/order/{ORDER_IN_TRANSIT}?t={int(expires) + 3600}.{sig}")
    assert r.status_code == 403


def test_expired_link_says_how_to_get_a_new_one(client):
    r = client.get(link_path(ORDER_IN_TRANSIT, expires=NOW - timedelta(hours=1)))
    assert r.status_code == 410
    assert "链接已过期" in r.text and "联系客服" in r.text and "新的查询链接" in r.text and "400-800-1234" in r.text
    r = client.get(link_path(ORDER_IN_TRANSIT, expires=NOW - timedelta(hours=1), lang="en"))
    assert r.status_code == 410 and "send you a new link" in r.text


def test_no_customer_response_leaks_personal_data(client):
    paths = [
        link_path(ORDER_IN_TRANSIT),
        link_path(ORDER_IN_TRANSIT, lang="en"),
        link_path(ORDER_EXCEPTION),
        f"/order/{ORDER_IN_TRANSIT}?t=bad",
        link_path(ORDER_IN_TRANSIT, expires=NOW - timedelta(days=1)),
        link_path("SO9999"),
        "/order/bad%20no",
    ]
    for path in paths:
        html = client.get(path).text
        for secret in NEVER_SHOWN:
            assert secret not in html, (path, secret)


def test_rate_limit_per_ip_with_retry_after(make_client, clock):
    client = make_client({"rate_limits": {"per_ip": "5/1m", "per_order": "100/1m"}})
    statuses = [client.get(link_path(ORDER_IN_TRANSIT)).status_code for _ in range(5)]
    assert statuses == [200] * 5
    r = client.get(link_path(ORDER_PAID))
    assert r.status_code == 429
    assert r.headers["retry-after"] == "12"
    assert "12 秒后" in r.text
    clock.advance(12)
    assert client.get(link_path(ORDER_PAID)).status_code == 200


def test_rate_limit_per_order_counts_only_genuine_links(make_client, clock):
    client = make_client({"rate_limits": {"per_ip": "1000/1m", "per_order": "3/1m"}})
    for _ in range(10):  # someone hammering the order with bad tokens does not lock the customer out
        assert client.get(f"/order/{ORDER_IN_TRANSIT}?t=1.bad").status_code == 403
    assert [client.get(link_path(ORDER_IN_TRANSIT)).status_code for _ in range(4)] == [200, 200, 200, 429]
    assert client.get(link_path(ORDER_PAID)).status_code == 200  # another order has its own budget
    clock.advance(60)
    assert client.get(link_path(ORDER_IN_TRANSIT)).status_code == 200


def test_every_customer_access_is_audited(client):
    client.get(link_path(ORDER_IN_TRANSIT), headers={"User-Agent": "Mozilla/5.0 test phone"})
    client.get(f"/order/{ORDER_IN_TRANSIT}?t=forged")
    client.get(link_path(ORDER_IN_TRANSIT, expires=NOW - timedelta(days=1)))
    client.get(link_path("SO9999"))
    client.get("/order/bad%20no")
    rows = access_rows(client)
    assert [(r["order_no"], r["outcome"]) for r in rows] == [
        (ORDER_IN_TRANSIT, "ok"),
        (ORDER_IN_TRANSIT, "forbidden"),
        (ORDER_IN_TRANSIT, "expired"),
        ("SO9999", "not_found"),
        ("bad no", "bad_request"),
    ]
    assert {r["actor"] for r in rows} == {"customer"}
    assert rows[0]["user_agent"] == "Mozilla/5.0 test phone"
    hashes = {r["ip_hash"] for r in rows}
    assert len(hashes) == 1 and re.fullmatch(r"[0-9a-f]{32}", hashes.pop())
    assert all("testclient" not in (r["ip_hash"] or "") for r in rows)


def test_rate_limited_access_is_audited(make_client):
    client = make_client({"rate_limits": {"per_ip": "1/1m"}})
    client.get(link_path(ORDER_IN_TRANSIT))
    client.get(link_path(ORDER_IN_TRANSIT))
    assert [r["outcome"] for r in access_rows(client)] == ["ok", "rate_limited:1"]


def test_unhandled_error_is_a_plain_500_page(make_client, monkeypatch):
    client = make_client(raise_server_exceptions=False)

    def broken(conn, order_no):
        raise RuntimeError("connection string postgresql://secret@db")

    monkeypatch.setattr(customer_module.queries, "customer_order", broken)
    r = client.get(link_path(ORDER_IN_TRANSIT))
    assert r.status_code == 500
    assert "secret@db" not in r.text and "Traceback" not in r.text and "RuntimeError" not in r.text
    assert "暂时无法显示" in r.text
    assert access_rows(client)[-1]["outcome"] == "error"


@pytest.fixture
def publish_in_progress():
    """Hold the warehouse's write lock the way a long publish does; returns a starter for a given world."""
    held = []

    def start(world) -> None:
        publisher = sqlite3.connect(world.root / "warehouse.db", isolation_level=None)
        publisher.execute("BEGIN IMMEDIATE")
        publisher.execute("UPDATE order_tracking_snapshot SET stage_label = 'x' WHERE order_no = ?", (ORDER_PAID,))
        held.append(publisher)

    yield start
    for publisher in held:
        publisher.execute("ROLLBACK")
        publisher.close()


def test_customer_page_is_served_while_a_publish_holds_the_write_lock(
    tmp_path, clock, monkeypatch, caplog, publish_in_progress
):
    world = build_world(tmp_path / "w", busy_timeout=0.2)
    for k, v in world.env.items():
        monkeypatch.setenv(k, v)
    client = WebClient(
        create_app(world.config(), engine=world.engine, clock=clock), world, raise_server_exceptions=False
    )
    publish_in_progress(world)
    caplog.set_level(logging.ERROR, logger="order_pipeline.web")
    started = time.monotonic()
    page = client.get(link_path(ORDER_IN_TRANSIT))
    refused = client.get(f"/order/{ORDER_IN_TRANSIT}?t=forged")
    assert time.monotonic() - started < 5  # the read did not queue behind the publish
    assert page.status_code == 200 and "138****5678" in page.text and "配送中" in page.text
    client.web.access_log.flush()
    assert refused.status_code == 403
    # The audit rows could not be written; they are in the error log instead of lost.
    unwritten = [
        r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and "access log row" in r.getMessage()
    ]
    assert len(unwritten) == 2
    assert all(ORDER_IN_TRANSIT in m and "'customer'" in m for m in unwritten)
    assert "'ok'" in unwritten[0] and "'forbidden'" in unwritten[1]
    client.close()
    world.engine.dispose()


def test_customer_page_survives_a_failing_audit_write(client, monkeypatch, caplog):
    def broken(engine, rows, durable=False):
        raise OperationalError("INSERT INTO tracking_access_log", {}, Exception("database is locked"))

    monkeypatch.setattr(queries, "write_accesses", broken)
    with caplog.at_level(logging.ERROR, logger="order_pipeline.web"):
        assert client.get(link_path(ORDER_IN_TRANSIT)).status_code == 200
        assert client.get(link_path("SO9999")).status_code == 404
        client.web.access_log.flush()
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(ORDER_IN_TRANSIT in m and "'ok'" in m for m in messages)
    assert any("SO9999" in m and "'not_found'" in m for m in messages)


def test_access_rows_are_written_in_batches_and_on_close(client):
    """A page view only queues its row; the writer's batch (or shutdown) puts them in the table, none lost."""
    web = client.web
    web.access_log = log = AccessLog(web.engine, interval=3600)  # the writer thread will not wake during the test
    for _ in range(3):
        assert client.get(link_path(ORDER_IN_TRANSIT)).status_code == 200
    assert client.get(f"/order/{ORDER_IN_TRANSIT}?t=forged").status_code == 403
    with client.world.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tracking_access_log)).scalar() == 0
    log.close()
    assert [r["outcome"] for r in access_rows(client)] == ["ok", "ok", "ok", "forbidden"]
    assert log.flush() == 0  # nothing left behind
    assert client.get(link_path(ORDER_PAID)).status_code == 200  # a late request after shutdown began
    with client.world.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tracking_access_log)).scalar() == 5


def test_unknown_path_is_a_404_page(client):
    r = client.get("/wp-login.php")
    assert r.status_code == 404 and "未找到" in r.text


def test_a_signed_link_with_an_expiry_beyond_the_link_ttl_is_refused(client):
    ten_years = link_path(ORDER_IN_TRANSIT, expires=NOW + timedelta(days=3650))
    assert client.get(ten_years).status_code == 403
    assert client.get(link_path(ORDER_IN_TRANSIT, expires=NOW + timedelta(days=7, minutes=4))).status_code == 200
    assert client.get(link_path(ORDER_IN_TRANSIT, expires=NOW + timedelta(days=8))).status_code == 403
    assert [r["outcome"] for r in access_rows(client)] == ["forbidden", "ok", "forbidden"]


def test_a_flood_of_refused_requests_is_counted_in_a_few_audit_rows(make_client, clock):
    client = make_client({"rate_limits": {"per_ip": "5/1m", "per_order": "1000/1m"}})
    statuses = [client.get(link_path(ORDER_IN_TRANSIT)).status_code for _ in range(255)]
    clock.advance(61)  # a new window: the refill lets 5 through, then the count starts again
    statuses += [client.get(link_path(f"SO{i}")).status_code for i in range(255)]  # one address, many orders
    assert statuses.count(429) == 500
    client.web.access_log.close()
    rows = access_rows(client)
    limited = [r for r in rows if r["outcome"].startswith("rate_limited")]
    assert [r["outcome"] for r in limited] == ["rate_limited:250", "rate_limited:250"]
    assert len(rows) == 12  # 10 pages answered, and the two counts


def test_a_flood_of_refused_requests_keeps_few_counts_in_memory(clock):
    log = AccessLog(sa.create_engine("sqlite://"), clock=clock, max_counts=3)
    for i in range(10):
        log.count(queries.Access(NOW, None, "customer", "rate_limited", f"ip{i}", None), until=NOW)
    assert len(log.counts) <= 3


def test_the_carriers_estimate_is_named_as_such(client):
    """An ETA from Kuaidi100's prediction says whose it is; the pipeline's own says nothing more."""
    assert "快递公司预估" not in client.get(link_path(ORDER_IN_TRANSIT)).text
    s = order_tracking_snapshot
    with client.world.engine.begin() as conn:
        conn.execute(s.update().where(s.c.order_no == ORDER_IN_TRANSIT).values(eta_source="carrier"))
    html = client.get(link_path(ORDER_IN_TRANSIT)).text
    assert re.search(r"预计送达：<b>2026-11-26</b> <small[^>]*>\(快递公司预估\)</small>", html)
