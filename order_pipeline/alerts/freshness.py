"""Source freshness for the alerts: how old each source's newest data is, against its SLA
(the `freshness:` section).

A source's age is measured from the newest `updated_at` the pipeline has loaded from it (kept
in `pipeline_state` as `watermark:<entity>`), so a WMS whose sync went silent shows up even
when every pipeline run succeeds. The carrier feed is fresh when Kuaidi100 answered (by poll
or push) within its SLA, or when no parcel is waiting for an answer.

This is "the source produced data recently". The Dagster freshness checks and policies on the
raw assets (`assets.checks`) measure something else, "the asset ran recently"; see there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd
import sqlalchemy as sa

from order_pipeline.alerts.settings import CARRIER, SourceSla
from order_pipeline.carrier.store import due_waybills
from order_pipeline.contract.schema import pipeline_state, raw_tracking
from order_pipeline.domain.times import utc
from order_pipeline.warehouse.state import newest_update_key


@dataclass(frozen=True)
class SourceAge:
    sla: SourceSla
    newest: datetime | None  # newest data (or carrier answer); None: never loaded
    stale: bool

    @property
    def source(self) -> str:
        return self.sla.source


def source_ages(conn: sa.Connection, slas: Sequence[SourceSla], now: datetime) -> list[SourceAge]:
    keys = [newest_update_key(s.source) for s in slas if s.source != CARRIER]
    marks = (
        dict(
            conn.execute(
                sa.select(pipeline_state.c.key, pipeline_state.c.value).where(pipeline_state.c.key.in_(keys))
            ).all()
        )
        if keys
        else {}
    )
    out = []
    for sla in slas:
        if sla.source == CARRIER:
            newest, waiting = _carrier(conn, now)
            stale = waiting and (newest is None or newest < now - sla.max_age)
        else:
            value = marks.get(newest_update_key(sla.source))
            newest = utc(pd.Timestamp(value).to_pydatetime()) if value else None  # stored as ISO text
            stale = newest is None or newest < now - sla.max_age
        out.append(SourceAge(sla, newest, bool(stale)))
    return out


def _carrier(conn: sa.Connection, now: datetime) -> tuple[datetime | None, bool]:
    """The newest successful Kuaidi100 answer, and whether any parcel still waits for one."""
    t = raw_tracking
    newest = conn.execute(sa.select(sa.func.max(t.c.polled_at)).where(t.c.poll_error.is_(None))).scalar()
    # Waiting: an unsigned waybill of a live order, i.e. one the poller would ask about at any interval.
    waiting = not due_waybills(conn, now, timedelta(0), 1).empty
    return (utc(newest) if newest is not None else None), waiting
