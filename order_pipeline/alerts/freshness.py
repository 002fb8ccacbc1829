"""Source freshness for the alerts: how old each source's newest data is, against its SLA
(the `freshness:` section).

A source's age is measured from the newest `updated_at` the pipeline has loaded from it (kept
in `pipeline_state` as `watermark:<entity>`), so a WMS whose sync went silent shows up even
when every pipeline run succeeds. A rejected row is no sign of life: loading keeps rows that
break the contract out of the watermark, and a child row rejected later for naming an order
the ERP does not have is left out here. The carrier feed is fresh when Kuaidi100 answered (by poll
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
from order_pipeline.contract.canonical import SOURCE_ENTITIES
from order_pipeline.contract.schema import RAW_TABLES, pipeline_rejects, pipeline_state, raw_tracking
from order_pipeline.domain.times import utc
from order_pipeline.pipeline.unify import ORPHAN_REASON, orphan_reason
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
            if newest is not None and sla.source in ORPHAN_REASON:
                newest = _without_orphans(conn, sla.source, newest)
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


def _without_orphans(conn: sa.Connection, source: str, newest: datetime) -> datetime | None:
    """`newest`, unless a row rejected for naming an unknown order is that new: then the newest of the others.

    Loading takes such a row's time before `unify` finds its order missing. The first query
    joins only the open rejects; the scan behind it runs only while an orphan is the newest row.
    """
    entity, raw, r = SOURCE_ENTITIES[source], RAW_TABLES[source], pipeline_rejects
    [key] = entity.key
    assert entity.watermark is not None  # sources without one have no freshness SLA
    updated = raw.c[entity.watermark]
    orphan = sa.and_(r.c.source == source, r.c.reason == orphan_reason(source), r.c.record_key == raw.c[key])
    newest_orphan = conn.execute(sa.select(sa.func.max(updated)).select_from(raw.join(r, orphan))).scalar()
    if newest_orphan is None or utc(newest_orphan) < newest:
        return newest
    rest = conn.execute(sa.select(sa.func.max(updated)).where(~sa.exists().where(orphan))).scalar()
    return utc(rest) if rest is not None else None
