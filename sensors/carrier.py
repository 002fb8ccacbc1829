"""The carrier feed: a poll schedule on its own SLA, and pushed answers made visible to automation.

Kuaidi100 pushes land in `raw_tracking` through the web hook, outside any Dagster run. The push
sensor notices them (the newest push batch moved), records a materialization of `raw_tracking`
for the UI and lineage, and asks for the downstream run itself (unified, published, customer
messages), rather than leaving it to the next automation tick. A push run still waiting in the
queue will read every push stored before it starts, so while one waits no other is asked for.
"""

from __future__ import annotations

from datetime import timedelta

import dagster as dg
import sqlalchemy as sa

from assets.carrier import RAW_TRACKING
from order_pipeline.contract.schema import BATCH, raw_tracking
from resources.warehouse import WarehouseResource
from sensors.jobs import CARRIER_POLL_JOB, CARRIER_PUSH_JOB, DOWNSTREAM

TRIGGER_TAG = "order_pipeline/trigger"
PUSH_TRIGGER = "carrier_push"
_WAITING = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED]

POLL_SCHEDULE = "carrier_poll"
PUSH_SENSOR = "carrier_push_received"


def poll_cron(interval: timedelta) -> str:
    """A cron that fires every `interval` (minutes dividing an hour, or hours dividing a day)."""
    minutes = int(interval.total_seconds() // 60)
    if 0 < minutes < 60 and 60 % minutes == 0:
        return f"*/{minutes} * * * *"
    hours = minutes // 60
    if minutes % 60 == 0 and 0 < hours <= 24 and 24 % hours == 0:
        return "0 0 * * *" if hours == 24 else f"0 */{hours} * * *"
    return "0 * * * *"  # anything else: hourly; the asset polls only the waybills that are due


def carrier_poll_schedule(interval: timedelta, timezone: str) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name=POLL_SCHEDULE,
        cron_schedule=poll_cron(interval),
        execution_timezone=timezone,
        job_name=CARRIER_POLL_JOB,  # one run: the poll and what follows it
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Polls Kuaidi100 for the waybills not heard of for {interval} (the carrier's update SLA).",
    )


# A push is already stored when the sensor sees it; what waits is the downstream run. 10 s rather
# than the daemon's 5 s floor: each tick costs the daemon about as much as a source tick.
PUSH_INTERVAL_SECONDS = 10


def carrier_push_sensor(interval: int = PUSH_INTERVAL_SECONDS) -> dg.SensorDefinition:
    @dg.sensor(
        name=PUSH_SENSOR,
        job_name=CARRIER_PUSH_JOB,
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Records a raw_tracking materialization when Kuaidi100 pushed new answers, and runs what "
        "follows it.",
    )
    def _sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource):
        with warehouse.engine.connect() as conn:
            newest = conn.execute(
                sa.select(sa.func.max(raw_tracking.c[BATCH])).where(raw_tracking.c.via == "push")
            ).scalar()
        if newest is None:
            return dg.SkipReason("no Kuaidi100 push received yet")
        if context.cursor and int(context.cursor) >= int(newest):
            return dg.SkipReason(f"no Kuaidi100 push since batch {context.cursor}")
        waiting = context.instance.get_runs(
            filters=dg.RunsFilter(tags={TRIGGER_TAG: PUSH_TRIGGER}, statuses=_WAITING), limit=1
        )
        requests = (
            []
            if waiting
            else [
                dg.RunRequest(
                    run_key=f"carrier-push-batch-{newest}",
                    asset_selection=list(DOWNSTREAM),
                    tags={TRIGGER_TAG: PUSH_TRIGGER},
                )
            ]
        )
        return dg.SensorResult(
            run_requests=requests,
            asset_events=[dg.AssetMaterialization(RAW_TRACKING, metadata={"via": "push", "batch": int(newest)})],
            cursor=str(newest),
        )

    return _sensor
