"""The source-change sensor: each tick asks every watched source only for its newest `updated_at`.

A tick runs one `SELECT MAX(<updated-at column>)` against each source (an index lookup when the
column is indexed, as the config asks) and reads the high-water mark the last load stored in the
warehouse. When they differ, the sensor asks for a run of that source's raw asset, unless one is
in flight (`order_pipeline.sources.watch` decides). A failed load stored no mark, so the next tick asks
again; Dagster's run retries (`dagster/max_retries`) re-run it first. Run keys name the value
and the failed run they follow, so a restarted daemon never launches the same load twice.
Every `reconcile_every` the sensor also asks for a run that compares the whole source with its
raw table (a load alone finds no row whose `updated_at` went backwards), unless a load did so.
A change is one run: the raw load and everything downstream of it (`unified_orders`, the
published tables, the customer messages, the alerts) are requested together, so the change
reaches the snapshot and the people it concerns without waiting for an automation tick to start
a second run, or for the alert sensor's.

What the tick saw is recorded for the UI (`order_pipeline.sources.health` keeps the cursor): a
source with nothing new gets a "checked, unchanged" observation every few minutes, each source's
`source_reachable` check is reported when it stops or starts answering, and a source unreadable
for a minute raises the data team's "source unreachable" alert, resolved when it answers again.
Its tags and skip reasons name the source's time zone: watermarks are in the source's local time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import dagster as dg

from assets.common import raw_asset_key
from assets.source_checks import reachable, unreachable
from order_pipeline.contract.canonical import SOURCE_ENTITIES
from order_pipeline.contract.config import Config, SourceConfig
from order_pipeline.contract.schema import raw_table_name
from order_pipeline.sources.checks import first_line, newest_update
from order_pipeline.sources.health import SensorMemory
from order_pipeline.sources.watch import LastRun, Load, RunState, next_load, reconcile_due
from order_pipeline.warehouse.state import get_state, high_water_mark_key, reconciled_key
from resources.alerting import AlertingResource
from resources.warehouse import PipelineClock, SourceDatabases, WarehouseResource
from sensors.jobs import DOWNSTREAM, SOURCE_CHANGE_JOB

# The daemon's floor: a source's change is seen within 5 s. An idle tick is one MAX() on the source
# (an index lookup) and one row of the warehouse.
INTERVAL_SECONDS = 5
RECONCILE_EVERY = timedelta(hours=1)  # the config's default, `pipeline.reconcile_every`
SOURCE_SENSOR = "source_changes"
SOURCE_TAG = "order_pipeline/source"
WATERMARK_TAG = "order_pipeline/watermark"
WATERMARK_ZONE_TAG = "order_pipeline/watermark_timezone"
# Dagster re-runs a failed source run this often before the sensor asks for a new one
# (the instance's `run_retries` must be enabled: deploy/dagster.yaml, runner.INSTANCE_YAML).
MAX_RETRIES = 3
MAX_RETRIES_TAG = "dagster/max_retries"
WILL_RETRY_TAG = "dagster/will_retry"  # set by Dagster on a failed run it is going to retry
_FAILED = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def sensor_name(entity: str) -> str:
    return f"{entity}_source_changed"


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


@dataclass(frozen=True)
class Watched:
    """A source with a watermark and the sources re-read with it (order lines, with orders)."""

    sc: SourceConfig
    followers: tuple[str, ...] = ()

    @property
    def keys(self) -> list[dg.AssetKey]:
        return [raw_asset_key(self.sc.entity), *(raw_asset_key(f) for f in self.followers)]


def _decide(
    w: Watched,
    context: dg.SensorEvaluationContext,
    newest: str | None,
    warehouse: WarehouseResource,
    now: datetime,
    reconcile_every: timedelta,
) -> Load | str:
    """What one source needs this tick, its newest `updated_at` being `newest`."""
    entity = w.sc.entity
    with warehouse.engine.connect() as conn:
        loaded = get_state(conn, high_water_mark_key(entity))
        reconciled = get_state(conn, reconciled_key(entity))
    # Due only once loaded: the first load reads everything anyway.
    due = loaded is not None and reconcile_due(reconciled, now, reconcile_every)
    last = last_run(context.instance, entity)
    return next_load(entity, newest, loaded, last, (reconciled or "never") if due else None)


def _request(w: Watched, decision: Load, newest: str) -> dg.RunRequest:
    tags = {
        SOURCE_TAG: w.sc.entity,
        WATERMARK_TAG: newest,
        WATERMARK_ZONE_TAG: w.sc.timezone,  # the source's own local time, as its column holds it
        MAX_RETRIES_TAG: str(MAX_RETRIES),
    }
    run_config = {}
    if decision.reconcile:
        entities = [w.sc.entity, *w.followers]
        run_config = {"ops": {raw_table_name(k): {"config": {"reconcile": True}} for k in entities}}
    return dg.RunRequest(
        run_key=decision.run_key, asset_selection=[*w.keys, *DOWNSTREAM], tags=tags, run_config=run_config
    )


def _described(w: Watched) -> str:
    entity = SOURCE_ENTITIES[w.sc.entity]
    column = w.sc.columns[entity.watermark or ""]
    keys = ", ".join(k.to_user_string() for k in w.keys)
    return f"{entity.system.upper()} MAX({column}) of {w.sc.table or 'its query'} → {keys}"


def _checked(w: Watched, newest: str | None, why: str, now: datetime) -> dg.AssetObservation:
    """The record that the pipeline looked at the source and found nothing to load (and why)."""
    return dg.AssetObservation(
        raw_asset_key(w.sc.entity),
        description=f"checked, unchanged: {why}",
        metadata={
            "checked": "unchanged",
            "checked_at": dg.MetadataValue.timestamp(now),
            "newest_source_update": newest or "(no rows)",
            "source_timezone": w.sc.timezone,
        },
    )


def source_changes_sensor(
    watched: Sequence[Watched],
    interval: int = INTERVAL_SECONDS,
    reconcile_every: timedelta = RECONCILE_EVERY,
    name: str = SOURCE_SENSOR,
    config: Config | None = None,
) -> dg.SensorDefinition:
    """One sensor for the watched sources: each tick asks each for its newest `updated_at`.

    One sensor rather than one per source, because a tick's cost is mostly the daemon's and the
    code server's own (about 0.13 s of CPU), whatever it reads: six sensors every 5 s kept the
    daemon at 7.7 % of a core with nothing changing. A source that cannot be read does not hold
    up the others: their runs are asked for. It fails its `source_reachable` check at once, which
    turns its raw asset red, and after `UNREACHABLE_AFTER` it alerts the data team (with `config`),
    once per cool-down until it answers again, which resolves the alert.
    """
    for w in watched:
        if SOURCE_ENTITIES[w.sc.entity].watermark is None:
            raise ValueError(f"{w.sc.entity} has no updated-at column to watch; it follows its parent")
    described = "; ".join(_described(w) for w in watched)

    @dg.sensor(
        name=name,
        job_name=SOURCE_CHANGE_JOB,
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Loads a source, and what follows it, when its newest updated_at moved: {described}.",
    )
    def _sensor(
        context: dg.SensorEvaluationContext,
        sources: SourceDatabases,
        warehouse: WarehouseResource,
        clock: PipelineClock,
        alerting: AlertingResource,
    ):
        now = clock.now()
        memory = SensorMemory.parse(context.cursor)
        requests, said, events = [], [], []
        for w in watched:
            entity, tz = w.sc.entity, w.sc.timezone
            try:
                newest = newest_update(sources.engine(entity), w.sc)
            except Exception as e:  # one unreachable source must not hold up the others
                if memory.failed(entity, first_line(e), now):
                    events.append(unreachable(entity, e))
                said.append(f"{entity}: cannot be read ({first_line(e)})")
                continue
            recovered = memory.read(entity)
            decision = _decide(w, context, newest, warehouse, now, reconcile_every)
            if not isinstance(decision, Load):
                said.append(f"{entity}: {decision} ({tz})")
                if memory.observe_due(entity, now):
                    events += [_checked(w, newest, decision, now), reachable(entity, newest, tz)]
                elif recovered:
                    events.append(reachable(entity, newest, tz))
                continue
            if recovered:
                events.append(reachable(entity, newest, tz))
            if decision.run_key == memory.asked.get(entity):  # asked for on an earlier tick, its run not seen yet
                said.append(f"{entity}: waiting for the run of {decision.run_key}")
            else:
                assert newest is not None  # a load is only asked for a source with rows
                requests.append(_request(w, decision, newest))
                memory.asked[entity] = decision.run_key
                said.append(f"{entity}: load requested ({decision.run_key}, {tz})")
        if config is not None:
            _alert_unreachable(context, config, alerting, memory, now)
        context.log.info("; ".join(said))
        return dg.SensorResult(
            run_requests=requests,
            skip_reason=None if requests else "; ".join(said),
            asset_events=events,
            cursor=memory.dump(),
        )

    return _sensor


def _alert_unreachable(
    context: dg.SensorEvaluationContext,
    config: Config,
    alerting: AlertingResource,
    memory: SensorMemory,
    now: datetime,
) -> None:
    """Tell the ledger which sources have been unreadable long enough, when that changed or a
    re-notification is due; send what it queued. A failure here is tried again next tick."""
    down = memory.unreachable(now)
    if not memory.alert_sync_due(down, now):
        return
    try:
        alerts, dispatcher = alerting.runtime(config)
        result = alerts.sources_unreachable(down, now)
        dispatcher.drain(now)
    except Exception as e:  # the loads go on; the alert is asked for again on the next tick
        context.log.warning(f"could not alert on unreachable sources {sorted(down)}: {first_line(e)}")
        return
    memory.alerts_synced(down, result.next_due)


def source_change_sensor(
    sc: SourceConfig,
    followers: Sequence[str] = (),
    interval: int = INTERVAL_SECONDS,
    reconcile_every: timedelta = RECONCILE_EVERY,
    config: Config | None = None,
) -> dg.SensorDefinition:
    """A sensor for one source alone (named `<entity>_source_changed`), as a test watches one."""
    watched = [Watched(sc, tuple(followers))]
    return source_changes_sensor(watched, interval, reconcile_every, sensor_name(sc.entity), config)


def source_sensors(
    sources: dict[str, SourceConfig],
    interval: int = INTERVAL_SECONDS,
    reconcile_every: timedelta = RECONCILE_EVERY,
    config: Config | None = None,
) -> list[dg.SensorDefinition]:
    """The one sensor of every source with a watermark; sources without one ride along with their parent."""
    watched = []
    for name, sc in sources.items():
        if SOURCE_ENTITIES[name].watermark is None:
            continue
        followers = tuple(
            f for f, e in SOURCE_ENTITIES.items() if e.watermark is None and f in sources and name == "orders"
        )
        watched.append(Watched(sc, followers))
    return [source_changes_sensor(watched, interval, reconcile_every, config=config)] if watched else []
