"""The assets describe themselves in the Dagster UI: tables' names, columns, row counts, kinds, owners."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from helpers import config_on_postgres, materialization_metadata

from order_pipeline.contract.config import load_config
from order_pipeline.contract.schema import (
    PUBLISHED_ORDER_TABLES,
    RAW_TABLES,
    order_tracking_events,
    order_tracking_parcels,
    order_tracking_snapshot,
)
from order_pipeline.definitions import build_definitions


def graph_of(config):
    return build_definitions(config).resolve_asset_graph()


def test_each_published_table_carries_its_name_and_described_columns(demo_company):
    graph = graph_of(load_config(demo_company / "order_pipeline.yaml"))
    for table in PUBLISHED_ORDER_TABLES:
        node = graph.get(sa_key(table))
        assert node.metadata["dagster/table_name"] == table.name
        columns = {c.name: c for c in node.metadata["dagster/column_schema"].schema.columns}
        assert list(columns) == [c.name for c in table.columns]
        assert all(c.description for c in columns.values()), [n for n, c in columns.items() if not c.description]
    snapshot = {
        c.name: c for c in graph.get(sa_key(order_tracking_snapshot)).metadata["dagster/column_schema"].schema.columns
    }
    assert snapshot["order_no"].type == "text" and snapshot["order_no"].constraints.unique
    assert snapshot["ordered_at"].type == "timestamp" and snapshot["parcel_count"].constraints.nullable is False


@pytest.mark.postgres
def test_kinds_name_the_warehouse_and_raw_assets_the_system_they_read(demo_company, pg_database, monkeypatch):
    sqlite = graph_of(load_config(demo_company / "order_pipeline.yaml"))
    assert sqlite.get(sa_key(order_tracking_snapshot)).kinds == {"sqlite"}
    assert "sql" not in set().union(*(sqlite.get(k).kinds for k in sqlite.get_all_asset_keys()))
    assert sqlite.get(dg_key("raw_payments")).tags["system"] == "finance"
    assert sqlite.get(dg_key("raw_tracking")).tags["system"] == "carrier"
    assert all(sqlite.get(k).owners == ["team:data"] for k in sqlite.get_all_asset_keys())
    assert "dagster/code_references" in sqlite.get(dg_key("raw_orders")).metadata
    raw = {c.name for c in sqlite.get(dg_key("raw_orders")).metadata["dagster/column_schema"].schema.columns}
    assert raw == {c.name for c in RAW_TABLES["orders"].columns}

    on_postgres = graph_of(config_on_postgres(demo_company, pg_database(), monkeypatch))
    assert on_postgres.get(sa_key(order_tracking_snapshot)).kinds == {"postgresql"}
    assert on_postgres.get(dg_key("unified_orders")).kinds == {"pandas", "postgresql"}


def test_every_published_table_reports_its_row_count(materialized_demo):
    with materialized_demo.engine.connect() as conn:
        for table in (order_tracking_snapshot, order_tracking_parcels, order_tracking_events):
            count = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            assert count > 0
            assert materialization_metadata(materialized_demo.instance, table.name)["dagster/row_count"] == count


def sa_key(table: sa.Table):
    return dg_key(table.name)


def dg_key(name: str):
    import dagster as dg

    return dg.AssetKey(name)
