"""Shared fixtures: a small demo company, a pinned clock, and the real PostgreSQL server."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

PG_ADMIN_URL = os.environ.get("ORDER_PIPELINE_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
NOW = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai


def _required(flag: str) -> bool:
    return os.environ.get(flag) == "1"


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The admin URL of the real PostgreSQL server; skip (locally) or fail (CI) when it is down."""
    engine = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as e:
        message = f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {str(e.orig).strip().splitlines()[0]}"
        if _required("REQUIRE_POSTGRES"):
            pytest.fail(message)
        pytest.skip(message + " (set REQUIRE_POSTGRES=1 to make this a failure)")
    finally:
        engine.dispose()
    return PG_ADMIN_URL


@pytest.fixture(scope="session")
def pg_database(pg_server):
    """A throw-away database for this test session; returns a factory of fresh databases."""
    admin = sa.create_engine(pg_server, isolation_level="AUTOCOMMIT")
    created = []

    def make() -> str:
        name = f"order_pipeline_test_{uuid.uuid4().hex[:10]}"
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        created.append(name)
        return sa.engine.make_url(pg_server).set(database=name).render_as_string(hide_password=False)

    yield make
    with admin.connect() as conn:
        for name in created:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory) -> Path:
    """A small demo company, built once per session; tests copy it."""
    from order_pipeline.demo.company import build_demo_company

    target = tmp_path_factory.mktemp("demo-template")
    build_demo_company(target, orders=400, days=30, now=NOW, seed=11)
    return target


@pytest.fixture
def demo_company(demo_template, tmp_path, monkeypatch) -> Path:
    """A private copy of the demo company (sources and config) in tmp_path."""
    import shutil

    target = tmp_path / "demo"
    shutil.copytree(demo_template, target)
    config = (target / "order_pipeline.yaml").read_text(encoding="utf-8")
    (target / "order_pipeline.yaml").write_text(config.replace(str(demo_template), str(target)), encoding="utf-8")
    monkeypatch.setenv("ORDER_PIPELINE_DEMO_KUAIDI100_KEY", "demo-key")
    return target
