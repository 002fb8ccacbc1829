"""One asset per configured source, landing its extract into `raw_<entity>`."""

import dagster as dg

from assets.common import CLOCK, SOURCES_GROUP, WAREHOUSE, LoadConfig, raw_asset_key, source_resource_key
from order_pipeline.contract.canonical import SOURCE_ENTITIES
from order_pipeline.contract.config import SourceConfig
from order_pipeline.pipeline.loading import load_source


def raw_source_asset(sc: SourceConfig) -> dg.AssetsDefinition:
    entity = SOURCE_ENTITIES[sc.entity]
    # Order lines are re-read for the orders that changed, so they follow raw_orders.
    deps = [raw_asset_key("orders")] if entity.watermark is None else []
    where = f"table {sc.table}" if sc.table else "a configured query"

    @dg.asset(
        key=raw_asset_key(entity.name),
        group_name=SOURCES_GROUP,
        deps=deps,
        kinds={"sql"},
        required_resource_keys={WAREHOUSE, CLOCK, source_resource_key(entity.name)},
        description=f"{entity.name} from the {entity.system.upper()} ({where}), upserted by {'/'.join(entity.key)}.",
        metadata={"source_columns": dg.MetadataValue.json(sc.columns), "timezone": sc.timezone},
    )
    def _raw(context: dg.AssetExecutionContext, config: LoadConfig) -> dg.MaterializeResult:
        res = context.resources
        result = load_source(
            res.warehouse.engine,
            getattr(res, source_resource_key(entity.name)).engine,
            sc,
            res.clock.now(),
            full=config.full_refresh,
        )
        if result.rejected:
            context.log.warning(f"{result.rejected} {entity.name} rows rejected: see pipeline_rejects")
        metadata = {**result.metadata, "batch": result.batch, "full_refresh": config.full_refresh}
        if result.newest is not None:
            metadata["newest_source_update"] = dg.MetadataValue.timestamp(result.newest.to_pydatetime())
        return dg.MaterializeResult(metadata=metadata)

    return _raw
