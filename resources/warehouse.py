"""Dagster resources for the databases: the warehouse (target) and the sources."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from pydantic import PrivateAttr

from order_pipeline.warehouse.engine import Warehouse, driver_url


class WarehouseResource(dg.ConfigurableResource):
    """The target database. SQLite by default, PostgreSQL by URL (`url_env` in the config)."""

    url: str
    _warehouse: Warehouse | None = PrivateAttr(default=None)

    @property
    def engine(self) -> sa.Engine:
        if self._warehouse is None:
            self._warehouse = Warehouse(self.url)
            self._warehouse.create_schema()
        return self._warehouse.engine


class SourceDatabase(dg.ConfigurableResource):
    """One source system's database, read-only."""

    url: str
    _engine: sa.Engine | None = PrivateAttr(default=None)

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = sa.create_engine(driver_url(self.url))
        return self._engine


class PipelineClock(dg.ConfigurableResource):
    """The pipeline's notion of now. Pinned (`now: 2026-11-25T10:00:00+08:00`) for reproducible runs and tests."""

    now_iso: str | None = None

    def now(self) -> datetime:
        if self.now_iso:
            ts = pd.Timestamp(self.now_iso)
            return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()
        return datetime.now(UTC)
