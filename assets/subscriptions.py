"""Kuaidi100 subscriptions: every shipped waybill asked to be pushed, so polling is only the fallback."""

import dagster as dg

from assets.carrier import RAW_TRACKING
from assets.common import SOURCES_GROUP, WAREHOUSE_KIND, raw_asset_key
from order_pipeline.carrier.protocol import Kuaidi100Error, Kuaidi100Unavailable
from order_pipeline.carrier.subscription import Outcome
from order_pipeline.carrier.subscriptions import SubscribeResult, due_subscriptions, record_subscribe_results
from resources.carrier import Kuaidi100Client
from resources.warehouse import PipelineClock, WarehouseResource

CARRIER_SUBSCRIPTIONS = dg.AssetKey("carrier_subscriptions")
OUTCOMES = [outcome.value for outcome in Outcome] + ["error"]


def carrier_subscriptions_asset(max_per_run: int, max_consecutive_failures: int) -> dg.AssetsDefinition:
    @dg.asset(
        key=CARRIER_SUBSCRIPTIONS,
        group_name=SOURCES_GROUP,
        # After the carrier's poll: a new waybill is looked up once, so its page has its history at once,
        # then left to its pushes (the first of which may take a few minutes to come).
        deps=[raw_asset_key("shipments"), raw_asset_key("orders"), RAW_TRACKING],
        kinds={"kuaidi100", WAREHOUSE_KIND},
        tags={"system": "carrier"},
        description=(
            f"Subscribes each shipped, unsigned waybill with Kuaidi100 (POST /poll), at most {max_per_run} a run, "
            "so its news is pushed to carrier.callback_url; one state per waybill in carrier_subscriptions."
        ),
    )
    def carrier_subscriptions(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        clock: PipelineClock,
        kuaidi100: Kuaidi100Client,
    ) -> dg.MaterializeResult:
        engine, now = warehouse.engine, clock.now()
        with engine.connect() as conn:
            due = due_subscriptions(conn, now, max_per_run + 1)
        backlog = len(due) > max_per_run
        results: list[SubscribeResult] = []
        stopped: SubscribeResult | None = None
        failures = 0
        for row in due.head(max_per_run).to_dict("records"):
            waybill, code = str(row["waybill_no"]), str(row["carrier_code"])
            try:
                answer = kuaidi100.subscribe(code, waybill, _text(row["phone"]), to=_text(row["to"]))
            except Kuaidi100Error as e:
                results.append(SubscribeResult(waybill, code, None, str(e)))
                failures = failures + 1 if isinstance(e, Kuaidi100Unavailable) else 0
                if max_consecutive_failures and failures >= max_consecutive_failures:
                    context.log.error(f"Kuaidi100 gave no answer {failures} times in a row: the rest wait")
                    break
                continue
            failures = 0
            result = SubscribeResult(waybill, code, answer)
            results.append(result)
            if answer.outcome is Outcome.STOP_KEY:
                stopped = result  # a bad or expired key is the same for every waybill
                break
        with engine.begin() as conn:
            counts = record_subscribe_results(conn, results, now)
        metadata = {**{f"subscribe_{o}": counts.get(o, 0) for o in OUTCOMES}, "asked": len(results), "backlog": backlog}
        if stopped is not None and stopped.answer is not None:
            # Failing the asset alerts the data team once (the run-failure alert), and a later run
            # that subscribes again resolves it; polling goes on meanwhile.
            raise dg.Failure(
                f"Kuaidi100 refused the subscription key ({stopped.answer.return_code}: {stopped.answer.reason}); "
                "subscribing stopped, polling goes on. Fix: renew the key or correct carrier.key_env",
                metadata=metadata,
            )
        return dg.MaterializeResult(metadata=metadata)

    return carrier_subscriptions


def _text(value: object) -> str | None:
    """A text field of the due frame, or None where the warehouse has none (NULL, NaN)."""
    return value if isinstance(value, str) and value else None
