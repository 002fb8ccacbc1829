"""Carrier tracking: poll Kuaidi100 for the waybills that are due."""

from datetime import timedelta

import dagster as dg

from assets.common import SOURCES_GROUP, WAREHOUSE_KIND, raw_asset_key
from order_pipeline.carrier.protocol import Kuaidi100Error
from order_pipeline.carrier.store import due_waybills, store_poll_errors, store_tracking_answers
from resources.carrier import Kuaidi100Client
from resources.warehouse import PipelineClock, WarehouseResource

RAW_TRACKING = dg.AssetKey("raw_tracking")


def carrier_tracking_asset(poll_interval: timedelta, max_polls_per_run: int) -> dg.AssetsDefinition:
    @dg.asset(
        key=RAW_TRACKING,
        group_name=SOURCES_GROUP,
        deps=[raw_asset_key("shipments"), raw_asset_key("orders")],
        kinds={"kuaidi100", WAREHOUSE_KIND},
        tags={"system": "carrier"},
        description=(
            f"Kuaidi100 state and events per waybill. Polls unsigned waybills not polled for "
            f"{poll_interval}, at most {max_polls_per_run} a run; pushed callbacks land here too."
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
            due = due_waybills(conn, now, poll_interval, max_polls_per_run + 1)
        backlog = len(due) > max_polls_per_run
        due = due.head(max_polls_per_run)
        answers, errors = [], {}
        for waybill_no, carrier_code, phone in zip(due["waybill_no"], due["carrier_code"], due["phone"], strict=True):
            try:
                answers.append(kuaidi100.query(carrier_code, waybill_no, phone))
            except Kuaidi100Error as e:
                errors[waybill_no] = f"{e.return_code or 'transport'}: {e.message}"
        store_tracking_answers(engine, answers, via="poll", now=now)
        store_poll_errors(engine, errors, now)
        if errors:
            context.log.warning(
                f"{len(errors)} of {len(due)} waybills got no answer; they wait for the next poll. "
                f"First: {next(iter(errors.items()))}"
            )
        if backlog:
            context.log.info(f"more than {max_polls_per_run} waybills are due; the rest wait for the next run")
        return dg.MaterializeResult(
            metadata={
                "waybills_polled": len(due),
                "answers": len(answers),
                "poll_errors": len(errors),
                "backlog": backlog,
            }
        )

    return raw_tracking
