"""The web app's settings, its warehouse connection (SQLite beside a writer, PostgreSQL in UTC and
read-only), and the app on nothing but the tables the pipeline publishes."""

from __future__ import annotations

import csv
import io
import logging
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from helpers import (
    NOW,
    ORDER_IN_TRANSIT,
    ORDER_PAID,
    PHONE_TAIL,
    PUBLISHED_TABLES,
    RAW_PHONE,
    WAYBILL,
    TestClient,
    WebWorld,
    build_world,
    link_path,
    login,
    page_csrf,
    source_sections,
    write_config,
)
from sqlalchemy.exc import InternalError

from order_pipeline.contract.config import ConfigError, load_config
from order_pipeline.contract.schema import tracking_access_log
from order_pipeline.demo.company import DEMO_STAFF
from order_pipeline.domain.passwords import hash_password
from order_pipeline.web import db as web_db
from order_pipeline.web.app import create_app
from order_pipeline.web.security.startup import startup_warnings
from order_pipeline.web.server import log_startup_warnings
from order_pipeline.web.settings import WebSettings


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
        WebSettings.from_config(load_config(path))
    assert err.value.entry == entry
    assert words in err.value.problem
    assert err.value.fix


def test_settings_defaults_and_env_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("ORDER_PIPELINE_LINK_SECRET", "from-the-environment-0123456789")
    monkeypatch.delenv("ORDER_PIPELINE_SESSION_SECRET", raising=False)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"sources": source_sections(tmp_path)}), encoding="utf-8")
    s = WebSettings.from_config(load_config(path))
    assert s.base_url == "http://127.0.0.1:8080"
    assert s.link_ttl == timedelta(days=7)
    assert s.link_secret == b"from-the-environment-0123456789" and s.session_secret_derived
    per_ip, per_order = s.rate_limits.per_ip, s.rate_limits.per_order
    assert per_ip is not None and per_order is not None
    assert per_ip.count == 120 and per_order.count == 30
    assert "from-the-environment" not in repr(s)


# --- the warehouse engine ---------------------------------------------------------------------------


def test_engine_for_a_bare_postgresql_url_uses_psycopg2():
    engine = web_db.make_engine("postgresql://tracker@db.example.com/warehouse")
    assert engine.dialect.driver == "psycopg2"
    pool = engine.pool
    assert isinstance(pool, sa.QueuePool)
    assert (pool.size(), pool._max_overflow) == (web_db.POOL_SIZE, web_db.MAX_OVERFLOW)


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
        with pytest.raises(InternalError, match="read-only"), web_db.reading(engine) as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (now())")
        with engine.begin() as conn:  # the pooled connection is writable again afterwards
            conn.exec_driver_sql("INSERT INTO t VALUES (now())")
    finally:
        engine.dispose()


def published_only_world(tmp_path: Path, pg_url: str | None) -> WebWorld:
    """A warehouse holding only what the pipeline publishes: on SQLite, or at `pg_url` on PostgreSQL,
    reached through a bare `postgresql://` URL."""
    if pg_url:
        url = "postgresql://" + pg_url.split("://", 1)[1]
        return build_world(tmp_path, url=url, tables=PUBLISHED_TABLES)
    return build_world(tmp_path, tables=PUBLISHED_TABLES)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_app_works_on_the_published_tables_alone(tmp_path, clock, monkeypatch, backend, request):
    pg_url = request.getfixturevalue("pg_database")() if backend == "postgres" else None
    world = published_only_world(tmp_path, pg_url)
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


def test_sessions_have_their_own_secret_so_a_new_link_secret_keeps_staff_logged_in(tmp_path, clock, monkeypatch):
    monkeypatch.setenv("ORDER_PIPELINE_SESSION_SECRET", "the-session-secret-0123456789abcdef")
    world = build_world(tmp_path)
    for k, v in world.env.items():
        monkeypatch.setenv(k, v)
    settings = WebSettings.from_config(world.config())
    assert settings.session_secret == b"the-session-secret-0123456789abcdef" != settings.link_secret
    with TestClient(create_app(world.config(), engine=world.engine, clock=clock)) as client:
        assert login(client).status_code == 303
        cookie = client.cookies.get("ops_session")
    (world.root / "link.key").write_text("a-rotated-link-secret-9876543210fedcba", encoding="utf-8")
    app = create_app(world.config(), engine=world.engine, clock=clock)
    assert app.state.web.settings.link_secret == b"a-rotated-link-secret-9876543210fedcba"
    with TestClient(app) as client:
        client.cookies.set("ops_session", cookie or "", path="/ops")
        assert client.get("/ops/", follow_redirects=False).status_code == 200
    world.engine.dispose()


def test_without_a_session_secret_sessions_use_a_key_derived_from_the_link_secret(tmp_path, monkeypatch):
    monkeypatch.delenv("ORDER_PIPELINE_SESSION_SECRET", raising=False)
    settings = WebSettings.from_config(load_config(write_config(tmp_path, f"sqlite:///{tmp_path / 'w.db'}")))
    assert settings.session_secret_derived
    assert settings.session_secret not in (b"", settings.link_secret)
    again = WebSettings.from_config(load_config(write_config(tmp_path, f"sqlite:///{tmp_path / 'w.db'}")))
    assert again.session_secret == settings.session_secret  # the same on every start and every worker


def weak_world_settings(tmp_path: Path, base_url: str, link_secret: str) -> WebSettings:
    demo_hash = hash_password(DEMO_STAFF[1])
    path = write_config(
        tmp_path,
        f"sqlite:///{tmp_path / 'w.db'}",
        {"base_url": base_url, "staff": [{"username": "ops", "password_hash": demo_hash}]},
    )
    (tmp_path / "link.key").write_text(link_secret, encoding="utf-8")
    return WebSettings.from_config(load_config(path))


def test_demo_password_and_weak_secrets_are_warned_about_at_start_outside_the_demo(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("ORDER_PIPELINE_SESSION_SECRET", raising=False)
    settings = weak_world_settings(tmp_path, "https://track.example.com", "abcabcabcabcabcabcabc")
    with caplog.at_level(logging.WARNING, logger="order_pipeline.web"):
        log_startup_warnings(settings)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("web.staff" in w and "'ops'" in w and "demo" in w for w in warned), warned
    assert any("web.link_secret" in w and "guess" in w for w in warned), warned
    assert any("web.session_secret" in w for w in warned), warned
    assert not any("abcabc" in w for w in warned)
    strong = weak_world_settings(tmp_path, "https://track.example.com", "q7Vx-2LmZp9RtYw_4KcN8bHjE3sUfGd6")
    assert [w for w in startup_warnings(strong) if "link_secret" in w] == []
    local = weak_world_settings(tmp_path, "http://127.0.0.1:8080", "abcabcabcabcabcabcabc")
    assert startup_warnings(local) == []  # the demo, on this machine only
