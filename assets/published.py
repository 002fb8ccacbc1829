"""The tracking tables downstream apps read, published together in one transaction."""

import dagster as dg
import sqlalchemy as sa

from assets.common import PUBLISHED_GROUP, ROW_COUNT, WAREHOUSE_KIND, LoadConfig, table_metadata
from assets.unified import UNIFIED_ORDERS
from order_pipeline.contract.canonical import SOURCE_ENTITIES
from order_pipeline.contract.schema import (
    RAW_TABLES,
    order_tracking_events,
    order_tracking_parcels,
    order_tracking_snapshot,
    pipeline_rejects,
)
from order_pipeline.pipeline.publish import publish
from resources.warehouse import PipelineClock, WarehouseResource

SNAPSHOT = dg.AssetKey("order_tracking_snapshot")
EVENTS = dg.AssetKey("order_tracking_events")
PARCELS = dg.AssetKey("order_tracking_parcels")

UNIQUE_ORDER_NO = "snapshot_order_no_unique"
COVERS_OPEN_ORDERS = "snapshot_covers_open_orders"
REJECTS_BELOW_THRESHOLD = "rejects_below_threshold"


def _spec(key: dg.AssetKey, table: sa.Table, description: str) -> dg.AssetSpec:
    """A published table describes itself to the apps that read it: its name and its columns."""
    return dg.AssetSpec(
        key,
        deps=[UNIFIED_ORDERS],
        group_name=PUBLISHED_GROUP,
        kinds={WAREHOUSE_KIND},
        description=description,
        metadata=table_metadata(table),
    )


@dg.multi_asset(
    specs=[
        _spec(
            SNAPSHOT, order_tracking_snapshot, "One row per order: the tracking page, the ops board and BI read this."
        ),
        _spec(PARCELS, order_tracking_parcels, "One row per parcel (waybill), so a waybill number finds its order."),
        _spec(EVENTS, order_tracking_events, "Each order's timeline: stage changes and carrier events."),
    ],
)
def published_tracking_tables(config: LoadConfig, warehouse: WarehouseResource, clock: PipelineClock):
    engine = warehouse.engine
    result = publish(engine, clock.now(), full=config.full_refresh)
    with engine.connect() as conn:
        parcels, events = (
            conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            for t in (order_tracking_parcels, order_tracking_events)
        )
    yield dg.MaterializeResult(
        asset_key=SNAPSHOT,
        metadata={
            "orders_published": result.orders,
            "full_refresh": result.full,
            "orders_total": sum(result.stage_counts.values()),
            ROW_COUNT: sum(result.stage_counts.values()),
            **{f"orders_{stage}": n for stage, n in sorted(result.stage_counts.items())},
        },
    )
    yield dg.MaterializeResult(asset_key=PARCELS, metadata={"orders_published": result.orders, ROW_COUNT: parcels})
    yield dg.MaterializeResult(
        asset_key=EVENTS,
        metadata={
            "events_written": result.events_written,
            "orders_carrier_compared": result.carrier_orders,
            ROW_COUNT: events,
        },
    )


def published_checks(reject_threshold: int) -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(
        asset=SNAPSHOT,
        name=UNIQUE_ORDER_NO,
        description="Each order appears once in the snapshot.",
    )
    def unique_order_no(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        s = order_tracking_snapshot
        q = sa.select(s.c.order_no, sa.func.count().label("n")).group_by(s.c.order_no).having(sa.func.count() > 1)
        with warehouse.engine.connect() as conn:
            dups = conn.execute(q.limit(20)).all()
        return dg.AssetCheckResult(
            passed=not dups,
            metadata={"duplicated_order_nos": len(dups), "examples": dg.MetadataValue.json([r.order_no for r in dups])},
        )

    @dg.asset_check(
        asset=SNAPSHOT,
        name=COVERS_OPEN_ORDERS,
        description="Every open order the ERP sent is in the snapshot.",
    )
    def covers_open_orders(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        o, s = RAW_TABLES["orders"], order_tracking_snapshot
        missing = (
            sa.select(o.c.order_no).where(o.c.status == "open").where(~sa.exists().where(s.c.order_no == o.c.order_no))
        )
        with warehouse.engine.connect() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(missing.subquery())).scalar()
            examples = conn.execute(missing.limit(20)).scalars().all()
        return dg.AssetCheckResult(
            passed=count == 0, metadata={"missing_orders": count, "examples": dg.MetadataValue.json(examples)}
        )

    @dg.asset_check(
        asset=SNAPSHOT,
        name=REJECTS_BELOW_THRESHOLD,
        description=f"At most {reject_threshold} source rows are rejected (pipeline.reject_threshold).",
    )
    def rejects_below_threshold(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        r = pipeline_rejects
        with warehouse.engine.connect() as conn:
            per_source = dict(conn.execute(sa.select(r.c.source, sa.func.count()).group_by(r.c.source)).all())
        total = sum(per_source.values())
        return dg.AssetCheckResult(
            passed=total <= reject_threshold,
            metadata={
                "rejects": total,
                "threshold": reject_threshold,
                **{f"rejects_{name}": per_source.get(name, 0) for name in SOURCE_ENTITIES},
            },
        )

    return [unique_order_no, covers_open_orders, rejects_below_threshold]
