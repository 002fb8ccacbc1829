"""Customer messages: planned and sent after each publish, as the `customer_notifications` asset.

The asset follows the published snapshot (eager automation, and in the pipeline job), so a new
order's customer hears within the pipeline's own latency. A message held for quiet hours or a
retry wakes the notification sensor, which materializes the asset again when it falls due.
"""

from datetime import timedelta
from typing import Any

import dagster as dg

from assets.published import SNAPSHOT
from order_pipeline.contract.config import Config
from order_pipeline.notify import ledger
from order_pipeline.notify.sender import RoundResult
from order_pipeline.notify.settings import load_notify_settings
from resources.messaging import CustomerMessaging
from resources.warehouse import PipelineClock, WarehouseResource

CUSTOMER_NOTIFICATIONS = dg.AssetKey("customer_notifications")
CUSTOMERS_GROUP = "customers"
FAILURE_RATE_CHECK = "customer_message_failure_rate"
CHECK_WINDOW = timedelta(hours=24)
# Each status as the metadata names it: a retry is a message still pending after a failed attempt.
STATUS_LABELS = {"pending": "retried", **{s: s for s in ledger.STATUSES if s != "pending"}}


def round_metadata(result: RoundResult) -> dict[str, Any]:
    """Counts that plot over runs, and the breakdown per event and channel as a table."""
    meta: dict[str, Any] = {label: result.count(status) for status, label in STATUS_LABELS.items()}
    meta |= {"recorded": result.recorded, "too_old_at_first_sight": result.too_old, "swept_in_doubt": result.in_doubt}
    meta["failure_rate"] = round(result.failure_rate, 4)
    rows = [
        dg.TableRecord({"event": e, "channel": c, "status": STATUS_LABELS.get(s, s), "messages": k})
        for (e, c, s), k in sorted(result.outcomes.items())
    ]
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn("event", "string"),
            dg.TableColumn("channel", "string"),
            dg.TableColumn("status", "string"),
            dg.TableColumn("messages", "int"),
        ]
    )
    meta["by_event_and_channel"] = dg.MetadataValue.table(rows, schema=schema)
    return meta


def customer_notifications_asset(config: Config) -> dg.AssetsDefinition:
    events = ", ".join(load_notify_settings(config).events) or "none (no `notifications:` section)"

    @dg.asset(
        key=CUSTOMER_NOTIFICATIONS,
        deps=[SNAPSHOT],
        group_name=CUSTOMERS_GROUP,
        kinds={"python"},
        description="Messages each order's customer at the moments that matter, once each "
        f"(ledger: customer_notifications). Events on: {events}.",
    )
    def customer_notifications(messaging: CustomerMessaging, clock: PipelineClock) -> dg.MaterializeResult:
        notifier = messaging.notifier(config)
        if notifier is None:
            return dg.MaterializeResult(metadata={"enabled": False})
        result = notifier.run(clock.now())
        return dg.MaterializeResult(metadata={"enabled": True, **round_metadata(result)})

    return customer_notifications


def failure_rate_check(config: Config) -> dg.AssetChecksDefinition:
    limit = load_notify_settings(config).max_failure_rate

    @dg.asset_check(
        asset=CUSTOMER_NOTIFICATIONS,
        name=FAILURE_RATE_CHECK,
        description=f"At most {limit:.0%} of the messages of the last 24 h failed or could not be sent "
        "(notifications.max_failure_rate).",
    )
    def customer_message_failure_rate(warehouse: WarehouseResource, clock: PipelineClock) -> dg.AssetCheckResult:
        with warehouse.engine.connect() as conn:
            if not ledger.exists(conn):
                return dg.AssetCheckResult(passed=True, metadata={"messages": 0})
            counts = ledger.status_counts(conn, clock.now() - CHECK_WINDOW)
        per_status = counts.groupby("status")["messages"].sum()
        failed = int(per_status.get(ledger.FAILED, 0) + per_status.get(ledger.INVALID, 0))
        tried = failed + int(per_status.get(ledger.SENT, 0))
        rate = failed / tried if tried else 0.0
        return dg.AssetCheckResult(
            passed=rate <= limit,
            metadata={"failure_rate": round(rate, 4), "failed": failed, "tried": tried, "threshold": limit},
        )

    return customer_message_failure_rate
