"""The code location: assembles assets, checks, sensors and resources from the config.

`dagster dev` (workspace.yaml) and `dagster definitions validate` load `defs` from
here; the config file comes from $ORDER_PIPELINE_CONFIG or ./order_pipeline.yaml.

How data moves: a sensor per source loads its raw asset when the source's newest
`updated_at` moves; the carrier is polled on its own cadence (and for new parcels);
`unified_orders` and the published tables follow by declarative automation (eager).
The alert sensor evaluates the SLA rules and source freshness on the published snapshot
and sends what is due; run failures alert the data team.
"""

from __future__ import annotations

import os
from functools import partial

import dagster as dg

from assets.carrier import RAW_TRACKING, carrier_tracking_asset
from assets.checks import freshness_checks, freshness_policies, rule_checks
from assets.common import CLOCK, KUAIDI100, WAREHOUSE, source_resource_key
from assets.published import EVENTS, PARCELS, SNAPSHOT, published_checks, published_tracking_tables
from assets.sources import raw_source_asset
from assets.unified import UNIFIED_ORDERS, unified_orders_asset
from order_pipeline.alerts.dispatch import build_channels
from order_pipeline.alerts.settings import load_alert_settings
from order_pipeline.contract.config import Config, Secret, load_config
from resources.carrier import Kuaidi100Client
from resources.warehouse import PipelineClock, SourceDatabase, WarehouseResource
from sensors.alerts import alert_sensor, run_failure_sensor, run_success_sensor
from sensors.automation import automation_sensor, freshness_sensor
from sensors.carrier import carrier_poll_schedule, carrier_push_sensor
from sensors.runtime import CLI_RETRIES, alerting_runtime
from sensors.sources import source_sensors

PIPELINE_JOB = "order_pipeline"
NOW_ENV = "ORDER_PIPELINE_NOW"
# Assets that follow their inputs as soon as those change.
FOLLOWERS = {RAW_TRACKING, UNIFIED_ORDERS, SNAPSHOT, PARCELS, EVENTS}


def _setting(secret: Secret) -> str | dg.EnvVar:
    """A config value for a resource field: secrets stay environment variables all the way down."""
    return dg.EnvVar(secret.env) if secret.env else (secret.value or "")


def _policies(freshness: dict[dg.AssetKey, dg.FreshnessPolicy]):
    """One cross-cutting policy: followers run eagerly, raw assets carry their source's freshness SLA."""

    def apply(spec: dg.AssetSpec) -> dg.AssetSpec:
        if spec.key in FOLLOWERS:
            spec = spec.replace_attributes(automation_condition=dg.AutomationCondition.eager())
        if spec.key in freshness:
            spec = spec.replace_attributes(freshness_policy=freshness[spec.key])
        return spec

    return apply


def build_definitions(config: Config) -> dg.Definitions:
    carrier = config.carrier
    alerts = load_alert_settings(config)
    build_channels(alerts, None)  # a bad `channels:` entry fails here, at load time
    assets = [raw_source_asset(sc) for sc in config.sources.values()]
    assets += [
        carrier_tracking_asset(carrier.poll_interval, carrier.max_polls_per_run),
        unified_orders_asset(list(config.sources), carrier.transit_days),
        published_tracking_tables,
    ]
    assets = dg.map_asset_specs(_policies(freshness_policies(alerts.freshness)), assets)
    raw_keys = {dg.AssetKey(f"raw_{name}") for name in config.sources} | {RAW_TRACKING}
    fresh = freshness_checks(alerts.freshness, config.timezone, raw_keys)
    resources = {
        WAREHOUSE: WarehouseResource(url=_setting(config.warehouse_url)),
        CLOCK: PipelineClock(now_iso=os.environ.get(NOW_ENV)),
        KUAIDI100: Kuaidi100Client(
            endpoint=carrier.endpoint,
            customer=_setting(carrier.customer),
            key=_setting(carrier.key),
            timeout_seconds=carrier.timeout.total_seconds(),
            retries=carrier.retries,
        ),
        **{source_resource_key(name): SourceDatabase(url=_setting(sc.url)) for name, sc in config.sources.items()},
    }
    job = dg.define_asset_job(
        PIPELINE_JOB,
        selection=dg.AssetSelection.all(),
        description="Extract every source, poll the carrier, unify and publish.",
    )
    sensors = [
        *source_sensors(config.sources),
        carrier_push_sensor(),
        automation_sensor(),
        alert_sensor(config),
        run_failure_sensor(config),
        run_success_sensor(config),
    ]
    if fresh:
        sensors.append(freshness_sensor(fresh))
    return dg.Definitions(
        assets=assets,
        asset_checks=[*published_checks(config.reject_threshold), *rule_checks(alerts.rules, config.timezone), *fresh],
        jobs=[job],
        schedules=[carrier_poll_schedule(carrier.poll_interval, config.timezone)],
        sensors=sensors,
        resources=resources,
    )


# What `order-pipeline run` (order_pipeline.cli) evaluates and sends with, given the warehouse
# engine: the sensors' runtime, retrying within the drain since no later tick follows a CLI run.
alert_runtime = partial(alerting_runtime, retries=CLI_RETRIES)


@dg.definitions
def defs() -> dg.Definitions:
    """Loaded lazily by Dagster's tools, so importing this module reads no file."""
    return build_definitions(load_config())
