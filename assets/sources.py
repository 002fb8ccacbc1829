"""One asset per configured source, landing its extract into `raw_<entity>`, and now and then
comparing the whole source with it (`reconcile_every`), reloading the rows that differ."""

from datetime import timedelta
from pathlib import Path

import dagster as dg

from assets.common import SOURCES_GROUP, WAREHOUSE_KIND, LoadConfig, raw_asset_key, table_metadata
from order_pipeline.contract.canonical import SOURCE_ENTITIES
from order_pipeline.contract.config import SourceConfig
from order_pipeline.contract.schema import RAW_TABLES
from order_pipeline.pipeline.loading import load_source
from order_pipeline.pipeline.reconcile import last_reconciled, reconcile_source
from order_pipeline.sources.checks import check_source
from order_pipeline.sources.watch import reconcile_due
from resources.warehouse import PipelineClock, SourceDatabases, WarehouseResource


class SourceLoadConfig(LoadConfig):
    """`reconcile: true` compares the whole source with its raw table in this run, due or not."""

    reconcile: bool = False


def raw_source_asset(
    sc: SourceConfig, config_file: Path, reconcile_every: timedelta = timedelta(hours=1)
) -> dg.AssetsDefinition:
    entity = SOURCE_ENTITIES[sc.entity]
    # Order lines are re-read for the orders that changed, so they follow raw_orders.
    deps = [raw_asset_key("orders")] if entity.watermark is None else []
    where = f"table {sc.table}" if sc.table else "a configured query"

    @dg.asset(
        key=raw_asset_key(entity.name),
        group_name=SOURCES_GROUP,
        deps=deps,
        kinds={WAREHOUSE_KIND},
        tags={"system": entity.system},
        description=f"{entity.name} from the {entity.system.upper()} ({where}), upserted by {'/'.join(entity.key)}.",
        metadata={
            "source_columns": dg.MetadataValue.json(sc.columns),
            "timezone": sc.timezone,
            **table_metadata(RAW_TABLES[entity.name]),
        },
    )
    def _raw(
        context: dg.AssetExecutionContext,
        config: SourceLoadConfig,
        warehouse: WarehouseResource,
        clock: PipelineClock,
        sources: SourceDatabases,
    ) -> dg.MaterializeResult:
        # A wrong table or column fails here, in the config's terms, and fails only this source.
        check_source(config_file, sc)
        now = clock.now()
        result = load_source(warehouse.engine, sources.engine(entity.name), sc, now, full=config.full_refresh)
        if result.rejected:
            context.log.warning(f"{result.rejected} {entity.name} rows rejected: see pipeline_rejects")
        metadata = {**result.metadata, "batch": result.batch, "full_refresh": config.full_refresh}
        if result.newest is not None:
            metadata["newest_source_update"] = dg.MetadataValue.timestamp(result.newest.to_pydatetime())
        if config.reconcile or reconcile_due(last_reconciled(warehouse.engine, entity.name), now, reconcile_every):
            metadata.update(reconcile_source(warehouse.engine, sources.engine(entity.name), sc, now).metadata)
        return dg.MaterializeResult(metadata=metadata)

    return _raw
