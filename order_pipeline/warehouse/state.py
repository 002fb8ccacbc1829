"""What the pipeline remembers between runs, in `pipeline_state`: the one place its keys are named."""

from __future__ import annotations

from datetime import datetime
from typing import overload

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from order_pipeline.contract.schema import pipeline_state

BATCH = "batch"  # the counter every load, unify and publish draws its batch number from
UNIFIED_BATCH = "unified_batch"  # the last batch `unified_orders` was brought up to
PUBLISHED_BATCH = "published_batch"  # the last batch the published tables were brought up to
PUBLISHED_STAGE_COUNTS = "published_stage_counts"  # orders per stage in the snapshot, JSON
NEWEST_UPDATE_PREFIX = "watermark:"  # + source: the newest `updated_at` loaded (freshness, the board)


def high_water_mark_key(entity: str) -> str:
    """Where a source's read position is kept: the watermark its next incremental read starts from."""
    return f"hwm:{entity}"


def reconciled_key(entity: str) -> str:
    """When a source was last known equal to its raw table: reconciled, or fully loaded (ISO time)."""
    return f"reconciled:{entity}"


def newest_update_key(entity: str) -> str:
    return NEWEST_UPDATE_PREFIX + entity


@overload
def get_state(conn: sa.Connection, key: str, default: str) -> str: ...
@overload
def get_state(conn: sa.Connection, key: str, default: None = None) -> str | None: ...
def get_state(conn: sa.Connection, key: str, default: str | None = None) -> str | None:
    value = conn.execute(sa.select(pipeline_state.c.value).where(pipeline_state.c.key == key)).scalar()
    return default if value is None else value


def set_state(conn: sa.Connection, key: str, value: str, now: datetime) -> None:
    conn.execute(pipeline_state.delete().where(pipeline_state.c.key == key))
    conn.execute(pipeline_state.insert().values(key=key, value=value, updated_at=now))


def next_batch(conn: sa.Connection, now: datetime) -> int:
    """A new load batch number, taken inside the transaction that writes the batch.

    One UPDATE takes the counter's row lock (SQLite: the write lock) until the caller
    commits, so concurrent loads get distinct numbers and commit in number order:
    `unified_orders` never sees batch N+1 before batch N. The counter row is created
    first if missing, with ON CONFLICT DO NOTHING: two first loads racing on PostgreSQL
    would otherwise both insert it, and one would fail.
    """
    s = pipeline_state
    dialect_insert = sqlite_insert if conn.dialect.name == "sqlite" else postgresql_insert
    conn.execute(dialect_insert(s).values(key=BATCH, value="0", updated_at=now).on_conflict_do_nothing())
    bumped = (
        s.update()
        .where(s.c.key == BATCH)
        .values(value=sa.cast(sa.cast(s.c.value, sa.Integer) + 1, sa.Text), updated_at=now)
        .returning(s.c.value)
    )
    return int(conn.execute(bumped).scalar_one())


def current_batch(conn: sa.Connection) -> int:
    return int(get_state(conn, BATCH, "0"))
