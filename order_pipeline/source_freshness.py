"""How old each source's newest data is, against its SLA (the `freshness:` section).

A source's age is measured from the newest `updated_at` the pipeline has loaded from it (kept
in `pipeline_state` as `watermark:<entity>`), so a WMS whose sync went silent shows up even
when every pipeline run succeeds. The carrier feed is fresh when Kuaidi100 answered (by poll
or push) within its SLA, or when no parcel is waiting for an answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import pandas as pd
import sqlalchemy as sa

from .alert_settings import CARRIER, SourceSla
from .schema import RAW_TABLES, pipeline_state, raw_tracking

SIGNED = 3


@dataclass(frozen=True)
class SourceAge:
    sla: SourceSla
    newest: datetime | None  # newest data (or carrier answer); None: never loaded
    stale: bool

    @property
    def source(self) -> str:
        return self.sla.source


def source_ages(conn: sa.Connection, slas: Sequence[SourceSla], now: datetime) -> list[SourceAge]:
    keys = [f"watermark:{s.source}" for s in slas if s.source != CARRIER]
    marks = dict(conn.execute(sa.select(pipeline_state.c.key, pipeline_state.c.value)
                              .where(pipeline_state.c.key.in_(keys))).all()) if keys else {}
    out = []
    for sla in slas:
        if sla.source == CARRIER:
            newest, waiting = _carrier(conn)
            stale = waiting and (newest is None or newest < now - sla.max_age)
        else:
            value = marks.get(f"watermark:{sla.source}")
            newest = _utc(value) if value else None
            stale = newest is None or newest < now - sla.max_age
        out.append(SourceAge(sla, newest, bool(stale)))
    return out


def _carrier(conn: sa.Connection) -> tuple[datetime | None, bool]:
    t, s, o = raw_tracking, RAW_TABLES["shipments"], RAW_TABLES["orders"]
    newest = conn.execute(sa.select(sa.func.max(t.c.polled_at)).where(t.c.poll_error.is_(None))).scalar()
    unsigned = (sa.select(s.c.waybill_no)
                .select_from(s.outerjoin(t, t.c.waybill_no == s.c.waybill_no).outerjoin(o, o.c.order_no == s.c.order_no))
                .where(sa.or_(t.c.waybill_no.is_(None),
                              sa.and_(t.c.is_signed.is_(False), sa.func.coalesce(t.c.state, -1) != SIGNED)))
                .where(sa.or_(o.c.status.is_(None), o.c.status != "cancelled")).limit(1))
    waiting = conn.execute(unsigned).first() is not None
    return (_utc(newest) if newest is not None else None), waiting


def _utc(value) -> datetime:
    ts = pd.Timestamp(value)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()
