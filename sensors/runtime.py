"""What the sensors share within one code-server process: engines and the alerting runtime.

A sensor tick re-creates its resources, but an engine (with its connection pool) and the parsed
alert settings are worth keeping between ticks: that is most of what keeps an idle tick cheap.
"""

from __future__ import annotations

import sqlalchemy as sa

from order_pipeline.alerts.dispatch import Dispatcher, build_channels
from order_pipeline.alerts.evaluation import Alerting
from order_pipeline.contract.config import Config, SourceConfig
from order_pipeline.warehouse.engine import Warehouse, driver_url

# Attempts per message beyond the first, within one drain. A sensor tick makes one attempt and
# leaves a failure to a later tick (the queue row's retry time, which the alert sensor's cursor
# wakes up for): sleeping between attempts would hold the tick, and a few unreachable channels
# could outlast Dagster's 60 s sensor timeout, leaving their claimed messages stuck for a cool-down.
TICK_RETRIES = 0
# `order-pipeline run` sends once and exits, with no later tick to retry for it: it retries a
# retryable failure within the drain, waiting 1 s, 2 s, 4 s.
CLI_RETRIES = 3

_warehouses: dict[str, sa.Engine] = {}
_sources: dict[str, sa.Engine] = {}
_runtimes: dict[tuple[str, str, int], tuple[Alerting, Dispatcher]] = {}


def warehouse_engine(url: str) -> sa.Engine:
    if url not in _warehouses:
        wh = Warehouse(url)
        wh.create_schema()
        _warehouses[url] = wh.engine
    return _warehouses[url]


def source_engine(sc: SourceConfig) -> sa.Engine:
    """The engine of a source: the driver `resources.warehouse.SourceDatabase` uses (`driver_url`),
    and a pooled connection is checked before use, since it sits idle between ticks."""
    url = driver_url(sc.url.resolve())
    if url not in _sources:
        _sources[url] = sa.create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
    return _sources[url]


def alerting_runtime(
    config: Config, warehouse: str | sa.Engine, *, retries: int = TICK_RETRIES
) -> tuple[Alerting, Dispatcher]:
    """The alerting of `config` and the dispatcher of its channels.

    `warehouse` is a URL, whose engine and runtime are kept for the process (the sensors), or an
    engine the caller owns, for which both are built afresh (the CLI). `retries`: see TICK_RETRIES.
    """
    if isinstance(warehouse, sa.Engine):
        return _build(config, warehouse, retries)
    key = (str(config.path), warehouse, retries)
    if key not in _runtimes:
        _runtimes[key] = _build(config, warehouse_engine(warehouse), retries)
    return _runtimes[key]


def _build(config: Config, engine: sa.Engine, retries: int) -> tuple[Alerting, Dispatcher]:
    alerting = Alerting(config, engine)
    return alerting, Dispatcher(engine, build_channels(alerting.settings, engine), retries=retries)


def forget() -> None:
    """Drop every cached engine and runtime (tests that swap warehouses call this)."""
    for engine in (*_warehouses.values(), *_sources.values()):
        engine.dispose()
    _warehouses.clear()
    _sources.clear()
    _runtimes.clear()
