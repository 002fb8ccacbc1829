"""The pipeline on PostgreSQL: the snapshot SQLite publishes, fresh tables swapped in by a full publish,
and Dagster's own storage in the server."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa
from helpers import NOW, config_on_postgres, published, run_at, snapshot, warehouse_of

from order_pipeline.contract.config import load_config
from order_pipeline.contract.schema import PUBLISHED_ORDER_TABLES
from order_pipeline.pipeline.publish import publish
from order_pipeline.warehouse.engine import Warehouse

pytestmark = pytest.mark.postgres


def test_postgres_warehouse_publishes_the_same_snapshot(materialized_demo, demo_company, pg_database, monkeypatch):
    sqlite_snapshot = snapshot(materialized_demo.engine)

    pg_config = config_on_postgres(demo_company, pg_database(), monkeypatch)
    monkeypatch.setattr("order_pipeline.pipeline.unify.SLICE_ORDERS", 700)  # slices split by PostgreSQL's collation
    run_at(pg_config)
    pg_engine = Warehouse(warehouse_of(pg_config)).engine
    assert pg_engine.dialect.name == "postgresql"
    pd.testing.assert_frame_equal(snapshot(pg_engine), sqlite_snapshot, check_dtype=False)
    pg_engine.dispose()


def test_a_postgres_rebuild_swaps_in_fresh_tables_keeping_grants_and_views(demo_company, pg_database, monkeypatch):
    """A full publish fills new tables and swaps them in; one a view depends on is rebuilt in place."""
    pg_config = config_on_postgres(demo_company, pg_database(), monkeypatch)
    run_at(pg_config)
    engine = Warehouse(warehouse_of(pg_config)).engine
    reader = f"tracking_reader_{uuid.uuid4().hex[:8]}"

    def oids() -> dict[str, int | None]:
        with engine.connect() as conn:
            return {
                t.name: conn.execute(sa.text("SELECT to_regclass(:t)::oid"), {"t": t.name}).scalar()
                for t in PUBLISHED_ORDER_TABLES
            }

    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {reader}")
        conn.exec_driver_sql(f"GRANT SELECT ON order_tracking_snapshot, order_tracking_parcels TO {reader}")
        conn.exec_driver_sql(
            "CREATE VIEW timeline_by_day AS SELECT order_no, CAST(event_at AS date) AS day, count(*) "
            "AS events FROM order_tracking_events GROUP BY 1, 2"
        )
    try:
        published_before, before = published(engine), oids()
        result = publish(engine, NOW, full=True)
        after = oids()
        assert result.full and result.orders == len(published_before["order_tracking_snapshot"])
        assert after["order_tracking_snapshot"] != before["order_tracking_snapshot"]  # swapped
        assert after["order_tracking_parcels"] != before["order_tracking_parcels"]
        assert after["order_tracking_events"] == before["order_tracking_events"]  # the view holds it: in place
        for name, frame in published(engine).items():
            pd.testing.assert_frame_equal(frame, published_before[name], obj=name)
        with engine.connect() as conn:
            assert conn.execute(
                sa.text(
                    "SELECT has_table_privilege(:r, 'order_tracking_snapshot', 'SELECT')"
                    " AND has_table_privilege(:r, 'order_tracking_parcels', 'SELECT')"
                    " AND NOT has_table_privilege(:r, 'order_tracking_events', 'SELECT')"
                ),
                {"r": reader},
            ).scalar()
            assert conn.execute(sa.text("SELECT sum(events) FROM timeline_by_day")).scalar() == len(
                published_before["order_tracking_events"]
            )
            indexes = set(
                conn.execute(
                    sa.text(
                        "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
                        "AND tablename IN ('order_tracking_snapshot', 'order_tracking_parcels')"
                    )
                ).scalars()
            )
        assert indexes == {
            "order_tracking_snapshot_pkey",
            "ix_snapshot_phone_tail",
            "ix_snapshot_stage_waiting",
            "order_tracking_parcels_pkey",
            "ix_order_tracking_parcels_order_no",
        }
        # and the swapped tables take an incremental run as before
        assert publish(engine, NOW + timedelta(minutes=1)).orders == 0
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP OWNED BY {reader}")
            conn.exec_driver_sql(f"DROP ROLE {reader}")
        engine.dispose()


def test_dagster_instance_storage_on_postgres(materialized_company, pg_database, tmp_path, monkeypatch):
    """The shipped deploy/dagster.yaml puts runs and events into the real PostgreSQL server."""
    config = load_config(materialized_company / "order_pipeline.yaml")  # the run's work is not the point here
    home = tmp_path / "dagster_home"
    home.mkdir()
    shipped = Path(__file__).resolve().parent.parent / "deploy" / "dagster.yaml"
    (home / "dagster.yaml").write_text(shipped.read_text(encoding="utf-8"), encoding="utf-8")
    url = pg_database()  # postgresql+psycopg2://…: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3
    monkeypatch.setenv("DAGSTER_PG_URL", url)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        outcome = run_at(config, instance=instance)
        run = instance.get_run_by_id(outcome.run_id)
        assert run is not None and run.is_success
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT count(*) FROM runs WHERE run_id = :r"), {"r": outcome.run_id}).scalar()
        events = conn.execute(
            sa.text("SELECT count(*) FROM event_logs WHERE run_id = :r"), {"r": outcome.run_id}
        ).scalar_one()
    engine.dispose()
    assert stored == 1 and events > 10
