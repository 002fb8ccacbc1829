"""The code location: assembles assets, checks, sensors and resources from the config.

`dagster dev` (workspace.yaml) and `dagster definitions validate` load `defs` from
here; the config file comes from $ORDER_PIPELINE_CONFIG or ./order_pipeline.yaml.
"""

from __future__ import annotations

import os

import dagster as dg

from assets.carrier import carrier_tracking_asset
from assets.common import CLOCK, KUAIDI100, WAREHOUSE, source_resource_key
from assets.published import published_checks, published_tracking_tables
from assets.sources import raw_source_asset
from assets.unified import unified_orders_asset
from resources.kuaidi100 import Kuaidi100Client
from resources.warehouse import PipelineClock, SourceDatabase, WarehouseResource

from .config import Config, Secret, load_config

PIPELINE_JOB = "order_pipeline"
NOW_ENV = "ORDER_PIPELINE_NOW"


def _setting(secret: Secret) -> str | dg.EnvVar:
    """A config value for a resource field: secrets stay environment variables all the way down."""
    return dg.EnvVar(secret.env) if secret.env else (secret.value or "")


def build_definitions(config: Config) -> dg.Definitions:
    carrier = config.carrier
    assets = [raw_source_asset(sc) for sc in config.sources.values()]
    assets += [
        carrier_tracking_asset(carrier.poll_interval, carrier.max_polls_per_run),
        unified_orders_asset(list(config.sources), carrier.transit_days),
        published_tracking_tables,
    ]
    resources = {
        WAREHOUSE: WarehouseResource(url=_setting(config.warehouse_url)),
        CLOCK: PipelineClock(now_iso=os.environ.get(NOW_ENV)),
        KUAIDI100: Kuaidi100Client(
            endpoint=carrier.endpoint, customer=_setting(carrier.customer), key=_setting(carrier.key),
            timeout_seconds=carrier.timeout.total_seconds(), retries=carrier.retries, timezone=config.timezone,
        ),
        **{source_resource_key(name): SourceDatabase(url=_setting(sc.url)) for name, sc in config.sources.items()},
    }
    job = dg.define_asset_job(PIPELINE_JOB, selection=dg.AssetSelection.all(),
                              description="Extract every source, poll the carrier, unify and publish.")
    return dg.Definitions(
        assets=assets,
        asset_checks=published_checks(config.reject_threshold),
        jobs=[job],
        resources=resources,
    )


@dg.definitions
def defs() -> dg.Definitions:
    """Loaded lazily by Dagster's tools, so importing this module reads no file."""
    return build_definitions(load_config())
