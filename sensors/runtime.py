"""What the sensors share within one code-server process: engines and the alerting runtime.

A sensor tick re-creates its resources, but an engine (with its connection pool) and the parsed
alert settings are worth keeping between ticks: that is most of what keeps an idle tick cheap.
"""

from __future__ import annotations

import sqlalchemy as sa

from order_pipeline.alerting import Alerting
from order_pipeline.config import Config, SourceConfig
from order_pipeline.warehouse import Warehouse

from .dispatch import Dispatcher, build_channels

_warehouses: dict[str, sa.Engine] = {}
_sources: dict[str, sa.Engine] = {}
_runtimes: dict[tuple[str, str], tuple[Alerting, Dispatcher]] = {}


def warehouse_engine(url: str) -> sa.Engine:
    if url not in _warehouses:
        wh = Warehouse(url)
        wh.create_schema()
        _warehouses[url] = wh.engine
    return _warehouses[url]


def source_engine(sc: SourceConfig) -> sa.Engine:
    url = sc.url.resolve()
    if url not in _sources:
        _sources[url] = sa.create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
    return _sources[url]


def alerting_runtime(config: Config, warehouse_url: str) -> tuple[Alerting, Dispatcher]:
    key = (str(config.path), warehouse_url)
    if key not in _runtimes:
        engine = warehouse_engine(warehouse_url)
        alerting = Alerting(config, engine)
        _runtimes[key] = alerting, Dispatcher(engine, build_channels(alerting.settings, engine))
    return _runtimes[key]


def forget() -> None:
    """Drop every cached engine and runtime (tests that swap warehouses call this)."""
    for engine in (*_warehouses.values(), *_sources.values()):
        engine.dispose()
    _warehouses.clear()
    _sources.clear()
    _runtimes.clear()
