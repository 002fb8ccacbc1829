"""The web app: customer tracking page, ops board, Kuaidi100 push receiver, settings."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
import sqlite3
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa
import yaml
from helpers import (
    COURIER_PHONE,
    COURIER_PHONE_INTL,
    FULL_ADDRESS,
    FULL_NAME,
    NOW,
    ORDER_EXCEPTION,
    ORDER_IN_TRANSIT,
    ORDER_PAID,
    PHONE_TAIL,
    PUBLISHED_TABLES,
    PUSH_SALT,
    PUSH_SALT_ENV,
    RAW_PHONE,
    SECRET,
    SIGNER_NAME,
    STAFF_PASSWORD,
    STAFF_USER,
    STREET,
    WAYBILL,
    TestClient,
    WebClient,
    access_rows,
    build_world,
    link_path,
    login,
    page_csrf,
    push_form,
    source_sections,
    write_config,
)

from order_pipeline.contract.canonical import SOURCE_ENTITIES
from order_pipeline.contract.config import ConfigError, load_config
from order_pipeline.contract.schema import raw_tracking, raw_tracking_events, tracking_access_log
from order_pipeline.domain.links import TokenCheck, customer_link, make_token, verify_token
from order_pipeline.domain.masking import (
    mask_address,
    mask_carrier_text,
    mask_name,
    mask_names_in_text,
    mask_phone,
    mask_phones_in_text,
)
from order_pipeline.domain.passwords import hash_password, verify_password
from order_pipeline.web import db as web_db
from order_pipeline.web.app import create_app
from order_pipeline.web.customer import page as customer_module
from order_pipeline.web.ops import queries
from order_pipeline.web.ops.export import csv_cell
from order_pipeline.web.security.audit import AccessLog
from order_pipeline.web.security.ratelimit import Rate, RateLimiter, client_key, take
from order_pipeline.web.settings import WebSettings, parse_rate

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


# --- pure parts -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, masked",
    [
        ("13812345678", "138****5678"),
        ("+86 138 1234 5678", "138****5678"),
        ("138-1234-5678", "138****5678"),
        ("010-87654321", "****4321"),
        ("", ""),
        (None, ""),
    ],
)
def test_mask_phone(raw, masked):
    assert mask_phone(raw) == masked


@pytest.mark.parametrize(
    "raw, masked", [("张三丰", "张*"), ("李四", "李*"), ("欧阳娜娜", "欧*"), ("  ", ""), (None, "")]
)
def test_mask_name(raw, masked):
    assert mask_name(raw) == masked


@pytest.mark.parametrize(
    "raw, masked",
    [
        (FULL_ADDRESS, "广东省深圳市南山区"),
        ("北京市朝阳区建国路88号SOHO现代城", "北京市朝阳区"),
        ("上海浦东新区张江路1号", "上海浦东新区"),
        ("江苏省苏州市昆山市玉山镇前进路2号", "江苏省苏州市昆山市"),
        ("浙江省杭州市淳安县千岛湖镇新安大街3号", "浙江省杭州市淳安县"),
        ("广西壮族自治区南宁市青秀区民族大道100号", "广西壮族自治区南宁市青秀区"),
        ("新疆维吾尔自治区伊犁哈萨克自治州伊宁市解放路1号", "新疆维吾尔自治区伊犁哈萨克自治州伊宁市"),
        ("深圳市南山区科技园", "深圳市南山区"),
        ("123 Main Street, Springfield", ""),
        (None, ""),
    ],
)
def test_mask_address_keeps_province_city_district_only(raw, masked):
    assert mask_address(raw) == masked


def test_mask_phones_in_carrier_text():
    text = "快递员李师傅正在派件，电话13987654321，备用 139-8765-4321；运单 SF139876543210 网点 0755-12345678"
    assert mask_phones_in_text(text) == (
        "快递员李师傅正在派件，电话139****4321，备用 139****4321；运单 SF139876543210 网点 0755-12345678"
    )


@pytest.mark.parametrize(
    "raw, masked",
    [
        ("电话+8613987654321", "电话139****4321"),
        ("电话 +86 139 8765 4321。", "电话 139****4321。"),
        ("联系 86 139 8765 4321", "联系 139****4321"),
        ("联系8613987654321", "联系139****4321"),
        ("0086-139-8765-4321", "139****4321"),
        ("备用 139-8765-4321", "备用 139****4321"),
        ("(+86)13987654321", "(+86)139****4321"),
    ],
)
def test_mask_phones_with_country_code(raw, masked):
    assert mask_phones_in_text(raw) == masked


@pytest.mark.parametrize(
    "text",
    [
        "运单 SF139876543210 已揽收",
        "运单 SF8613987654321",
        "运单 75139876543210",
        "单号 13987654321012",
        "2026-11-25 13:59:59 到达",
        "20261125 139 件",
        "邮编 518000，重 1.39 kg",
        "网点 0755-12345678",
        "+86 755 8765 4321",
    ],
)
def test_ordinary_numbers_stay_as_they_are(text):
    assert mask_phones_in_text(text) == text
    assert mask_carrier_text(text) == text


@pytest.mark.parametrize(
    "raw, masked",
    [
        ("已签收，签收人：张三丰", "已签收，签收人：张*"),
        ("收件人 李四 已签收", "收件人 李* 已签收"),
        ("收件人李四已签收", "收件人李*已签收"),
        ("签收人是王五，感谢使用", "签收人是王*，感谢使用"),
        ("签收人:欧阳娜娜 电话:13912345678", "签收人:欧* 电话:139****5678"),
        ("您的快件已由代收人赵六代收", "您的快件已由代收人赵*代收"),
        ("签收人: Zhang San, thanks", "签收人: Z*, thanks"),
        ("签收人：于谦。", "签收人：于*。"),
    ],
)
def test_mask_signer_names_in_carrier_text(raw, masked):
    assert mask_carrier_text(raw) == masked


@pytest.mark.parametrize(
    "text",
    [
        "本人签收",
        "快件已由收件人本人签收",
        "拒签: 收件人拒收",
        "收件人不在，已放驿站",
        "收件人要求改派",
        "收件人电话无人接听",
        "签收人：前台",
        "已签收，签收人: 菜鸟驿站",
        "代收人：门卫",
        "收件人于2026-11-25签收",
        "收件人地址不详",
    ],
)
def test_signer_texts_without_a_person_name_stay(text):
    assert mask_names_in_text(text) == text


def test_tokens_sign_order_and_expiry():
    token = make_token("SO1", NOW + timedelta(days=7), SECRET)
    assert verify_token("SO1", token, SECRET, NOW) is TokenCheck.VALID
    assert verify_token("SO2", token, SECRET, NOW) is TokenCheck.INVALID
    assert verify_token("SO1", token, b"another-secret-0123456789", NOW) is TokenCheck.INVALID
    expires, sig = token.split(".")
    assert verify_token("SO1", f"{int(expires) + 86400}.{sig}", SECRET, NOW) is TokenCheck.INVALID
    assert verify_token("SO1", token, SECRET, NOW + timedelta(days=7)) is TokenCheck.EXPIRED
    for bad in (None, "", "abc", "123", "x.y", "1." + "A" * 200):
        assert verify_token("SO1", bad, SECRET, NOW) is TokenCheck.INVALID


def test_customer_link_uses_base_url_and_ttl(tmp_path, monkeypatch):
    path = write_config(
        tmp_path, f"sqlite:///{tmp_path / 'w.db'}", {"base_url": "https://track.example.com/", "link_ttl": "2d"}
    )
    settings = WebSettings.from_config(load_config(path, check_sources=False))
    url = customer_link(settings, "SO 1/2", NOW)
    assert url.startswith("https://track.example.com/order/SO%201%2F2?t=")
    assert url.split("t=")[1].split(".")[0] == str(int((NOW + timedelta(days=2)).timestamp()))


def test_password_hashes():
    stored = hash_password("s3cret")
    assert re.fullmatch(r"scrypt\$16384\$8\$1\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+", stored)
    assert verify_password("s3cret", stored)
    assert not verify_password("S3cret", stored)
    assert not verify_password("s3cret", "scrypt$1$2$3$bad$hash")
    assert hash_password("s3cret") != stored  # salted


def test_token_bucket_allows_burst_then_refills():
    rate = Rate(3, timedelta(minutes=1))
    bucket, waits = None, []
    for _ in range(4):
        bucket, wait = take(bucket, 1000.0, rate)
        waits.append(wait)
    assert waits == [0, 0, 0, 20]
    assert take(bucket, 1020.0, rate)[1] == 0
    limiter = RateLimiter(None)
    assert all(limiter.hit("k", 0.0) == 0 for _ in range(1000))


@pytest.mark.parametrize(
    "ip, key",
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("testclient", "testclient"),
    ],
)
def test_rate_limit_key_groups_ipv6_by_network(ip, key):
    assert client_key(ip) == key


@pytest.mark.parametrize(
    "text, count, seconds", [("60/1m", 60, 60), ("20/m", 20, 60), ("1000/1h", 1000, 3600), ("5/30s", 5, 30)]
)
def test_parse_rate(text, count, seconds):
    rate = parse_rate(text)
    assert (rate.count, rate.period.total_seconds()) == (count, seconds)
    assert parse_rate("off") is None


# --- settings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "web, entry, words",
    [
        ({"colour": "blue"}, "web.colour", "unknown setting"),
        ({"link_ttl": "seven days"}, "web.link_ttl", "not a duration"),
        ({"rate_limits": {"per_ip": "lots"}}, "web.rate_limits.per_ip", "not a rate"),
        ({"rate_limits": {"per_minute": "5/1m"}}, "web.rate_limits.per_minute", "unknown setting"),
        ({"link_secret_file": None, "link_secret_env": "WEB_TEST_UNSET_SECRET"}, "web.link_secret_env", "is not set"),
        ({"link_secret_file": "missing.key"}, "web.link_secret_file", "does not exist"),
        ({"link_secret": "inline-secret-value-123"}, "web.link_secret", "must not be written"),
        (
            {"staff": [{"username": "bob", "password_hash": "md5$abc"}]},
            "web.staff[0].password_hash",
            "not a valid scrypt hash",
        ),
        ({"staff": [{"username": "bob", "password": "pw"}]}, "web.staff[0].password", "plain passwords"),
        ({"base_url": "track.example.com"}, "web.base_url", "not an http(s) URL"),
    ],
)
def test_bad_web_settings_fail_with_entry_and_fix(tmp_path, monkeypatch, web, entry, words):
    monkeypatch.delenv("WEB_TEST_UNSET_SECRET", raising=False)
    path = write_config(tmp_path, f"sqlite:///{tmp_path / 'w.db'}", web)
    with pytest.raises(ConfigError) as err:
        WebSettings.from_config(load_config(path, check_sources=False))
    assert err.value.entry == entry
    assert words in err.value.problem
    assert err.value.fix


def test_settings_defaults_and_env_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("ORDER_PIPELINE_LINK_SECRET", "from-the-environment-0123456789")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"sources": source_sections(tmp_path)}), encoding="utf-8")
    s = WebSettings.from_config(load_config(path, check_sources=False))
    assert s.base_url == "http://127.0.0.1:8080"
    assert s.link_ttl == timedelta(days=7)
    assert s.link_secret == s.session_secret == b"from-the-environment-0123456789"
    assert s.rate_limits.per_ip.count == 120 and s.rate_limits.per_order.count == 30
    assert "from-the-environment" not in repr(s)


# --- the warehouse engine ---------------------------------------------------------------------------


def test_engine_for_a_bare_postgresql_url_uses_psycopg2():
    engine = web_db.make_engine("postgresql://tracker@db.example.com/warehouse")
    assert engine.dialect.driver == "psycopg2"
    assert (engine.pool.size(), engine.pool._max_overflow) == (web_db.POOL_SIZE, web_db.MAX_OVERFLOW)


def test_sqlite_engine_reads_beside_a_writer(tmp_path):
    engine = web_db.make_engine(f"sqlite:///{tmp_path / 'w.db'}", busy_timeout=1.5)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1500
    engine.dispose()


@pytest.mark.postgres
def test_postgres_sessions_run_in_utc_and_reads_are_read_only(pg_database):
    url = pg_database()
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:  # a server whose sessions (of this role) default to another zone
        conn.exec_driver_sql("ALTER ROLE CURRENT_USER SET timezone TO 'Asia/Shanghai'")
        conn.exec_driver_sql("CREATE TABLE t (at timestamptz)")
    with admin.connect() as conn:  # a new session
        assert conn.exec_driver_sql("SHOW timezone").scalar() == "Asia/Shanghai"
    admin.dispose()
    engine = web_db.make_engine("postgresql://" + url.split("://", 1)[1])
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW timezone").scalar() == "UTC"
            # A naive timestamp, as COPY writes it, is UTC.
            assert conn.exec_driver_sql("SELECT TIMESTAMP '2026-11-25 02:00:00'::timestamptz").scalar() == NOW
        with pytest.raises(sa.exc.InternalError, match="read-only"), web_db.reading(engine) as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (now())")
        with engine.begin() as conn:  # the pooled connection is writable again afterwards
            conn.exec_driver_sql("INSERT INTO t VALUES (now())")
    finally:
        engine.dispose()


# --- customer page ----------------------------------------------------------------------------------


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
    assert [r["outcome"] for r in access_rows(client)] == ["ok", "rate_limited"]


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
        raise sa.exc.OperationalError("INSERT INTO tracking_access_log", {}, Exception("database is locked"))

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


# --- ops board --------------------------------------------------------------------------------------


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
        ("eve", "rate_limited", None),
        ("anonymous", "rate_limited", None),
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
    assert "仓库 (warehouse)" in html and ORDER_PAID in html and "9 小时 0 分" in html
    assert "orders" in html and "payments" in html and "3 小时 0 分" in html  # watermark ages


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
    url = re.search(r"(http://testserver/order/[^<\s]+)", r.text).group(1)
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
        raise sa.exc.OperationalError("INSERT INTO tracking_access_log", {}, Exception("database is locked"))

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


# --- Kuaidi100 push ---------------------------------------------------------------------------------


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


def test_id_numbers_are_not_published():
    """The ERP delivers the customer's ID number; no table the web app reads has a place for it."""
    id_columns = {c for entity in SOURCE_ENTITIES.values() for c in entity.column_names if "id_no" in c}
    assert id_columns == {"customer_id_no"}
    for table in PUBLISHED_TABLES:
        assert not [c for c in table.c.keys() if "id_no" in c or "id_card" in c], table.name


def published_only_world(tmp_path, backend, pg_database):
    """A warehouse holding only what the pipeline publishes, reached through a bare `postgresql://` URL on PostgreSQL."""
    if backend == "postgres":
        url = "postgresql://" + pg_database().split("://", 1)[1]
        return build_world(tmp_path, url=url, tables=PUBLISHED_TABLES)
    return build_world(tmp_path, tables=PUBLISHED_TABLES)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_app_works_on_the_published_tables_alone(tmp_path, clock, monkeypatch, backend, request):
    pg_database = request.getfixturevalue("pg_database") if backend == "postgres" else None
    world = published_only_world(tmp_path, backend, pg_database)
    assert set(sa.inspect(world.engine).get_table_names()) == {t.name for t in PUBLISHED_TABLES}
    world.engine.dispose()
    for k, v in world.env.items():
        monkeypatch.setenv(k, v)
    app = create_app(world.config(), clock=clock)  # the app's own engine, from the configured URL
    try:
        with TestClient(app) as client:
            r = client.get(link_path(ORDER_IN_TRANSIT))
            assert r.status_code == 200 and "138****5678" in r.text and "2026-11-23 08:00" in r.text
            assert client.get(link_path("SO9999")).status_code == 404
            assert login(client).status_code == 303
            assert "各阶段订单（共 3）" in client.get("/ops/").text
            assert "2 个订单" in client.get("/ops/search", params={"q": PHONE_TAIL}).text
            r = client.get("/ops/search", params={"q": WAYBILL}, follow_redirects=False)
            assert r.headers["location"] == f"/ops/order/{ORDER_IN_TRANSIT}"
            page = client.get(f"/ops/order/{ORDER_IN_TRANSIT}")
            assert page.status_code == 200 and RAW_PHONE in page.text
            assert (
                client.post(f"/ops/order/{ORDER_IN_TRANSIT}/link", data={"csrf": page_csrf(page.text)}).status_code
                == 200
            )
            assert ORDER_PAID in client.get("/ops/orders", params={"stage": "paid"}).text
            export = client.get("/ops/orders.csv")
            assert len(list(csv.DictReader(io.StringIO(export.content.decode("utf-8-sig"))))) == 3
        with app.state.web.engine.connect() as conn:
            outcomes = conn.execute(
                sa.select(tracking_access_log.c.outcome).order_by(tracking_access_log.c.id)
            ).scalars()
            assert list(outcomes) == [
                "ok",
                "not_found",
                "login",
                "overview",
                "search:2",
                "search:1",
                "ok",
                "link_issued",
                "list",
                "export:all",
            ]
    finally:
        app.state.web.engine.dispose()
