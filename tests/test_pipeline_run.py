"""The pipeline in process on the demo company: every asset and check, quarantined rows, a run with
nothing new, and an order whose lines changed."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from helpers import NOW, local, materialization_metadata, max_batch, recomputed, run_at, warehouse_of

from order_pipeline.contract.config import load_config
from order_pipeline.contract.schema import RAW_TABLES, order_tracking_events, order_tracking_snapshot, pipeline_rejects
from order_pipeline.warehouse.engine import Warehouse


def test_all_assets_materialize_and_checks_pass(materialized_demo):
    instance, engine = materialized_demo.instance, materialized_demo.engine
    for key in ("raw_orders", "raw_tracking", "unified_orders", "order_tracking_snapshot", "order_tracking_events"):
        assert instance.get_latest_materialization_event(dg.AssetKey(key)) is not None, key
    checks = {
        key.name: record
        for key, record in instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [
                dg.AssetCheckKey(dg.AssetKey("order_tracking_snapshot"), name)
                for name in ("snapshot_order_no_unique", "snapshot_covers_open_orders", "rejects_below_threshold")
            ]
        ).items()
    }
    assert {name: c.status.value for name, c in checks.items()} == {
        "snapshot_order_no_unique": "SUCCEEDED",
        "snapshot_covers_open_orders": "SUCCEEDED",
        "rejects_below_threshold": "SUCCEEDED",
    }
    meta = materialization_metadata(instance, "unified_orders")
    assert meta["orders_total"] == meta["orders_recomputed"] > 300
    with engine.connect() as conn:
        orders = conn.execute(sa.select(sa.func.count()).select_from(RAW_TABLES["orders"])).scalar()
        stages = dict(
            conn.execute(
                sa.select(order_tracking_snapshot.c.stage, sa.func.count()).group_by(order_tracking_snapshot.c.stage)
            ).all()
        )
        events = conn.execute(
            sa.select(sa.func.count())
            .select_from(order_tracking_events)
            .where(order_tracking_events.c.kind == "carrier")
        ).scalar()
        unsigned_in_delivered = conn.execute(
            sa.text(
                "SELECT count(*) FROM order_tracking_parcels p "
                "JOIN order_tracking_snapshot s ON s.order_no = p.order_no "
                "WHERE s.stage = 'delivered' AND NOT p.is_signed"
            )
        ).scalar()
        untracked_parcels = conn.execute(
            sa.text("SELECT count(*) FROM order_tracking_parcels WHERE carrier_state IS NULL AND NOT is_signed")
        ).scalar()
    assert sum(stages.values()) == orders
    assert unsigned_in_delivered == 0  # the parcels table agrees with the stage
    assert untracked_parcels > 0
    assert set(stages) >= {"ordered", "paid", "locked", "shipped", "in_transit", "delivered", "cancelled", "exception"}
    assert events > 0


def test_bad_rows_are_quarantined_with_reasons_and_the_rest_is_published(materialized_demo):
    with materialized_demo.engine.connect() as conn:
        rejects = pd.read_sql(sa.select(pipeline_rejects), conn)
        published = set(conn.execute(sa.select(order_tracking_snapshot.c.order_no)).scalars())
    reasons = set(zip(rejects["source"], rejects["reason"], strict=True))
    assert ("orders", "missing order_no") in reasons
    assert ("orders", "unparseable ordered_at") in reasons
    assert ("payments", "negative amount") in reasons
    assert ("payments", "unknown status") in reasons
    assert ("order_lines", "negative qty") in reasons
    assert ("shipments", "shipment for unknown order") in reasons
    assert any(s == "payments" and r.startswith("duplicate payment_id") for s, r in reasons)
    # The raw row is kept as the source sent it, under the source's own column names.
    negative = rejects[rejects["reason"] == "negative amount"].iloc[0]
    assert "金额" in negative["raw_row"]
    orphan = json.loads(rejects.loc[rejects["reason"] == "shipment for unknown order", "raw_row"].iloc[0])
    assert {"ref_order", "tracking_no", "express_company"} <= set(orphan) and "order_no" not in orphan
    assert len(published) > 300


def test_a_run_with_no_source_change_recomputes_nothing(materialized_company, monkeypatch):
    config = load_config(materialized_company / "order_pipeline.yaml")
    engine = Warehouse(warehouse_of(config)).engine
    before = max_batch(engine)
    run_at(config, now=NOW + timedelta(minutes=1))
    assert recomputed(engine, before) == set()


def test_an_orders_lines_are_rewritten_only_where_they_changed(materialized_company, monkeypatch):
    config = load_config(materialized_company / "order_pipeline.yaml")
    engine = Warehouse(warehouse_of(config)).engine
    lines = RAW_TABLES["order_lines"]

    def stored(order):
        with engine.connect() as conn:
            return {r.sku: (r.qty, r._batch) for r in conn.execute(sa.select(lines).where(lines.c.order_no == order))}

    with engine.connect() as conn:
        order = conn.execute(
            sa.select(lines.c.order_no)
            .group_by(lines.c.order_no)
            .having(sa.func.count() >= 3)
            .order_by(lines.c.order_no)
            .limit(1)
        ).scalar()
    before = stored(order)
    changed, removed, *kept = sorted(before)
    later = NOW + timedelta(minutes=10)
    with sqlite3.connect(materialized_company / "erp.db") as erp:
        erp.execute("UPDATE T_SAL_ORDER SET FModifyDate = ? WHERE FBillNo = ?", (local(later), order))
        erp.execute(
            "UPDATE T_SAL_ORDERENTRY SET FQty = FQty + 1 WHERE FBillNo = ? AND FMaterialId = ?", (order, changed)
        )
        erp.execute("DELETE FROM T_SAL_ORDERENTRY WHERE FBillNo = ? AND FMaterialId = ?", (order, removed))
        erp.execute(
            "INSERT INTO T_SAL_ORDERENTRY (FEntryID, FBillNo, FMaterialId, FQty, FPrice) "
            "VALUES (999999, ?, 'SKU-NEW', 2, 9.5)",
            (order,),
        )
    run_at(config, now=later)

    after = stored(order)
    assert set(after) == {changed, "SKU-NEW", *kept}
    assert after[changed][0] == before[changed][0] + 1 and after[changed][1] > before[changed][1]
    assert after["SKU-NEW"] == (2, after[changed][1])
    assert all(after[sku] == before[sku] for sku in kept)  # not rewritten: same batch
