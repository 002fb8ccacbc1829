"""The whole pipeline in process on the demo company: materialize, rejects, incremental runs, PostgreSQL."""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import replace
from datetime import timedelta

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa
from helpers import NOW, warehouse_of

from order_pipeline.carrier.protocol import TrackingAnswer, TrackingEvent
from order_pipeline.carrier.store import store_tracking_answers
from order_pipeline.contract.config import load_config
from order_pipeline.contract.schema import (
    PUBLISHED_ORDER_TABLES,
    RAW_TABLES,
    order_tracking_events,
    order_tracking_snapshot,
    pipeline_rejects,
    raw_tracking,
    raw_tracking_events,
    unified_orders,
)
from order_pipeline.definitions import NOW_ENV
from order_pipeline.pipeline.publish import publish
from order_pipeline.pipeline.unify import unify
from order_pipeline.runner import run_pipeline
from order_pipeline.warehouse.engine import Warehouse, utc


def local(ts) -> str:
    """A naive Asia/Shanghai text timestamp, as the demo sources store them."""
    return pd.Timestamp(ts).tz_convert("Asia/Shanghai").strftime("%Y-%m-%d %H:%M:%S")


def run(config, monkeypatch, now=NOW, full=False, instance=None):
    monkeypatch.setenv(NOW_ENV, now.isoformat())
    outcome = run_pipeline(config, instance or dg.DagsterInstance.ephemeral(), full_refresh=full)
    assert outcome.success, outcome.failures
    return outcome


def snapshot(engine) -> pd.DataFrame:
    with engine.connect() as conn:
        frame = pd.read_sql(sa.select(order_tracking_snapshot), conn)
    return frame.drop(columns=["published_at"]).sort_values("order_no").reset_index(drop=True)


def recomputed(engine, batch_after: int) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(sa.select(unified_orders.c.order_no).where(unified_orders.c._batch > batch_after)).scalars()
        )


def max_batch(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.max(unified_orders.c._batch))).scalar()


@pytest.fixture
def config(demo_company):
    return load_config(demo_company / "order_pipeline.yaml")


@pytest.fixture
def engine(config):
    return Warehouse(config.warehouse_url.resolve()).engine


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
    meta = instance.get_latest_materialization_event(dg.AssetKey("unified_orders")).asset_materialization.metadata
    assert meta["orders_total"].value == meta["orders_recomputed"].value > 300
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
                "SELECT count(*) FROM order_tracking_parcels p JOIN order_tracking_snapshot s ON s.order_no = p.order_no "
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
    reasons = set(zip(rejects["source"], rejects["reason"]))
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
    assert len(published) > 300


def _bump(company, now) -> list[str]:
    """Change three orders in three different sources, as the systems would: one is cancelled,
    one paid, one shipped. Returns them in that order."""
    stamp = local(now)
    with sqlite3.connect(company / "erp.db") as erp:
        open_orders = [
            r[0]
            for r in erp.execute(
                "SELECT FBillNo FROM T_SAL_ORDER WHERE FStatus = 'A' AND FBillNo <> '' ORDER BY FBillNo LIMIT 3"
            )
        ]
        erp.execute("UPDATE T_SAL_ORDER SET FStatus = 'C', FModifyDate = ? WHERE FBillNo = ?", (stamp, open_orders[0]))
    with sqlite3.connect(company / "finance.db") as fin:
        fin.execute(
            "INSERT INTO 收款单 (收款单号, 订单编号, 金额, 收款时间, 凭证号, 状态, 修改时间) "
            "VALUES ('SK-TEST-1', ?, 1.0, ?, 'V-TEST', '已收款', ?)",
            (open_orders[1], stamp, stamp),
        )
    with sqlite3.connect(company / "wms.db") as wms:
        wms.execute(
            "INSERT INTO outbound (ref_order, tracking_no, express_company, gross_weight, outbound_time, "
            "last_modified) VALUES (?, 'YT9999999999999', 'yuantong', 1.0, ?, ?)",
            (open_orders[2], stamp, stamp),
        )
    return open_orders


# Longer than a PostgreSQL index entry may be (2.7 kB): the timeline keeps it whole all the same.
LONG_CONTEXT = "快递员正在派件" + "，请保持电话畅通" * 400


def _carrier_news(engine, now) -> set[str]:
    """A pushed answer adds an event (with a very long text) to one tracked parcel and rewords the
    last event of another.

    Returns the orders the two parcels belong to.
    """
    t, e, s = raw_tracking, raw_tracking_events, RAW_TABLES["shipments"]
    with engine.connect() as conn:
        waybills = conn.execute(
            sa.select(t.c.waybill_no, t.c.carrier_code, s.c.order_no)
            .join(s, s.c.waybill_no == t.c.waybill_no)
            .where(t.c.state == 0)
            .order_by(t.c.waybill_no)
            .limit(2)
        ).all()
        history = {
            w.waybill_no: [
                TrackingEvent(utc(r.event_at), r.context, r.area, r.status)
                for r in conn.execute(sa.select(e).where(e.c.waybill_no == w.waybill_no).order_by(e.c.event_at))
            ]
            for w in waybills
        }
    (grown, grown_code, grown_order), (reworded, reworded_code, reworded_order) = waybills
    answers = [
        TrackingAnswer(
            grown, grown_code, 5, False, (*history[grown], TrackingEvent(now, LONG_CONTEXT, "上海", "派件"))
        ),
        TrackingAnswer(
            reworded,
            reworded_code,
            0,
            False,
            (*history[reworded][:-1], replace(history[reworded][-1], context="已到达转运中心（更正）")),
        ),
    ]
    assert store_tracking_answers(engine, answers, via="push", now=now) == 2
    return {grown_order, reworded_order}


SECOND_PARCEL = "YT0000000000001"


def _ship_a_second_parcel(company) -> str:
    """Before the first run: an order in transit gets a second parcel, shipped an hour after the
    first and picked up by the carrier an hour after the first's pickup. Returns the order."""
    with sqlite3.connect(company / "wms.db") as wms:
        wms.execute("ATTACH DATABASE ? AS carrier", (str(company / "carrier.db"),))
        order, first, shipped, modified = wms.execute(
            "SELECT o.ref_order, o.tracking_no, o.outbound_time, o.last_modified FROM outbound o "
            "JOIN carrier.carrier_waybills w ON w.waybill_no = o.tracking_no AND w.state = 0 AND w.ischeck = 0 "
            "WHERE (SELECT count(*) FROM outbound x WHERE x.ref_order = o.ref_order) = 1 "
            "ORDER BY o.ref_order LIMIT 1"
        ).fetchone()
        wms.execute(
            "INSERT INTO outbound VALUES (?, ?, 'yuantong', 1.0, datetime(?, '+1 hour'), ?)",
            (order, SECOND_PARCEL, shipped, modified),
        )
        wms.execute(
            "INSERT INTO carrier.carrier_waybills (waybill_no, com, state, ischeck) VALUES (?, 'yuantong', 0, 0)",
            (SECOND_PARCEL,),
        )
        wms.execute(
            "INSERT INTO carrier.carrier_events SELECT ?, datetime(time, '+1 hour'), context, area_name, status "
            "FROM carrier.carrier_events WHERE waybill_no = ?",
            (SECOND_PARCEL, first),
        )
        wms.commit()
        wms.execute("DETACH DATABASE carrier")
    return order


def _move_parcels(engine, company, now, second_parcel_of: str) -> set[str]:
    """The WMS corrects which order two parcels belong to.

    One leaves an order with no other parcel: its stage goes back. The other is the
    second parcel `_ship_a_second_parcel` added: the order it leaves keeps its stage and stage
    times, but not that parcel's carrier events. Returns the orders they left and the one they joined.
    """
    s, u = RAW_TABLES["shipments"], unified_orders
    with engine.connect() as conn:  # the two newest orders with one parcel each
        (alone, alone_order), (_, joined) = conn.execute(
            sa.select(sa.func.min(s.c.waybill_no), s.c.order_no)
            .join(u, u.c.order_no == s.c.order_no)
            .where(s.c.order_no != second_parcel_of)
            .group_by(s.c.order_no)
            .having(sa.func.count() == 1)
            .order_by(s.c.order_no.desc())
            .limit(2)
        ).all()
    with sqlite3.connect(company / "wms.db") as wms:
        for waybill in (alone, SECOND_PARCEL):
            wms.execute(
                "UPDATE outbound SET ref_order = ?, last_modified = ? WHERE tracking_no = ?",
                (joined, local(now), waybill),
            )
    return {alone_order, second_parcel_of, joined}


def _edit_an_amount(company, now, other_than: set[str]) -> str:
    """The ERP corrects an open order's amount: none of its parcels changes. Returns the order."""
    with sqlite3.connect(company / "erp.db") as erp:
        order = next(
            r[0]
            for r in erp.execute(
                "SELECT FBillNo FROM T_SAL_ORDER WHERE FStatus = 'A' AND FBillNo <> '' ORDER BY FBillNo"
            )
            if r[0] not in other_than
        )
        erp.execute(
            "UPDATE T_SAL_ORDER SET FAmount = FAmount + 1, FModifyDate = ? WHERE FBillNo = ?", (local(now), order)
        )
    return order


def published(engine) -> dict[str, pd.DataFrame]:
    """Every published table in a stable order, without the publishing time."""
    with engine.connect() as conn:
        frames = {
            t.name: pd.read_sql(sa.select(t), conn).drop(columns=["published_at"], errors="ignore")
            for t in PUBLISHED_ORDER_TABLES
        }
    return {name: f.sort_values(list(f.columns)).reset_index(drop=True) for name, f in frames.items()}


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_incremental_run_touches_only_changed_orders_and_matches_a_full_rebuild(
    backend, config, engine, demo_company, request, monkeypatch
):
    if backend == "postgres":
        config = _on_postgres(demo_company, request.getfixturevalue("pg_database"), monkeypatch)
        engine = Warehouse(config.warehouse_url.resolve()).engine
    split = _ship_a_second_parcel(demo_company)
    run(config, monkeypatch)
    if backend == "postgres":  # vacuumed after the rebuild, not left to autovacuum
        with engine.connect() as conn:
            pages, visible = conn.execute(
                sa.text("SELECT relpages, relallvisible FROM pg_class WHERE oid = to_regclass('order_tracking_events')")
            ).one()
        assert pages > 0 and visible >= 0.9 * pages
    before = max_batch(engine)
    tables_before = published(engine)
    events_before = tables_before["order_tracking_events"]
    snapshot_before = tables_before["order_tracking_snapshot"].set_index("order_no")
    later = NOW + timedelta(minutes=10)
    cancelled, paid, shipped = _bump(demo_company, later)
    parcels_changed = (
        {shipped} | _carrier_news(engine, later) | _move_parcels(engine, demo_company, later, second_parcel_of=split)
    )
    changed = {cancelled, paid} | parcels_changed
    edited = _edit_an_amount(demo_company, later, other_than=changed)
    changed.add(edited)

    instance = dg.DagsterInstance.ephemeral()
    run(config, monkeypatch, now=later, instance=instance)
    assert recomputed(engine, before) == changed
    incremental = published(engine)
    # The stage counts the run kept (moved by the orders it republished) are the snapshot's.
    kept = instance.get_latest_materialization_event(
        dg.AssetKey("order_tracking_snapshot")
    ).asset_materialization.metadata
    counted = incremental["order_tracking_snapshot"]["stage"].value_counts()
    per_stage = {
        key.removeprefix("orders_"): m.value
        for key, m in kept.items()
        if key.startswith("orders_") and key not in ("orders_published", "orders_total")
    }
    assert per_stage == counted.to_dict()
    assert counted["cancelled"] > tables_before["order_tracking_snapshot"]["stage"].value_counts()["cancelled"]

    run(config, monkeypatch, now=later, full=True)
    full = published(engine)
    if backend == "postgres":
        engine.dispose()
    for name, table in full.items():
        pd.testing.assert_frame_equal(incremental[name], table, obj=name)
    row = full["order_tracking_snapshot"].set_index("order_no")
    assert row.loc[cancelled, "stage"] == "cancelled"
    # The timeline really changed: an event was added and one reworded.
    contexts = set(full["order_tracking_events"]["context"])
    assert {LONG_CONTEXT, "已到达转运中心（更正）"} <= contexts
    assert LONG_CONTEXT not in set(events_before["context"])
    assert row.loc[edited, "amount"] == snapshot_before.loc[edited, "amount"] + 1
    # An order that gave a parcel away keeps its stage times, yet its timeline lost that parcel's events.
    times = ["ordered_at", "paid_at", "locked_at", "shipped_at", "in_transit_at", "delivered_at"]
    kept, before = row.loc[split], snapshot_before.loc[split]
    assert kept[times].equals(before[times]) and kept["stage"] == before["stage"] == "in_transit"
    assert (before["parcel_count"], kept["parcel_count"]) == (2, 1)
    assert set(events_before.loc[events_before["order_no"] == split, "waybill_no"].dropna()) > {SECOND_PARCEL}
    # Only the difference was written: far fewer timeline rows than the recomputed orders have.
    # Carrier rows were compared only for orders with parcel news, not for the cancelled, the
    # paid or the edited one.
    written = instance.get_latest_materialization_event(
        dg.AssetKey("order_tracking_events")
    ).asset_materialization.metadata
    timelines = full["order_tracking_events"]
    assert 0 < written["events_written"].value < timelines["order_no"].isin(changed).sum() / 2
    assert written["orders_carrier_compared"].value == len(parcels_changed)


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
    run(config, monkeypatch, now=later)

    after = stored(order)
    assert set(after) == {changed, "SKU-NEW", *kept}
    assert after[changed][0] == before[changed][0] + 1 and after[changed][1] > before[changed][1]
    assert after["SKU-NEW"] == (2, after[changed][1])
    assert all(after[sku] == before[sku] for sku in kept)  # not rewritten: same batch


def unified(engine) -> pd.DataFrame:
    with engine.connect() as conn:
        frame = pd.read_sql(sa.select(unified_orders), conn)
    return frame.drop(columns=["_batch"]).sort_values("order_no").reset_index(drop=True)


def rejects(engine) -> pd.DataFrame:
    with engine.connect() as conn:
        frame = pd.read_sql(sa.select(pipeline_rejects), conn)
    return (
        frame.drop(columns=["id"], errors="ignore")
        .sort_values(["source", "record_key", "reason"])
        .reset_index(drop=True)
    )


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_full_rebuild_in_slices_derives_the_same_orders_and_orphans(backend, workers, request, monkeypatch):
    """In slices, in this process or in worker processes beside it (which prepare the rows for the
    bulk write there), as in one piece."""
    if backend == "postgres":
        company = request.getfixturevalue("demo_company")
        config = _on_postgres(company, request.getfixturevalue("pg_database"), monkeypatch)
        run(config, monkeypatch)
    else:  # the demo as its first run left it
        company = request.getfixturevalue("materialized_company")
        config = load_config(company / "order_pipeline.yaml")
    engine = Warehouse(warehouse_of(config)).engine
    with sqlite3.connect(company / "finance.db") as db:  # a payment for an order the ERP never had
        db.execute("INSERT INTO 收款单 SELECT * FROM 收款单 LIMIT 1")
        db.execute(
            "UPDATE 收款单 SET 收款单号 = 'PAY-ORPHAN', 订单编号 = 'ZZ-NO-SUCH-ORDER' WHERE rowid = "
            "(SELECT MAX(rowid) FROM 收款单)"
        )
    run(config, monkeypatch, full=True)
    whole, whole_rejects = unified(engine), rejects(engine)
    assert "ZZ-NO-SUCH-ORDER" not in set(whole["order_no"])
    assert (whole_rejects["record_key"] == "PAY-ORPHAN").sum() == 1

    result = unify(engine, NOW, config.carrier.transit_days, full=True, slice_orders=37, workers=workers)
    assert result.full and result.touched == len(whole)
    assert result.orphans >= 1
    pd.testing.assert_frame_equal(unified(engine), whole)
    pd.testing.assert_frame_equal(rejects(engine), whole_rejects)

    payments = RAW_TABLES["payments"]  # the payment's order turns up: its reject is settled
    with engine.begin() as conn:
        conn.execute(
            payments.update().where(payments.c.payment_id == "PAY-ORPHAN").values(order_no=whole["order_no"][0])
        )
    unify(engine, NOW, config.carrier.transit_days, full=True, slice_orders=37, workers=workers)
    assert "PAY-ORPHAN" not in set(rejects(engine)["record_key"])


def test_a_run_with_no_source_change_recomputes_nothing(materialized_company, monkeypatch):
    config = load_config(materialized_company / "order_pipeline.yaml")
    engine = Warehouse(warehouse_of(config)).engine
    before = max_batch(engine)
    run(config, monkeypatch, now=NOW + timedelta(minutes=1))
    assert recomputed(engine, before) == set()


@pytest.mark.postgres
def test_postgres_warehouse_publishes_the_same_snapshot(materialized_demo, demo_company, pg_database, monkeypatch):
    sqlite_snapshot = snapshot(materialized_demo.engine)

    pg_config = _on_postgres(demo_company, pg_database, monkeypatch)
    monkeypatch.setattr("order_pipeline.pipeline.unify.SLICE_ORDERS", 700)  # slices split by PostgreSQL's collation
    run(pg_config, monkeypatch)
    pg_engine = Warehouse(pg_config.warehouse_url.resolve()).engine
    assert pg_engine.dialect.name == "postgresql"
    pd.testing.assert_frame_equal(snapshot(pg_engine), sqlite_snapshot, check_dtype=False)
    pg_engine.dispose()


@pytest.mark.postgres
def test_a_postgres_rebuild_swaps_in_fresh_tables_keeping_grants_and_views(
    config, demo_company, pg_database, monkeypatch
):
    """A full publish fills new tables and swaps them in; one a view depends on is rebuilt in place."""
    pg_config = _on_postgres(demo_company, pg_database, monkeypatch)
    run(pg_config, monkeypatch)
    engine = Warehouse(pg_config.warehouse_url.resolve()).engine
    reader = f"tracking_reader_{uuid.uuid4().hex[:8]}"

    def oids() -> dict[str, int]:
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


def _on_postgres(demo_company, pg_database, monkeypatch):
    """The demo config with its warehouse in a fresh PostgreSQL database, named by an environment variable."""
    import yaml

    monkeypatch.setenv("ORDER_PIPELINE_TEST_WAREHOUSE", pg_database())
    doc = yaml.safe_load((demo_company / "order_pipeline.yaml").read_text(encoding="utf-8"))
    doc["warehouse"] = {"url_env": "ORDER_PIPELINE_TEST_WAREHOUSE"}
    path = demo_company / "pg.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return load_config(path)


@pytest.mark.postgres
def test_dagster_instance_storage_on_postgres(config, pg_database, tmp_path, monkeypatch):
    """The shipped deploy/dagster.yaml puts runs and events into the real PostgreSQL server."""
    from pathlib import Path

    home = tmp_path / "dagster_home"
    home.mkdir()
    shipped = Path(__file__).resolve().parent.parent / "deploy" / "dagster.yaml"
    (home / "dagster.yaml").write_text(shipped.read_text(encoding="utf-8"), encoding="utf-8")
    url = pg_database()  # postgresql+psycopg2://…: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3
    monkeypatch.setenv("DAGSTER_PG_URL", url)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        outcome = run(config, monkeypatch, instance=instance)
        assert instance.get_run_by_id(outcome.run_id).is_success
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT count(*) FROM runs WHERE run_id = :r"), {"r": outcome.run_id}).scalar()
        events = conn.execute(
            sa.text("SELECT count(*) FROM event_logs WHERE run_id = :r"), {"r": outcome.run_id}
        ).scalar()
    engine.dispose()
    assert stored == 1 and events > 10


@pytest.mark.parametrize("earlier", [0, 1], ids=["first loads ever", "later loads"])
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_concurrent_loads_get_distinct_batches_in_commit_order(backend, earlier, tmp_path, request):
    """Two loads racing for a batch number: the second waits for the first to commit."""
    import threading

    from order_pipeline.warehouse.engine import next_batch

    url = f"sqlite:///{tmp_path / 'wh.db'}" if backend == "sqlite" else request.getfixturevalue("pg_database")()
    wh = Warehouse(url)
    wh.create_schema()
    for _ in range(earlier):
        _take_batch(wh.engine)
    first = wh.engine.connect()
    first.begin()
    assert next_batch(first, NOW) == earlier + 1
    got = []
    second = threading.Thread(target=lambda: got.append(_take_batch(wh.engine)))
    second.start()
    second.join(timeout=0.5)
    assert second.is_alive()  # blocked behind the first load's open transaction
    first.commit()
    first.close()
    second.join(timeout=30)
    assert got == [earlier + 2]
    wh.engine.dispose()


def _take_batch(engine) -> int:
    from order_pipeline.warehouse.engine import next_batch

    with engine.begin() as conn:
        return next_batch(conn, NOW)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_an_index_whose_columns_changed_is_rebuilt_at_start(backend, tmp_path, request):
    """A warehouse from when the timeline's index covered every column gets the current index."""
    from order_pipeline.warehouse.engine import rebuild_changed_indexes

    url = f"sqlite:///{tmp_path / 'wh.db'}" if backend == "sqlite" else request.getfixturevalue("pg_database")()
    wh = Warehouse(url)
    wh.create_schema()
    with wh.engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_events_order_time")
        conn.exec_driver_sql(
            "CREATE INDEX ix_events_order_time ON order_tracking_events "
            "(order_no, event_at, kind, stage, waybill_no, context, area)"
        )

    wh.create_schema()
    indexes = {ix["name"]: ix["column_names"] for ix in sa.inspect(wh.engine).get_indexes("order_tracking_events")}
    assert indexes["ix_events_order_time"] == ["order_no", "event_at"]
    assert rebuild_changed_indexes(wh.engine) == []  # once is enough
    wh.engine.dispose()
