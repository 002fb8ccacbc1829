"""Shared fixtures: the real PostgreSQL server, a small demo company (as sources and materialized once),
an empty warehouse on each backend, and the web app over its test world."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from helpers import (
    ALL_PUBLIC_FIELDS,
    NOW,
    FakeClock,
    WebClient,
    build_world,
    company_digest,
    copy_company,
    run_at,
    warehouse_of,
)
from sqlalchemy.exc import OperationalError

from order_pipeline.contract.config import Config, load_config
from order_pipeline.demo.company import DEMO_ENV, build_demo_company
from order_pipeline.warehouse.engine import Warehouse, create_engine
from order_pipeline.web.app import create_app

PG_ADMIN_URL = os.environ.get("ORDER_PIPELINE_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


def _required(flag: str) -> bool:
    return os.environ.get(flag) == "1"


# --- PostgreSQL ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The admin URL of the real PostgreSQL server; skip (locally) or fail (CI) when it is down."""
    engine = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            pass
    except OperationalError as e:
        message = f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {str(e.orig).strip().splitlines()[0]}"
        if _required("REQUIRE_POSTGRES"):
            pytest.fail(message)
        pytest.skip(message + " (set REQUIRE_POSTGRES=1 to make this a failure)")
    finally:
        engine.dispose()
    return PG_ADMIN_URL


class PgSession:
    """One throw-away database for the test session, holding a schema for each warehouse a test asks for.

    The code under test sets its own libpq `options` (`-c timezone=UTC`), which would override a
    search_path passed the same way in the URL. So each schema belongs to a login role of the same
    name whose search_path is that schema alone: every connection made with the role's URL, in
    this process or another, by the pipeline, the web app or Dagster, sees that schema and nothing
    else. Tables, the temporary tables of a session and the tables a rebuild swaps in by rename
    all stay in it.
    """

    def __init__(self, admin_url: str):
        self.admin_url = sa.engine.make_url(admin_url)
        self.name = f"order_pipeline_test_{uuid.uuid4().hex[:10]}"
        self.roles: list[str] = []
        self._admin = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{self.name}"')
            superuser = conn.exec_driver_sql("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").scalar()
        # The roles may do what the admin may: create roles, grant, vacuum.
        self._powers = "SUPERUSER" if superuser else "CREATEROLE"
        self._inside = sa.create_engine(self.admin_url.set(database=self.name), isolation_level="AUTOCOMMIT")

    def new_schema(self) -> str:
        """A fresh, empty schema; returns the URL that works in it."""
        role = f"op_test_{uuid.uuid4().hex[:12]}"
        password = self.admin_url.password
        with self._inside.connect() as conn:
            conn.exec_driver_sql(
                f'CREATE ROLE "{role}" LOGIN {self._powers}' + (" PASSWORD %(pw)s" if password else ""),
                {"pw": str(password)} if password else None,
            )
            self.roles.append(role)
            conn.exec_driver_sql(f'CREATE SCHEMA "{role}" AUTHORIZATION "{role}"')
            conn.exec_driver_sql(f'ALTER ROLE "{role}" SET search_path = "{role}"')
        url = self.admin_url.set(username=role, database=self.name).render_as_string(hide_password=False)
        _check_schema(url, role)
        return url

    def drop(self) -> None:
        self._inside.dispose()
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            if self.roles:
                conn.exec_driver_sql("DROP ROLE IF EXISTS " + ", ".join(f'"{r}"' for r in self.roles))
        self._admin.dispose()


def _check_schema(url: str, schema: str) -> None:
    """The warehouse's own engine, with its own connect arguments, works in `schema` only."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT current_schemas(false)").scalar() == [schema]
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def pg_session(pg_server) -> Iterator[PgSession]:
    session = PgSession(pg_server)
    yield session
    session.drop()


@pytest.fixture
def pg_database(request, pg_session) -> Callable[[], str]:
    """A factory of fresh, empty PostgreSQL warehouses (a schema each in the session's database): returns URLs."""
    if request.node.get_closest_marker("postgres") is None:
        pytest.fail(f"{request.node.nodeid} talks to PostgreSQL: mark it @pytest.mark.postgres")
    return pg_session.new_schema


# --- the demo company -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory) -> Path:
    """A small demo company, built once per session; tests copy it."""
    target = tmp_path_factory.mktemp("demo-template")
    build_demo_company(target, orders=400, days=30, now=NOW, seed=11)
    return target


@pytest.fixture
def demo_company(demo_template, tmp_path, monkeypatch) -> Path:
    """A private copy of the demo company (sources and config) in tmp_path."""
    target = copy_company(demo_template, tmp_path / "demo")
    for name, value in DEMO_ENV.items():
        monkeypatch.setenv(name, value)
    return target


@dataclass(frozen=True)
class Materialized:
    """The demo company after one pipeline run at NOW (its warehouse is SQLite), and the run's Dagster instance."""

    root: Path
    config: Config
    instance: dg.DagsterInstance
    engine: sa.Engine


@pytest.fixture(scope="session")
def materialized_demo(demo_template, tmp_path_factory) -> Iterator[Materialized]:
    """The demo company materialized once for the session, to read from only: the session ends with an
    error if a test wrote to it. A test that changes it asks for `materialized_company` instead."""
    root = copy_company(demo_template, tmp_path_factory.mktemp("materialized") / "demo")
    config = load_config(root / "order_pipeline.yaml")
    home = tmp_path_factory.mktemp("materialized-dagster-home")
    with dg.instance_for_test(temp_dir=str(home), set_dagster_home=False) as instance:
        with pytest.MonkeyPatch.context() as mp:
            for name, value in DEMO_ENV.items():
                mp.setenv(name, value)
            mp.setenv("DAGSTER_HOME", str(home))
            run_at(config, instance=instance)
        warehouse = Warehouse(warehouse_of(config))
        before = company_digest(root)
        yield Materialized(root, config, instance, warehouse.engine)
        warehouse.engine.dispose()
    assert company_digest(root) == before, "a test wrote to the shared materialized demo company"


@pytest.fixture
def materialized_company(materialized_demo, tmp_path, monkeypatch) -> Path:
    """A private copy of the materialized demo company (sources, config and warehouse) in tmp_path."""
    target = copy_company(materialized_demo.root, tmp_path / "demo")
    for name, value in DEMO_ENV.items():
        monkeypatch.setenv(name, value)
    return target


# --- an empty warehouse on each backend ----------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def warehouse_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'warehouse.db'}"
    return request.getfixturevalue("pg_database")()


@pytest.fixture
def engine(warehouse_url) -> Iterator[sa.Engine]:
    """The engine of an empty warehouse with the pipeline's schema, on SQLite and on PostgreSQL.

    Modules that mean another engine by `engine` define their own.
    """
    wh = Warehouse(warehouse_url)
    wh.create_schema()
    yield wh.engine
    wh.engine.dispose()


# --- the web app -------------------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_client(tmp_path, clock, monkeypatch) -> Iterator[Callable[..., WebClient]]:
    """A WebClient over a fresh test world; `web` overrides entries of the config's web section."""
    made: list[WebClient] = []

    def make(
        web: dict | None = None,
        public_fields: list[str] | None = ALL_PUBLIC_FIELDS,
        customer_messages: bool = True,
        **client_kw,
    ) -> WebClient:
        world = build_world(
            tmp_path / f"w{len(made)}", web, public_fields=public_fields, customer_messages=customer_messages
        )
        for k, v in world.env.items():
            monkeypatch.setenv(k, v)
        client = WebClient(create_app(world.config(), engine=world.engine, clock=clock), world, **client_kw)
        made.append(client)
        return client

    yield make
    for c in made:
        c.close()
        c.world.engine.dispose()


@pytest.fixture
def client(make_client) -> WebClient:
    return make_client()
