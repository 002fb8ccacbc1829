"""The unified order: one row per order with its stage, gaps and owner."""

import dagster as dg
import sqlalchemy as sa

from assets.carrier import RAW_TRACKING
from assets.common import (
    ORDERS_GROUP,
    ROW_COUNT,
    WAREHOUSE_KIND,
    LoadConfig,
    raw_asset_key,
    table_metadata,
    table_preview,
)
from order_pipeline.contract.schema import unified_orders
from order_pipeline.domain.stages import HAPPY_PATH, STAGE_LABELS
from order_pipeline.pipeline.unify import unify
from resources.warehouse import PipelineClock, WarehouseResource

UNIFIED_ORDERS = dg.AssetKey("unified_orders")
PREVIEW_COLUMNS = ["order_no", "stage_label", "missing_info", "responsible_role", "waiting_since", "parcel_count"]


def unified_orders_asset(source_columns: dict[str, dict[str, str]], transit_days: int) -> dg.AssetsDefinition:
    """`source_columns`: per source, its config's column map (an orphan row's reject shows the row by it)."""

    @dg.asset(
        key=UNIFIED_ORDERS,
        group_name=ORDERS_GROUP,
        deps=[raw_asset_key(e) for e in source_columns] + [RAW_TRACKING],
        metadata=table_metadata(unified_orders),
        kinds={"pandas", WAREHOUSE_KIND},
        description="One row per order: lifecycle stage, stage times, missing facts, owner of the next step, "
        "waiting since, parcels, latest carrier event and ETA. Recomputes only the orders a source touched.",
    )
    def _unified(config: LoadConfig, warehouse: WarehouseResource, clock: PipelineClock) -> dg.MaterializeResult:
        engine = warehouse.engine
        result = unify(engine, clock.now(), transit_days, full=config.full_refresh, source_columns=source_columns)
        with engine.connect() as conn:
            per_stage = dict(
                conn.execute(sa.select(unified_orders.c.stage, sa.func.count()).group_by(unified_orders.c.stage)).all()
            )
        metadata = {
            "orders_recomputed": result.touched,
            "full_refresh": result.full,
            "orphan_rows": result.orphans,
            "orders_total": sum(per_stage.values()),
            ROW_COUNT: sum(per_stage.values()),
            **{f"orders_{s}": per_stage.get(s, 0) for s in (*HAPPY_PATH, "cancelled", "exception")},
            "preview": table_preview(
                result.preview.assign(stage_label=result.preview["stage"].map(STAGE_LABELS)), PREVIEW_COLUMNS
            ),
        }
        return dg.MaterializeResult(metadata=metadata)

    return _unified
