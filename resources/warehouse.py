"""Dagster resources for the databases: the warehouse (target), the sources, and the pipeline's clock."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import ClassVar

import dagster as dg
import sqlalchemy as sa
from sqlalchemy.exc import InterfaceError, OperationalError

from order_pipeline.domain.times import parse_instant
from order_pipeline.sources.engines import source_engine
from order_pipeline.warehouse.engine import Warehouse, WarehouseUnreachable


class WarehouseResource(dg.ConfigurableResource):
    """The target database. SQLite by default, PostgreSQL by URL (`url_env` in the config).

    The engine, its connection pool and the schema check are kept for the process: a sensor
    tick builds its resources afresh, and an idle tick should cost one query, not a reconnect.
    """

    url: str
    entry: str = "warehouse.url"  # where the config sets `url`, named when it cannot be reached
    _engines: ClassVar[dict[str, sa.Engine]] = {}

    @property
    def engine(self) -> sa.Engine:
        if self.url not in self._engines:
            warehouse = Warehouse(self.url)
            try:
                warehouse.create_schema()
            except (InterfaceError, OperationalError) as e:
                warehouse.engine.dispose()
                raise WarehouseUnreachable(self.url, self.entry, e) from None
            self._engines[self.url] = warehouse.engine
        return self._engines[self.url]

    @classmethod
    def dispose_all(cls) -> None:
        """Close every kept engine (a test that swaps warehouses)."""
        for engine in cls._engines.values():
            engine.dispose()
        cls._engines.clear()


class SourceConnection(dg.Config):
    """Where a source's URL comes from: inline, or the environment variable the config names.

    Not a Dagster `EnvVar`: those are resolved for every resource when a run starts, so one unset
    variable would fail every source's step. Read here, it fails only the step of its own source
    (whose check names the config entry and the fix first).
    """

    url: str = ""
    url_env: str = ""


class SourceDatabases(dg.ConfigurableResource):
    """The source systems' databases, read-only, by source name (orders, payments, ...)."""

    sources: dict[str, SourceConnection]

    def engine(self, name: str) -> sa.Engine:
        source = self.sources[name]
        url = os.environ.get(source.url_env) if source.url_env else source.url
        if not url:
            raise RuntimeError(f"environment variable {source.url_env} is not set (the URL of source {name})")
        return source_engine(url)


class PipelineClock(dg.ConfigurableResource):
    """The pipeline's notion of now. Pinned (`now: 2026-11-25T10:00:00+08:00`) for reproducible runs and tests."""

    now_at: str | None = None  # ISO time; naive means UTC

    def now(self) -> datetime:
        return parse_instant(self.now_at, "UTC") if self.now_at else datetime.now(UTC)
