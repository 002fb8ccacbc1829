"""The alert sensor, and the run-status sensors that alert the data team.

The alert sensor evaluates every rule and freshness SLA on the published snapshot, updates the
ledger, queues what is due and drains the queue. Its cursor remembers which published batch it
last evaluated and when something next falls due (a cool-down, an escalation, a retry, the
periodic re-evaluation for rules that become true with time): a tick with nothing to do reads
one row of `pipeline_state` and skips. Sending twice is prevented by the ledger, not by the
cursor, so a failed tick (its cursor not saved) is harmless. A message whose channel fails gets
one attempt per tick, never a wait within it: its retry time is among what the cursor waits for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import dagster as dg

from assets.alerts import ORDER_ALERTS, evaluation_metadata
from order_pipeline.alerts.dispatch import DrainResult
from order_pipeline.alerts.evaluation import Evaluation, run_entity, run_label
from order_pipeline.contract.config import Config
from resources.alerting import AlertingResource
from resources.warehouse import PipelineClock
from sensors.sources import SOURCE_TAG

ALERT_SENSOR = "alert_dispatch"
RUN_FAILURE_SENSOR = "run_failure_alerts"
RUN_SUCCESS_SENSOR = "run_success_resolves_alerts"
# A change's run evaluates and sends its alerts itself (assets.alerts); the sensor is for what time
# brings: rules that become true by waiting, cool-downs, escalations, retries.
INTERVAL_SECONDS = 30


@dataclass(frozen=True)
class AlertCursor:
    batch: str | None = None  # the published batch last evaluated
    evaluated_at: datetime | None = None
    due_at: datetime | None = None  # evaluate again at this time even if nothing was published

    @classmethod
    def parse(cls, text: str | None) -> AlertCursor:
        if not text:
            return cls()
        doc = json.loads(text)
        at = lambda k: datetime.fromisoformat(doc[k]) if doc.get(k) else None  # noqa: E731
        return cls(doc.get("batch"), at("evaluated_at"), at("due_at"))

    def dump(self) -> str:
        iso = lambda t: t.isoformat() if t else None  # noqa: E731
        return json.dumps({"batch": self.batch, "evaluated_at": iso(self.evaluated_at), "due_at": iso(self.due_at)})


def describe(ev: Evaluation, drained: DrainResult) -> str:
    breaching = ", ".join(f"{rule} {n}" for rule, n in ev.breaching.items())
    stale = [a.source for a in ev.sources if a.stale]
    text = f"evaluated at {ev.now.isoformat()}: {breaching}"
    if stale:
        text += f"; stale sources: {', '.join(stale)}"
    text += f"; queued {ev.queued}, delivered {drained.delivered}, failed {drained.failed}, waiting {drained.waiting}"
    return text


def alert_sensor(config: Config, interval: int = INTERVAL_SECONDS) -> dg.SensorDefinition:
    @dg.sensor(
        name=ALERT_SENSOR,
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Evaluates the SLA rules and source freshness on the published snapshot and sends the alerts "
        "that are due (ledger: order_alerts, attempts: alert_deliveries).",
    )
    def alert_dispatch(context: dg.SensorEvaluationContext, alerting: AlertingResource, clock: PipelineClock):
        now = clock.now()
        alerts, dispatcher = alerting.runtime(config)
        cursor = AlertCursor.parse(context.cursor)
        batch = alerts.published_batch()
        if batch is None:
            return dg.SkipReason("nothing published yet: the rules read order_tracking_snapshot")
        if batch == cursor.batch and cursor.evaluated_at and cursor.due_at and now < cursor.due_at:
            return dg.SkipReason(
                f"snapshot unchanged since {cursor.evaluated_at.isoformat()} and nothing due "
                f"before {cursor.due_at.isoformat()}"
            )
        ev = alerts.evaluate(now)
        drained = dispatcher.drain(now)
        due = now + alerts.settings.evaluate_every
        for t in (ev.next_due, alerts.queue_ready_at(now)):  # a cool-down, an escalation, a retry, a rate limit
            if t is not None:
                due = min(due, t)
        context.update_cursor(AlertCursor(batch, now, due).dump())
        context.log.info(describe(ev, drained))
        # No run to show for it: the tick records what it evaluated, queued and sent on order_alerts,
        # so the asset's history has every evaluation, whichever made it, and its counts plot.
        observed = dg.AssetObservation(
            ORDER_ALERTS, description=f"{ALERT_SENSOR} tick", metadata=evaluation_metadata(ev, drained)
        )
        return dg.SensorResult(skip_reason=describe(ev, drained), asset_events=[observed])

    return alert_dispatch


def step_failure_text(event: dg.DagsterEvent) -> str | None:
    """'<step>: <the user's exception>' of a step failure: the cause, not Dagster's wrapper around it."""
    error = event.step_failure_data.error if event.is_step_failure else None
    while error is not None and error.cause is not None:
        error = error.cause
    return None if error is None else f"{event.step_key}: {error.message.strip()}"


def _root_message(error) -> str | None:
    """The innermost cause of a serialized error: the user's exception, not Dagster's wrapper around it."""
    while error is not None and error.cause is not None:
        error = error.cause
    return error.message.strip() if error is not None else None


def _failure_text(context: dg.RunFailureSensorContext) -> str:
    """The first real error of a failed run: a step's, else the run's own, else the first engine event's.

    A run whose code could not load or whose worker died fails outside any step, with a run failure
    that says only "marked as failed from outside the execution context"; the cause (a ConfigError
    with its fix, a crash) is in the run's engine events.
    """
    for event in context.get_step_failure_events():
        text = step_failure_text(event)
        if text:
            return text
    failure = context.failure_event
    # The run's own error, when its failure carries one (JobFailureData.error).
    own = _root_message(getattr(failure.event_specific_data, "error", None))
    if own:
        return own
    for entry in context.instance.all_logs(context.dagster_run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = entry.dagster_event
        message = _root_message(event.engine_event_data.error) if event is not None else None
        if event is not None and message:
            return f"{event.message}: {message}" if event.message else message
    return failure.message or "the run failed"


def run_failure_sensor(config: Config) -> dg.SensorDefinition:
    @dg.run_failure_sensor(
        name=RUN_FAILURE_SENSOR,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="A failed run alerts the data team (alerts.run_failures_to).",
    )
    def run_failure_alerts(context: dg.RunFailureSensorContext, alerting: AlertingResource, clock: PipelineClock):
        now = clock.now()
        alerts, dispatcher = alerting.runtime(config)
        run = context.dagster_run
        keys = [k.to_user_string() for k in (run.asset_selection or ())]
        source = run.tags.get(SOURCE_TAG)
        alerts.run_failed(
            run_entity(run.job_name, keys, source),
            run_label(run.job_name, keys, source),
            run.run_id,
            _failure_text(context),
            now,
        )
        drained = dispatcher.drain(now)
        context.log.info(f"run {run.run_id} failed: alerted, {drained.delivered} delivered, {drained.failed} failed")

    return run_failure_alerts


def run_success_sensor(config: Config) -> dg.SensorDefinition:
    @dg.run_status_sensor(
        run_status=dg.DagsterRunStatus.SUCCESS,
        name=RUN_SUCCESS_SENSOR,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="A successful run resolves the failure alert of the same job or assets.",
    )
    def run_success_resolves_alerts(
        context: dg.RunStatusSensorContext, alerting: AlertingResource, clock: PipelineClock
    ):
        now = clock.now()
        alerts, dispatcher = alerting.runtime(config)
        run = context.dagster_run
        keys = [k.to_user_string() for k in (run.asset_selection or ())]
        result = alerts.run_succeeded(run.job_name, keys, now, run.tags.get(SOURCE_TAG))
        if result.resolved:
            dispatcher.drain(now)

    return run_success_resolves_alerts
