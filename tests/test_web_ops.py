"""The ops board: staff login and session, overview, search, the order view, customer links and the
CSV export, each audited."""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from helpers import (
    COURIER_PHONE,
    COURIER_PHONE_INTL,
    FULL_NAME,
    ORDER_EXCEPTION,
    ORDER_IN_TRANSIT,
    ORDER_PAID,
    PHONE_TAIL,
    RAW_PHONE,
    STAFF_PASSWORD,
    STAFF_USER,
    WAYBILL,
    TestClient,
    WebClient,
    access_rows,
    build_world,
    login,
    page_csrf,
)
from sqlalchemy.exc import OperationalError

from order_pipeline.contract.schema import alert_queue, metadata, order_tracking_parcels, order_tracking_snapshot
from order_pipeline.domain.passwords import hash_password
from order_pipeline.web.app import create_app
from order_pipeline.web.ops import queries
from order_pipeline.web.ops.export import csv_cell
from order_pipeline.web.settings import StaffUser


def test_ops_requires_login(client):
    r = client.get("/ops/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/ops/login?next=%2Fops%2F")
    r = client.get(f"/ops/order/{ORDER_IN_TRANSIT}", follow_redirects=False)
    assert r.status_code == 303
    assert client.get("/ops/orders.csv", follow_redirects=False).status_code == 303


def test_login_wrong_password_then_right(client):
    r = login(client, password="wrong")
    assert r.status_code == 401 and "用户名或密码错误" in r.text
    r = login(client)
    assert r.status_code == 303 and r.headers["location"] == "/ops/"
    cookie = r.headers["set-cookie"]
    assert "ops_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    assert "Max-Age=43200" in cookie
    r = client.get("/ops/")
    assert r.status_code == 200 and "各阶段订单" in r.text


def test_login_without_csrf_token_is_refused(client):
    client.get("/ops/login")
    r = client.post("/ops/login", data={"username": STAFF_USER, "password": STAFF_PASSWORD}, follow_redirects=False)
    assert r.status_code == 403
    fresh = TestClient(client.app)  # no login cookie at all
    r = fresh.post(
        "/ops/login", data={"username": STAFF_USER, "password": STAFF_PASSWORD, "csrf": "x"}, follow_redirects=False
    )
    assert r.status_code == 403


def test_refused_logins_are_audited_without_the_password(make_client):
    client = make_client({"rate_limits": {"per_ip": "1000/1m", "per_order": "1000/1m", "login": "3/1m"}})
    login(client, password="wrong-password-1")
    client.post("/ops/login", data={"username": "mallory", "password": "wrong-password-2", "csrf": "forged"})
    client.post("/ops/login", data={"password": "wrong-password-3"})
    client.post("/ops/login", data={"username": " eve ", "password": "wrong-password-4"})
    assert client.post("/ops/login", data={}).status_code == 429
    rows = access_rows(client)
    assert [(r["actor"], r["outcome"], r["order_no"]) for r in rows] == [
        (STAFF_USER, "login_failed", None),
        ("mallory", "csrf_refused", None),
        ("anonymous", "csrf_refused", None),
        ("eve", "rate_limited:2", None),  # one address over the limit: one row, the first name it typed
    ]
    assert all(re.fullmatch(r"[0-9a-f]{32}", r["ip_hash"]) for r in rows)
    assert "wrong-password" not in repr(rows)


def test_forged_session_cookie_is_ignored(client):
    client.cookies.set("ops_session", "eyJ1IjoiYWxpY2UiLCJleHAiOjk5OTk5OTk5OTksIm4iOiJ4In0.forged", path="/ops")
    assert client.get("/ops/", follow_redirects=False).status_code == 303


def test_session_expires(client, clock):
    login(client)
    clock.advance(12 * 3600 + 1)
    assert client.get("/ops/", follow_redirects=False).status_code == 303


def test_logout_needs_csrf(client):
    login(client)
    overview = client.get("/ops/")
    assert client.post("/ops/logout", data={"csrf": "wrong"}, follow_redirects=False).status_code == 403
    assert client.post("/ops/logout", data={}, follow_redirects=False).status_code == 403
    assert client.get("/ops/", follow_redirects=False).status_code == 200  # still logged in
    r = client.post("/ops/logout", data={"csrf": page_csrf(overview.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ops/login"
    assert client.get("/ops/", follow_redirects=False).status_code == 303
    # The session's start and end are in the access log, as is what happened in between.
    assert [(r["actor"], r["outcome"]) for r in access_rows(client)] == [
        (STAFF_USER, "login"),
        (STAFF_USER, "overview"),
        (STAFF_USER, "overview"),
        (STAFF_USER, "logout"),
    ]


def test_overview(client):
    login(client)
    html = client.get("/ops/").text
    assert "各阶段订单（共 3）" in html
    assert 'href="/ops/orders?stage=paid"' in html and 'style="width: 100%"' in html
    assert "paid_not_locked" in html and "tracking_stale" not in html.split("最新告警")[0]  # resolved is not open
    assert "未处理告警（1）" in html
    assert "仓库 (warehouse)" in html and ORDER_PAID in html and "9小时" in html
    assert "orders" in html and "payments" in html and "3小时" in html  # watermark ages


def test_search_by_order_no_waybill_and_phone_tail(client):
    login(client)
    r = client.get("/ops/search", params={"q": ORDER_PAID}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/ops/order/{ORDER_PAID}"
    r = client.get("/ops/search", params={"q": WAYBILL}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/ops/order/{ORDER_IN_TRANSIT}"
    r = client.get("/ops/search", params={"q": PHONE_TAIL})
    assert r.status_code == 200 and "2 个订单" in r.text
    assert ORDER_IN_TRANSIT in r.text and ORDER_PAID in r.text and ORDER_EXCEPTION not in r.text
    assert RAW_PHONE in r.text  # staff see the real number
    r = client.get("/ops/search", params={"q": "138 1234 5678"})
    assert "1 个订单" in r.text and ORDER_IN_TRANSIT in r.text
    r = client.get("/ops/search", params={"q": "nothing-like-this"})
    assert "没有找到订单" in r.text


def test_search_audit_keeps_order_numbers_but_no_phone_numbers(client):
    login(client)
    searches = [ORDER_PAID, PHONE_TAIL, RAW_PHONE, "138 1234 5678", "+86 138-1234-5678", FULL_NAME, WAYBILL, "SO9999"]
    for q in searches:
        assert client.get("/ops/search", params={"q": q}).status_code == 200
    rows = [r for r in access_rows(client) if r["outcome"].startswith("search:")]
    assert [(r["order_no"], r["outcome"]) for r in rows] == [
        (ORDER_PAID, "search:1"),
        (None, "search:2"),
        (None, "search:1"),
        (None, "search:1"),
        (None, "search:1"),
        (None, "search:0"),
        (None, "search:1"),
        (None, "search:0"),
    ]
    stored = repr(access_rows(client))
    for personal in (PHONE_TAIL, RAW_PHONE, "1234", FULL_NAME):
        assert personal not in stored


def test_staff_order_view_is_complete_and_audited(client):
    login(client)
    r = client.get(f"/ops/order/{ORDER_PAID}")
    assert r.status_code == 200
    html = r.text
    assert "李小龙" in html and "13900005678" in html and "北京市朝阳区建国路88号SOHO现代城" in html
    assert "paid_not_locked" in html and "付款超过 2 小时仍未锁定库存" in html and "未处理" in html
    assert "未锁定库存 (stock_lock)" in html
    assert "仓库 (warehouse)" in html
    for label in ("下单完成", "支付确认", "库存锁定", "打包出库", "配送中", "签收完成"):
        assert label in html
    r = client.get(f"/ops/order/{ORDER_IN_TRANSIT}")
    assert COURIER_PHONE in r.text and COURIER_PHONE_INTL in r.text and WAYBILL in r.text and "已解决" in r.text
    assert client.get("/ops/order/SO9999").status_code == 404
    staff_rows = [r for r in access_rows(client) if r["actor"] == STAFF_USER]
    assert [(r["order_no"], r["outcome"]) for r in staff_rows] == [
        (None, "login"),
        (ORDER_PAID, "ok"),
        (ORDER_IN_TRANSIT, "ok"),
        ("SO9999", "not_found"),
    ]


def test_staff_issue_customer_link(client):
    login(client)
    page = client.get(f"/ops/order/{ORDER_PAID}")
    assert client.post(f"/ops/order/{ORDER_PAID}/link", data={}).status_code == 403
    r = client.post(f"/ops/order/{ORDER_PAID}/link", data={"csrf": page_csrf(page.text)})
    assert r.status_code == 200
    link = re.search(r"(http://testserver/order/[^<\s]+)", r.text)
    assert link, "no customer link on the page"
    url = link.group(1)
    assert client.get(url.replace("http://testserver", "").replace("&amp;", "&")).status_code == 200
    assert access_rows(client)[-2]["outcome"] == "link_issued"


def test_order_list_and_csv_export(client):
    login(client)
    r = client.get("/ops/orders", params={"stage": "paid"})
    assert r.status_code == 200 and ORDER_PAID in r.text and ORDER_IN_TRANSIT not in r.text
    assert 'href="/ops/orders.csv?stage=paid"' in r.text
    r = client.get("/ops/orders.csv", params={"stage": "in_transit"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert [row["order_no"] for row in rows] == [ORDER_IN_TRANSIT]
    assert rows[0]["customer_phone"] == RAW_PHONE and rows[0]["ordered_at"] == "2026-11-23T08:00:00+08:00"
    r = client.get("/ops/orders.csv", params={"role": "warehouse"})
    assert [row["order_no"] for row in csv.DictReader(io.StringIO(r.content.decode("utf-8-sig")))] == [ORDER_PAID]
    r = client.get("/ops/orders.csv")
    assert len(list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))) == 3
    assert [r["outcome"] for r in access_rows(client) if r["outcome"].startswith("export")] == [
        "export:stage=in_transit",
        "export:role=warehouse",
        "export:all",
    ]


def test_no_export_without_its_audit_row(make_client, monkeypatch, caplog):
    client = make_client(raise_server_exceptions=False)
    login(client)
    assert client.get("/ops/orders", params={"stage": "paid"}).status_code == 200  # queued, not yet written

    def broken(engine, rows, durable=False):
        raise OperationalError("INSERT INTO tracking_access_log", {}, Exception("database is locked"))

    monkeypatch.setattr(queries, "write_accesses", broken)
    with caplog.at_level(logging.ERROR, logger="order_pipeline.web"):
        r = client.get("/ops/orders.csv")
    assert r.status_code == 500 and ORDER_PAID not in r.text  # no rows left the server
    unwritten = [m.getMessage() for m in caplog.records if "access log row not written" in m.getMessage()]
    assert len(unwritten) == 3  # in order, none lost
    assert "'login'" in unwritten[0] and "'list'" in unwritten[1] and "'export:all'" in unwritten[2]


def test_csv_cells_cannot_become_formulas():
    assert csv_cell('=HYPERLINK("x")', "UTC") == '\'=HYPERLINK("x")'
    assert csv_cell(-5.0, "UTC") == -5.0


# --- sessions end, and guessing one account's password is slowed --------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend_client(request, tmp_path, clock, monkeypatch) -> Iterator[WebClient]:
    """A WebClient whose warehouse is SQLite or PostgreSQL."""
    url = request.getfixturevalue("pg_database")() if request.param == "postgres" else None
    world = build_world(tmp_path / "w", url=url)
    for k, v in world.env.items():
        monkeypatch.setenv(k, v)
    client = WebClient(create_app(world.config(), engine=world.engine, clock=clock), world)
    yield client
    client.close()
    world.engine.dispose()


def session_cookie(client: TestClient) -> str:
    value = client.cookies.get("ops_session")
    assert value, "not logged in"
    return value


def with_cookie(client: WebClient, cookie: str) -> TestClient:
    """Another browser presenting `cookie` (a copy of a session cookie)."""
    other = TestClient(client.app)
    other.cookies.set("ops_session", cookie, path="/ops")
    return other


def test_a_logged_out_session_cookie_no_longer_works(backend_client):
    client = backend_client
    login(client)
    cookie = session_cookie(client)
    r = client.post("/ops/logout", data={"csrf": page_csrf(client.get("/ops/").text)}, follow_redirects=False)
    assert r.status_code == 303
    assert with_cookie(client, cookie).get("/ops/", follow_redirects=False).status_code == 303
    login(client)  # a new login of the same user works
    assert client.get("/ops/", follow_redirects=False).status_code == 200


def test_a_password_change_ends_the_sessions_made_with_the_old_one(client):
    login(client)
    cookie = session_cookie(client)
    assert with_cookie(client, cookie).get("/ops/", follow_redirects=False).status_code == 200
    new_user = StaffUser(STAFF_USER, hash_password("a new password for alice"))
    client.web.settings = dataclasses.replace(client.web.settings, staff=(new_user,))
    assert with_cookie(client, cookie).get("/ops/", follow_redirects=False).status_code == 303


def from_address(client: WebClient, ip: str) -> TestClient:
    return TestClient(client.app, client=(ip, 50000))


def failed_login(client: WebClient, ip: str, password: str = "guess-7f3a"):
    return login(from_address(client, ip), password=password)


def test_one_account_is_locked_after_five_failures_whatever_the_address(make_client, clock):
    client = make_client()
    answers = [failed_login(client, f"203.0.113.{i}") for i in range(13)]
    assert [r.status_code for r in answers] == [401] * 5 + [429] * 8
    assert {r.headers["retry-after"] for r in answers[5:]} == {"60"}
    # The right password does not get in while the account is locked either.
    assert login(from_address(client, "198.51.100.1")).status_code == 429
    clock.advance(60)
    assert failed_login(client, "203.0.113.99").status_code == 401  # the lock is over: one more try ...
    assert failed_login(client, "203.0.113.98").headers["retry-after"] == "120"  # ... and the next lock is longer
    clock.advance(120)
    assert login(from_address(client, "198.51.100.1")).status_code == 303  # the right password, after the lock
    assert failed_login(client, "203.0.113.97").status_code == 401  # a success starts the count afresh


def test_a_locked_account_is_audited_once_per_burst_and_its_team_alerted(make_client, clock):
    client = make_client()
    metadata.create_all(client.world.engine, tables=[alert_queue])
    for i in range(13):
        failed_login(client, f"203.0.113.{i}")
    clock.advance(60)
    for i in range(3):
        failed_login(client, f"203.0.113.{50 + i}")
    failed_login(client, "203.0.113.200", password=STAFF_PASSWORD)  # the lock holds against the right one too
    client.web.access_log.close()
    rows = [(r["actor"], r["outcome"]) for r in access_rows(client) if r["outcome"] != "login_failed"]
    # A lock's count is written when the lock is over, so where it lands among the rows varies.
    assert sorted(rows) == [
        (STAFF_USER, "login_burst"),
        (STAFF_USER, "login_burst"),
        (STAFF_USER, "login_locked:3"),  # two wrong passwords and the right one
        (STAFF_USER, "login_locked:8"),
    ]
    with client.world.engine.connect() as conn:
        queued = conn.execute(sa.select(alert_queue).order_by(alert_queue.c.id)).mappings().all()
    assert [(q["rule_id"], q["entity_key"], q["target"], q["channel"]) for q in queued] == [
        ("staff_login_burst", STAFF_USER, "data", "outbox"),
        ("staff_login_burst", STAFF_USER, "data", "outbox"),
    ]
    assert STAFF_USER in queued[0]["payload"] and "guess-7f3a" not in queued[0]["payload"]


def test_a_burst_against_an_unknown_name_is_audited_without_an_alert(make_client):
    client = make_client()
    metadata.create_all(client.world.engine, tables=[alert_queue])
    for i in range(6):
        page = from_address(client, f"203.0.113.{i}")
        csrf = page_csrf(page.get("/ops/login").text)
        page.post("/ops/login", data={"username": "mallory", "password": "x", "csrf": csrf})
    assert ("mallory", "login_burst") in [(r["actor"], r["outcome"]) for r in access_rows(client)]
    with client.world.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(alert_queue)).scalar() == 0


def test_control_characters_in_a_typed_user_name_are_escaped_in_the_audit(client):
    csrf = page_csrf(client.get("/ops/login").text)
    client.post("/ops/login", data={"username": "eve\r\nalice login ok\x1b[2J", "password": "x", "csrf": csrf})
    (row,) = access_rows(client)
    assert row["actor"] == "eve\\r\\nalice login ok\\x1b[2J"
    assert not any(ch in row["actor"] for ch in "\r\n\x1b")


def test_the_board_shows_the_carriers_predicted_arrival_per_parcel_and_order(client):
    p, s = order_tracking_parcels, order_tracking_snapshot
    predicted = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)  # 18:00 in Shanghai
    with client.world.engine.begin() as conn:
        conn.execute(p.update().where(p.c.waybill_no == WAYBILL).values(carrier_eta=predicted))
        conn.execute(s.update().where(s.c.order_no == ORDER_IN_TRANSIT).values(carrier_eta=predicted))
    login(client)
    html = client.get(f"/ops/order/{ORDER_IN_TRANSIT}").text
    assert "快递公司预估送达" in html and "快递公司预估" in html
    assert html.count("2026-11-26 18:00") == 2  # the parcel's column and the order's field
