"""Run the pipeline job in process against a Dagster instance, as the CLI does."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from order_pipeline.contract.config import Config
from order_pipeline.contract.schema import raw_table_name
from order_pipeline.definitions import PIPELINE_JOB, build_definitions
from sensors.alerts import step_failure_text
from sensors.sources import MAX_RETRIES, MAX_RETRIES_TAG

DAGSTER_HOME = "DAGSTER_HOME"
# Assets that take `full_refresh` from run config (see assets.common.LoadConfig).
FULL_REFRESH_OPS = ("unified_orders", "published_tracking_tables")


@dataclass(frozen=True)
class RunOutcome:
    success: bool
    run_id: str
    step_seconds: dict[str, float]
    failures: list[str]


# What a new instance home gets (deploy/dagster.yaml says the same for production, and why): the
# project's log lines reach each run's event log; the run queue starts one run at a time, within 2 s
# of its request, since runs write the same warehouse (a run from the CLI takes the
# warehouse's run lock instead: it does not pass through the queue); sensors tick on threads; and
# a failed source run is run again by Dagster's daemon (`order-pipeline ui`) before the source's
# sensor asks for a new one.
INSTANCE_YAML = f"""python_logs:
  managed_python_loggers: [order_pipeline]
  python_log_level: INFO
concurrency:
  runs:
    max_concurrent_runs: 1
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 2
sensors:
  use_threads: true
  num_workers: 4
run_retries:
  enabled: true
  max_retries: {MAX_RETRIES}
"""


def dagster_home(config: Config) -> Path:
    """$DAGSTER_HOME, or one under the data directory, so `order-pipeline ui` shows the CLI's runs."""
    home = Path(os.environ.setdefault(DAGSTER_HOME, str(config.data_dir / "dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    instance_yaml = home / "dagster.yaml"
    if not instance_yaml.exists():
        instance_yaml.write_text(INSTANCE_YAML, encoding="utf-8")
    return home


def dagster_instance(config: Config) -> dg.DagsterInstance:
    dagster_home(config)
    return dg.DagsterInstance.get()


def run_config(config: Config, full_refresh: bool) -> dict:
    if not full_refresh:
        return {}
    ops = [raw_table_name(name) for name in config.sources] + list(FULL_REFRESH_OPS)
    return {"ops": {op: {"config": {"full_refresh": True}} for op in ops}}


def run_pipeline(
    config: Config,
    instance: dg.DagsterInstance,
    *,
    now: str | None = None,
    full_refresh: bool = False,
    on_step: Callable[[str, float], None] | None = None,
) -> RunOutcome:
    job = build_definitions(config, now=now).resolve_job_def(PIPELINE_JOB)
    # The caller reports a failure of this run; Dagster's daemon must not re-run it later.
    result = job.execute_in_process(
        instance=instance,
        run_config=run_config(config, full_refresh),
        raise_on_error=False,
        tags={MAX_RETRIES_TAG: "0"},
    )
    steps: dict[str, float] = {}
    failures: list[str] = []
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.STEP_SUCCESS:
            step_key = event.step_key
            assert step_key is not None  # a step event always names its step
            steps[step_key] = event.step_success_data.duration_ms / 1000
            if on_step:
                on_step(step_key, steps[step_key])
        elif event.event_type == dg.DagsterEventType.STEP_FAILURE:
            failures.append(step_failure_text(event) or f"{event.step_key}: failed")
    return RunOutcome(result.success, result.run_id, steps, failures)
