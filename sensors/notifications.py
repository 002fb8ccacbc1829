"""The notification sensor: runs `customer_notifications` when a held message or a retry falls due.

New orders and stage changes reach the asset with each publish; what waits (quiet hours, a
daily cap, a vendor's flow control) has no publish to wake it. The sensor reads one value, the
earliest `due_at` of the waiting rows, and requests a run for it; the run key (the due time and
the ten minutes the tick falls in) makes that one run, or one more ten minutes later if the
message is somehow still waiting.
"""

import dagster as dg

from assets.notifications import CUSTOMER_NOTIFICATIONS
from order_pipeline.contract.config import Config
from order_pipeline.notify import ledger
from order_pipeline.notify.settings import load_notify_settings
from resources.warehouse import PipelineClock, WarehouseResource
from sensors.jobs import CUSTOMER_MESSAGES_JOB

NOTIFY_SENSOR = "customer_messages_due"
INTERVAL_SECONDS = 60


def notification_sensor(config: Config) -> dg.SensorDefinition:
    enabled = load_notify_settings(config).enabled

    @dg.sensor(
        name=NOTIFY_SENSOR,
        job_name=CUSTOMER_MESSAGES_JOB,
        minimum_interval_seconds=INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Sends customer messages held for quiet hours or waiting for a retry, when they fall due.",
    )
    def customer_messages_due(warehouse: WarehouseResource, clock: PipelineClock):
        if not enabled:
            return dg.SkipReason("customer messages are off: the config has no `notifications:` section")
        now = clock.now()
        with warehouse.engine.connect() as conn:
            if not ledger.exists(conn):
                return dg.SkipReason("no customer message recorded yet")
            due = ledger.next_due(conn)
        if due is None:
            return dg.SkipReason("no customer message is waiting")
        if due > now:
            return dg.SkipReason(f"the next waiting message falls due at {due.isoformat()}")
        bucket = now.replace(minute=now.minute - now.minute % 10, second=0, microsecond=0)
        return dg.RunRequest(
            run_key=f"customer-messages@{due.isoformat()}@{bucket:%H%M}", asset_selection=[CUSTOMER_NOTIFICATIONS]
        )

    return customer_messages_due
