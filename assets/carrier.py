"""Carrier tracking: poll Kuaidi100 for the waybills that are due."""

from datetime import timedelta

import dagster as dg

from assets.common import SOURCES_GROUP, WAREHOUSE_KIND, raw_asset_key
from order_pipeline.carrier.polling import poll_due
from order_pipeline.carrier.store import due_waybills
from resources.carrier import Kuaidi100Client
from resources.warehouse import PipelineClock, WarehouseResource

RAW_TRACKING = dg.AssetKey("raw_tracking")


def carrier_tracking_asset(
    poll_interval: timedelta,
    max_polls_per_run: int,
    max_consecutive_failures: int = 5,
    push_silence: timedelta = timedelta(hours=2),
) -> dg.AssetsDefinition:
    stop = (
        f"; stops after {max_consecutive_failures} failures in a row (Kuaidi100 down) and leaves the rest "
        "for the next run"
        if max_consecutive_failures
        else ""
    )

    @dg.asset(
        key=RAW_TRACKING,
        group_name=SOURCES_GROUP,
        deps=[raw_asset_key("shipments"), raw_asset_key("orders")],
        kinds={"kuaidi100", WAREHOUSE_KIND},
        tags={"system": "carrier"},
        description=(
            f"Kuaidi100 state and events per waybill. Polls unsigned waybills not polled for "
            f"{poll_interval}, at most {max_polls_per_run} a run{stop}; pushed callbacks land here too."
        ),
    )
    def raw_tracking(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        clock: PipelineClock,
        kuaidi100: Kuaidi100Client,
    ) -> dg.MaterializeResult:
        engine, now = warehouse.engine, clock.now()
        with engine.connect() as conn:
            due = due_waybills(conn, now, poll_interval, max_polls_per_run + 1, push_silence)
        backlog = len(due) > max_polls_per_run
        due = due.head(max_polls_per_run)
        result = poll_due(engine, due, kuaidi100.query, now, max_consecutive_failures)
        errors = result.errors
        if result.circuit_open:
            waybill, error = next(reversed(errors.items()))
            context.log.error(
                f"Kuaidi100 gave no answer {max_consecutive_failures} times in a row (the last, {waybill}: "
                f"{error}); polling stopped, {result.skipped} due waybills wait for the next run"
            )
        if errors:
            context.log.warning(
                f"{len(errors)} of {result.asked} waybills got no answer; they wait for the next poll. "
                f"First: {next(iter(errors.items()))}"
            )
        if backlog:
            context.log.info(f"more than {max_polls_per_run} waybills are due; the rest wait for the next run")
        return dg.MaterializeResult(
            metadata={
                "waybills_polled": result.asked,
                "answers": result.answers,
                "poll_errors": len(errors),
                "backlog": backlog,
                "circuit_open": result.circuit_open,
                "skipped": result.skipped,
            }
        )

    return raw_tracking
