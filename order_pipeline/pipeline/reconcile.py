"""Reconcile a raw table with its source: find the rows an incremental load cannot see, and reload them.

A load by high-water mark misses a row whose `updated_at` went backwards (a restored backup, a
clock set back, a bulk fix that kept the old times), and order lines changed without their
order. Reconciliation reads the whole source, validates it as a load does, and compares row
fingerprints with the raw table bucket by bucket (`domain.fingerprints`); the rows that differ
are written with a new batch, so `unified_orders` recomputes their orders. Rows the source no
longer has are counted and kept: deleting is left to a full refresh.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from order_pipeline.contract.canonical import SOURCE_ENTITIES
from order_pipeline.contract.config import SourceConfig
from order_pipeline.contract.schema import BATCH, RAW_TABLES
from order_pipeline.domain.fingerprints import BUCKETS, differences
from order_pipeline.domain.validation import record_keys, validate
from order_pipeline.pipeline.loading import read_source, touch_orders_left
from order_pipeline.pipeline.rejects import clear_rejects
from order_pipeline.warehouse.frames import read_frame, replace_keys
from order_pipeline.warehouse.state import get_state, next_batch, reconciled_key, set_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconcileResult:
    entity: str
    compared: int  # source rows that passed validation
    buckets: int  # key buckets whose digests differed
    reloaded: int  # rows written again because the warehouse had them wrong or not at all
    only_in_warehouse: int  # stored rows the source no longer has (left for a full refresh)
    batch: int | None
    seconds: float

    @property
    def metadata(self) -> dict:
        return {
            "reconciled_rows": self.reloaded,
            "reconcile_buckets_differing": self.buckets,
            "rows_only_in_warehouse": self.only_in_warehouse,
            "reconcile_seconds": round(self.seconds, 3),
        }


def last_reconciled(wh: sa.Engine, entity: str) -> str | None:
    with wh.connect() as conn:
        return get_state(conn, reconciled_key(entity))


def reconcile_source(wh: sa.Engine, src: sa.Engine, sc: SourceConfig, now: datetime) -> ReconcileResult:
    started = time.perf_counter()
    entity = SOURCE_ENTITIES[sc.entity]
    table = RAW_TABLES[entity.name]
    good, rejects = validate(entity, read_source(src, sc), sc.timezone, sc.columns)
    times = [c.name for c in entity.columns if c.kind in ("datetime", "date")]
    with wh.connect() as conn:
        stored = read_frame(conn, sa.select(*(table.c[c] for c in entity.column_names)), times)
    found = differences(entity, good, stored)
    # A stored row whose source row is now rejected is not gone: pipeline_rejects names it.
    only = found.only_stored
    gone = int((~record_keys(only, list(entity.key)).isin(set(rejects["record_key"]))).sum()) if len(only) else 0
    changed = good.loc[found.changed].reset_index(drop=True)
    batch = None
    with wh.begin() as conn:
        if len(changed):
            batch = next_batch(conn, now)
            changed[BATCH] = batch
            touch_orders_left(conn, table, entity, changed, batch)
            replace_keys(conn, table, changed, entity.key)
            clear_rejects(conn, entity.name, record_keys(changed, entity.key))
        set_state(conn, reconciled_key(entity.name), now.isoformat(), now)
    result = ReconcileResult(
        entity.name, len(good), found.buckets, len(changed), gone, batch, time.perf_counter() - started
    )
    log.log(
        logging.WARNING if result.reloaded else logging.INFO,
        "reconciled %s: %d of %d rows differed from the source and were reloaded (%d of %d key buckets differed); "
        "%d stored rows are no longer in the source (a full refresh removes them)",
        entity.name,
        result.reloaded,
        result.compared,
        result.buckets,
        BUCKETS,
        result.only_in_warehouse,
    )
    return result
