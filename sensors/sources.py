"""Source-change sensors: one per source, asking it only for its newest `updated_at`.

A tick runs one `SELECT MAX(<updated-at column>)` against the source (an index lookup when the
column is indexed, as the config asks) and reads the high-water mark the last load stored in the
warehouse. When they differ, the sensor asks for a run of that raw asset, unless one is in flight
(`order_pipeline.sources.watch` decides). A failed load stored no mark, so the next tick asks
again; Dagster's run retries (`dagster/max_retries`) re-run it first. Run keys name the value
and the failed run they follow, so a restarted daemon never launches the same load twice.
Every `reconcile_every` the sensor also asks for a run that compares the whole source with its
raw table (a load alone finds no row whose `updated_at` went backwards), unless a load did so.
A change is one run: the raw load and everything downstream of it (`unified_orders`, the
published tables, the customer messages) are requested together, so the change reaches the
snapshot without waiting for an automation tick to start a second run.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import dagster as dg
import sqlalchemy as sa

from assets.common import raw_asset_key
from assets.notifications import CUSTOMER_NOTIFICATIONS
from assets.published import EVENTS, PARCELS, SNAPSHOT
from assets.unified import UNIFIED_ORDERS
from order_pipeline.contract.canonical import SOURCE_ENTITIES
from order_pipeline.contract.config import SourceConfig
from order_pipeline.contract.schema import raw_table_name
from order_pipeline.sources.watch import LastRun, Load, RunState, next_load, reconcile_due
from order_pipeline.warehouse.state import get_state, high_water_mark_key, reconciled_key
from resources.warehouse import PipelineClock, SourceDatabases, WarehouseResource

# The daemon's floor: a source's change is seen within 5 s. An idle tick is one MAX() on the source
# (an index lookup) and one row of the warehouse.
INTERVAL_SECONDS = 5
RECONCILE_EVERY = timedelta(hours=1)  # the config's default, `pipeline.reconcile_every`
SOURCE_TAG = "order_pipeline/source"
WATERMARK_TAG = "order_pipeline/watermark"
# Dagster re-runs a failed source run this often before the sensor asks for a new one
# (the instance's `run_retries` must be enabled: deploy/dagster.yaml, runner.INSTANCE_YAML).
MAX_RETRIES = 3
MAX_RETRIES_TAG = "dagster/max_retries"
WILL_RETRY_TAG = "dagster/will_retry"  # set by Dagster on a failed run it is going to retry
_FAILED = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
# What a source change flows into, materialized in the same run as the load.
DOWNSTREAM = (UNIFIED_ORDERS, SNAPSHOT, PARCELS, EVENTS, CUSTOMER_NOTIFICATIONS)


def sensor_name(entity: str) -> str:
    return f"{entity}_source_changed"


def newest_update(engine: sa.Engine, sc: SourceConfig) -> str | None:
    """The source's newest value of its watermark column, as text (None: the source is empty)."""
    entity = SOURCE_ENTITIES[sc.entity]
    assert entity.watermark is not None  # only a source with an updated-at column is watched
    column = engine.dialect.identifier_preparer.quote(sc.columns[entity.watermark])
    with engine.connect() as conn:
        value = conn.execute(sa.text(f"SELECT MAX({column}) FROM {sc.selectable()}")).scalar()
    return None if value is None else str(value)


def last_run(instance: dg.DagsterInstance, entity: str) -> LastRun | None:
    """The newest run of the source's loads: the sensor's, or Dagster's retry of one (it keeps the tags)."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags={SOURCE_TAG: entity}), limit=1)
    if not runs:
        return None
    run = runs[0]
    if run.status == dg.DagsterRunStatus.SUCCESS:
        state = RunState.SUCCEEDED
    elif run.status in _FAILED:
        state = RunState.FAILED
    else:
        state = RunState.RUNNING
    return LastRun(run.run_id, run.tags.get(WATERMARK_TAG), state, run.tags.get(WILL_RETRY_TAG) == "true")


def source_change_sensor(
    sc: SourceConfig,
    followers: Sequence[str] = (),
    interval: int = INTERVAL_SECONDS,
    reconcile_every: timedelta = RECONCILE_EVERY,
) -> dg.SensorDefinition:
    """The sensor for one source with a watermark; `followers` are sources re-read with it (order lines)."""
    entity = SOURCE_ENTITIES[sc.entity]
    if entity.watermark is None:
        raise ValueError(f"{sc.entity} has no updated-at column to watch; it follows its parent")
    keys = [raw_asset_key(sc.entity), *(raw_asset_key(f) for f in followers)]
    column = sc.columns[entity.watermark]

    @dg.sensor(
        name=sensor_name(sc.entity),
        target=[*keys, *DOWNSTREAM],
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Asks the {entity.system.upper()} for MAX({column}) of {sc.table or 'its query'} and loads "
            f"{', '.join(k.to_user_string() for k in keys)} when it moved."
        ),
    )
    def _sensor(
        context: dg.SensorEvaluationContext,
        sources: SourceDatabases,
        warehouse: WarehouseResource,
        clock: PipelineClock,
    ):
        newest = newest_update(sources.engine(sc.entity), sc)
        with warehouse.engine.connect() as conn:
            loaded = get_state(conn, high_water_mark_key(sc.entity))
            reconciled = get_state(conn, reconciled_key(sc.entity))
        # Due only once loaded: the first load reads everything anyway.
        due = loaded is not None and reconcile_due(reconciled, clock.now(), reconcile_every)
        last = last_run(context.instance, sc.entity)
        decision = next_load(sc.entity, newest, loaded, last, (reconciled or "never") if due else None)
        if not isinstance(decision, Load):
            return dg.SkipReason(decision)
        assert newest is not None  # a load is only asked for a source with rows
        if decision.run_key == context.cursor:  # asked for on the last tick, its run not seen yet
            return dg.SkipReason(f"waiting for the run of {decision.run_key}")
        tags = {SOURCE_TAG: sc.entity, WATERMARK_TAG: newest, MAX_RETRIES_TAG: str(MAX_RETRIES)}
        run_config = {}
        if decision.reconcile:
            run_config = {"ops": {raw_table_name(k): {"config": {"reconcile": True}} for k in [sc.entity, *followers]}}
        request = dg.RunRequest(
            run_key=decision.run_key, asset_selection=[*keys, *DOWNSTREAM], tags=tags, run_config=run_config
        )
        return dg.SensorResult(run_requests=[request], cursor=decision.run_key)

    return _sensor


def source_sensors(
    sources: dict[str, SourceConfig], interval: int = INTERVAL_SECONDS, reconcile_every: timedelta = RECONCILE_EVERY
) -> list[dg.SensorDefinition]:
    """One sensor per source with a watermark; sources without one ride along with their parent."""
    out = []
    for name, sc in sources.items():
        if SOURCE_ENTITIES[name].watermark is None:
            continue
        followers = [f for f, e in SOURCE_ENTITIES.items() if e.watermark is None and f in sources and name == "orders"]
        out.append(source_change_sensor(sc, followers, interval, reconcile_every))
    return out
