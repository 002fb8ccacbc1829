"""The code location: assembles assets, checks, sensors and resources from the config.

`dagster dev` (workspace.yaml) and `dagster definitions validate` load `defs` from here; the
config file comes from $ORDER_PIPELINE_CONFIG, ./order_pipeline.yaml, or the demo's (see
`contract.config.find_config`). Loading parses and validates the config and touches nothing
else: no source, warehouse or channel is contacted and no secret is kept, so one unreachable
system fails only the runs and ticks that need it (`order-pipeline check` reports each one).

How data moves: a sensor per source loads its raw asset when the source's newest
`updated_at` moves; the carrier is polled on its own cadence (and for new parcels);
`unified_orders` and the published tables follow by declarative automation (eager).
The alert sensor evaluates the SLA rules and source freshness on the published snapshot
and sends what is due; run failures alert the data team. `customer_notifications` follows the
snapshot and messages the customers; the notification sensor sends what waited (quiet hours).
"""

from __future__ import annotations

import warnings

import dagster as dg

from assets.alerts import ORDER_ALERTS, order_alerts_asset
from assets.carrier import RAW_TRACKING, carrier_tracking_asset
from assets.checks import freshness_policies, rule_checks
from assets.common import OWNERS, described, storage_kind
from assets.notifications import CUSTOMER_NOTIFICATIONS, customer_notifications_asset, failure_rate_check
from assets.published import EVENTS, PARCELS, SNAPSHOT, published_checks, published_tracking_tables
from assets.source_checks import reachable_check_key, source_reachable_checks
from assets.sources import raw_source_asset
from assets.subscriptions import CARRIER_SUBSCRIPTIONS, carrier_subscriptions_asset
from assets.unified import UNIFIED_ORDERS, unified_orders_asset
from order_pipeline.alerts.channels.config import validate_channel
from order_pipeline.alerts.settings import AlertSettings, load_alert_settings
from order_pipeline.contract.canonical import SOURCE_ENTITIES
from order_pipeline.contract.config import Config, Secret, find_config, load_config
from order_pipeline.demo.company import use_demo_secrets
from resources.alerting import AlertingResource
from resources.carrier import Kuaidi100Client
from resources.messaging import CustomerMessaging
from resources.warehouse import PipelineClock, SourceConnection, SourceDatabases, WarehouseResource
from sensors.alerts import alert_sensor, run_failure_sensor, run_success_sensor
from sensors.automation import automation_sensor
from sensors.carrier import carrier_poll_schedule, carrier_push_sensor
from sensors.jobs import named_jobs
from sensors.notifications import notification_sensor
from sensors.sources import source_sensors

PIPELINE_JOB = "order_pipeline"
# Assets that follow their inputs as soon as those change.
FOLLOWERS = {
    RAW_TRACKING,
    CARRIER_SUBSCRIPTIONS,
    UNIFIED_ORDERS,
    SNAPSHOT,
    PARCELS,
    EVENTS,
    CUSTOMER_NOTIFICATIONS,
    ORDER_ALERTS,
}


def _setting(secret: Secret) -> str | dg.EnvVar:
    """A config value for a resource field: secrets stay environment variables all the way down."""
    return dg.EnvVar(secret.env) if secret.env else (secret.value or "")


def _policies(freshness: dict[dg.AssetKey, dg.FreshnessPolicy], owners: dict[dg.AssetKey, list[str]]):
    """The cross-cutting attributes: followers run eagerly, raw assets and the snapshot carry the
    cadence the pipeline looks at them on, and a raw asset's source owners own it with the data team."""

    def apply(spec: dg.AssetSpec) -> dg.AssetSpec:
        if spec.key in FOLLOWERS:
            spec = spec.replace_attributes(automation_condition=dg.AutomationCondition.eager())
        if spec.key in freshness:
            spec = spec.replace_attributes(freshness_policy=freshness[spec.key])
        return spec.replace_attributes(owners=[*OWNERS, *(o for o in owners.get(spec.key, ()) if o not in OWNERS)])

    return apply


def _source_owners(alerts: AlertSettings) -> dict[dg.AssetKey, list[str]]:
    """Who is told when a source goes stale (its `freshness:` owner groups) owns its raw asset too."""
    return {dg.AssetKey(s.asset_key): [f"team:{group}" for group in s.owner] for s in alerts.freshness}


def _resources(config: Config, now: str | None) -> dict[str, dg.ConfigurableResource]:
    """Keyed by the parameter names the assets and sensors take them by."""
    carrier = config.carrier
    warehouse = WarehouseResource(url=_setting(config.warehouse_url), entry=config.warehouse_entry)
    return {
        "warehouse": warehouse,
        "clock": PipelineClock(now_at=now),
        "sources": SourceDatabases(
            sources={
                name: SourceConnection(url=sc.url.value or "", url_env=sc.url.env or "")
                for name, sc in config.sources.items()
            }
        ),
        "kuaidi100": Kuaidi100Client(
            endpoint=carrier.endpoint,
            customer=_setting(carrier.customer),
            key=_setting(carrier.key),
            callback_url=carrier.callback_url or "",
            # Only a config that subscribes makes its runs need the salt's variable.
            salt=_setting(carrier.push_salt) if carrier.callback_url else "",
            timeout_seconds=carrier.timeout.total_seconds(),
            retries=carrier.retries,
        ),
        "alerting": AlertingResource(warehouse=warehouse),
        "messaging": CustomerMessaging(warehouse=warehouse),
    }


def alert_settings(config: Config) -> AlertSettings:
    """The `rules:`, `alerts:`, `freshness:` and `channels:` sections, checked as loading checks them:
    a mistake raises ConfigError naming the file, the entry and the fix."""
    alerts = load_alert_settings(config)
    for name, spec in alerts.channel_specs.items():
        validate_channel(name, spec, config.path)
    return alerts


def build_definitions(config: Config, now: str | None = None) -> dg.Definitions:
    """The definitions of `config`; `now` pins the clock (ISO time) for a reproducible run."""
    carrier = config.carrier
    alerts = alert_settings(config)
    watched = [sc for sc in config.sources.values() if SOURCE_ENTITIES[sc.entity].watermark is not None]
    assets = [raw_source_asset(sc, config.path, config.reconcile_every) for sc in config.sources.values()]
    assets += [
        carrier_tracking_asset(
            carrier.poll_interval, carrier.max_polls_per_run, carrier.max_consecutive_failures, carrier.push_silence
        ),
        unified_orders_asset({name: sc.columns for name, sc in config.sources.items()}, carrier.transit_days),
        published_tracking_tables,
        customer_notifications_asset(config),
        order_alerts_asset(config),
    ]
    if carrier.callback_url:  # pushes need somewhere to go: without it, polling is the only path
        assets.append(carrier_subscriptions_asset(carrier.max_polls_per_run, carrier.max_consecutive_failures))
    # Only the URL's scheme is kept, to name the tables' kind.
    storage = storage_kind(config.warehouse_url.resolve())
    assets = dg.map_asset_specs(lambda spec: described(spec, storage), assets)
    freshness = freshness_policies(list(config.sources), config.reconcile_every, carrier.poll_interval)
    assets = dg.map_asset_specs(_policies(freshness, _source_owners(alerts)), assets)
    with warnings.catch_warnings():  # code references are a beta API: the UI's link to each asset's source
        warnings.simplefilter("ignore", dg.BetaWarning)
        assets = dg.with_source_code_references(assets)
    # A full run (the job, from the UI or a schedule) loads the sources side by side, a process each;
    # the runs a change asks for are small and run their steps in one process, which saves a process
    # start and a code import per step (about half of such a run).
    # The job leaves the alerts to whoever runs it: `order-pipeline run` evaluates and sends them
    # itself (printing what went out), a run from the UI leaves them to the alert sensor.
    job = dg.define_asset_job(
        PIPELINE_JOB,
        selection=dg.AssetSelection.all() - dg.AssetSelection.assets(ORDER_ALERTS),
        description="Extract every source, poll the carrier, unify, publish and message the customers.",
        executor_def=dg.multiprocess_executor,
    )
    return dg.Definitions(
        assets=assets,
        asset_checks=[
            *published_checks(config.reject_threshold),
            *rule_checks(alerts.rules, config.timezone),
            failure_rate_check(config),
            *source_reachable_checks(watched),
        ],
        jobs=[job, *named_jobs([reachable_check_key(sc.entity) for sc in watched])],
        schedules=[carrier_poll_schedule(carrier.poll_interval, config.timezone)],
        sensors=[
            *source_sensors(config.sources, reconcile_every=config.reconcile_every, config=config),
            carrier_push_sensor(),
            automation_sensor(),
            alert_sensor(config),
            run_failure_sensor(config),
            run_success_sensor(config),
            notification_sensor(config),
        ],
        resources=_resources(config, now),
        executor=dg.in_process_executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    """Loaded lazily by Dagster's tools, so importing this module reads no file."""
    path, is_demo = find_config()
    if is_demo:
        dg.get_dagster_logger().info(f"no config given: loading the demo's, {path}")
        # The demo's carrier is the loopback stand-in, whose key is no secret.
        use_demo_secrets()
    return build_definitions(load_config(path))
