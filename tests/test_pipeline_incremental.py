"""Incremental runs against full rebuilds: a run recomputes only the orders whose sources changed, and
publishes what a full rebuild, in one piece or in slices, would."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import timedelta

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa
from helpers import (
    NOW,
    config_on_postgres,
    local,
    materialization_metadata,
    max_batch,
    published,
    recomputed,
    resolved,
    run_at,
    snapshot,
    warehouse_of,
)

from order_pipeline.carrier.protocol import TrackingAnswer, TrackingEvent
from order_pipeline.carrier.store import store_tracking_answers
from order_pipeline.contract.config import load_config
from order_pipeline.contract.schema import (
    RAW_TABLES,
    pipeline_rejects,
    raw_tracking,
    raw_tracking_events,
    unified_orders,
)
from order_pipeline.domain.times import utc
from order_pipeline.pipeline.reconcile import reconcile_source
from order_pipeline.pipeline.unify import unify
from order_pipeline.warehouse.engine import Warehouse


@pytest.fixture
def config(demo_company):
    return load_config(demo_company / "order_pipeline.yaml")


@pytest.fixture
def engine(config):
    return Warehouse(warehouse_of(config)).engine


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
            grown,
            grown_code,
            5,
            False,
            (*history[grown], TrackingEvent(now, LONG_CONTEXT, "上海", "派件")),
            predicted_arrival=now + PREDICTED_IN,
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
PREDICTED_IN = timedelta(days=2)  # the carrier's predicted arrival the carrier news brings


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


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_incremental_run_touches_only_changed_orders_and_matches_a_full_rebuild(
    backend, config, engine, demo_company, request, monkeypatch
):
    if backend == "postgres":
        config = config_on_postgres(demo_company, request.getfixturevalue("pg_database")(), monkeypatch)
        engine = Warehouse(warehouse_of(config)).engine
    split = _ship_a_second_parcel(demo_company)
    run_at(config)
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
    run_at(config, now=later, instance=instance)
    assert recomputed(engine, before) == changed
    incremental = published(engine)
    # The stage counts the run kept (moved by the orders it republished) are the snapshot's.
    kept = materialization_metadata(instance, "order_tracking_snapshot")
    counted = incremental["order_tracking_snapshot"]["stage"].value_counts()
    per_stage = {
        key.removeprefix("orders_"): value
        for key, value in kept.items()
        if key.startswith("orders_") and key not in ("orders_published", "orders_total")
    }
    assert per_stage == counted.to_dict()
    assert counted["cancelled"] > tables_before["order_tracking_snapshot"]["stage"].value_counts()["cancelled"]

    run_at(config, now=later, full=True)
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
    assert row["amount"][edited] == snapshot_before["amount"][edited] + 1
    # The carrier's predicted arrival reached the order and its parcel, and became the order's ETA.
    predicted = row[row["eta_source"] == "carrier"]
    assert len(predicted) == 1 and (predicted["eta"] == predicted["carrier_eta"]).all()
    assert pd.to_datetime(predicted["carrier_eta"], utc=True).iloc[0] == pd.Timestamp(later + PREDICTED_IN)
    parcels = full["order_tracking_parcels"]
    assert parcels.loc[parcels["carrier_eta"].notna(), "order_no"].tolist() == predicted.index.tolist()
    # An order that gave a parcel away keeps its stage times, yet its timeline lost that parcel's events.
    times = ["ordered_at", "paid_at", "locked_at", "shipped_at", "in_transit_at", "delivered_at"]
    kept, before = row.loc[split], snapshot_before.loc[split]
    assert isinstance(kept, pd.Series) and isinstance(before, pd.Series)  # one row each
    assert kept[times].equals(before[times]) and kept["stage"] == before["stage"] == "in_transit"
    assert (before["parcel_count"], kept["parcel_count"]) == (2, 1)
    assert set(events_before.loc[events_before["order_no"] == split, "waybill_no"].dropna()) > {SECOND_PARCEL}
    # Only the difference was written: far fewer timeline rows than the recomputed orders have.
    # Carrier rows were compared only for orders with parcel news, not for the cancelled, the
    # paid or the edited one.
    written = materialization_metadata(instance, "order_tracking_events")
    timelines = full["order_tracking_events"]
    assert 0 < written["events_written"] < timelines["order_no"].isin(changed).sum() / 2
    assert written["orders_carrier_compared"] == len(parcels_changed)


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
        config = config_on_postgres(company, request.getfixturevalue("pg_database")(), monkeypatch)
        run_at(config)
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
    run_at(config, full=True)
    whole, whole_rejects = unified(engine), rejects(engine)
    assert "ZZ-NO-SUCH-ORDER" not in set(whole["order_no"])
    assert (whole_rejects["record_key"] == "PAY-ORPHAN").sum() == 1

    names = {name: sc.columns for name, sc in config.sources.items()}
    result = unify(
        engine, NOW, config.carrier.transit_days, full=True, slice_orders=37, workers=workers, source_columns=names
    )
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


def test_an_amount_changed_with_an_older_updated_at_is_found_by_the_hourly_reconciliation(config, engine, demo_company):
    run_at(config)
    with sqlite3.connect(demo_company / "erp.db") as erp:
        order = erp.execute(
            "SELECT FBillNo FROM T_SAL_ORDER WHERE FStatus = 'A' AND FBillNo <> '' ORDER BY FBillNo"
        ).fetchone()[0]
        # A correction that kept a time from before the last read: no incremental read sees it.
        erp.execute(
            "UPDATE T_SAL_ORDER SET FAmount = FAmount + 7, FModifyDate = ? WHERE FBillNo = ?",
            (local(NOW - timedelta(days=2)), order),
        )
    before = snapshot(engine).set_index("order_no")["amount"][order]

    run_at(config, now=NOW + timedelta(minutes=10))
    assert snapshot(engine).set_index("order_no")["amount"][order] == before

    instance = dg.DagsterInstance.ephemeral()
    run_at(config, now=NOW + timedelta(hours=1), instance=instance)  # `pipeline.reconcile_every`: 1h
    assert snapshot(engine).set_index("order_no")["amount"][order] == before + 7
    assert materialization_metadata(instance, "raw_orders")["reconciled_rows"] == 1
    assert materialization_metadata(instance, "raw_payments")["reconciled_rows"] == 0


def test_reconciling_the_sources_just_loaded_finds_nothing_to_reload(materialized_company):
    """The demo's sources, bad rows, summed order lines and all, fingerprint as their raw tables do."""
    config = load_config(materialized_company / "order_pipeline.yaml")
    engine = Warehouse(warehouse_of(config)).engine
    before = max_batch(engine)
    for name, sc in config.sources.items():
        result = reconcile_source(engine, sa.create_engine(resolved(sc.url)), sc, NOW)
        assert (result.reloaded, result.buckets) == (0, 0), name
    assert max_batch(engine) == before
