"""Rows that break the source contract, kept in `pipeline_rejects` with their reason."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import pandas as pd
import sqlalchemy as sa

from order_pipeline.contract.schema import pipeline_rejects
from order_pipeline.warehouse.frames import delete_keys, read_keyed, replace_keys


def record_rejects(conn: sa.Connection, source: str, rejects: pd.DataFrame, now: datetime) -> int:
    """Upsert rejects by (source, key, reason): a row that stays bad is one reject, with first and last seen."""
    if rejects.empty:
        return 0
    frame = rejects[["record_key", "reason", "raw_row"]].drop_duplicates(["record_key", "reason"]).copy()
    r = pipeline_rejects
    keys = frame["record_key"].unique().tolist()
    query = sa.select(r.c.record_key, r.c.reason, r.c.first_seen).where(r.c.source == source)
    existing = read_keyed(conn, query, r.c.record_key, keys, ["first_seen"])
    frame = frame.merge(existing, on=["record_key", "reason"], how="left")
    frame["first_seen"] = frame["first_seen"].fillna(pd.Timestamp(now))
    frame["last_seen"] = pd.Timestamp(now)
    frame["source"] = source
    replace_keys(conn, pipeline_rejects, frame, ["source", "record_key", "reason"])
    return len(frame)


def open_rejects(conn: sa.Connection, sources: Sequence[str]) -> dict[str, set[str]]:
    """The record keys each source has rejects open for."""
    r = pipeline_rejects
    rows = conn.execute(sa.select(r.c.source, r.c.record_key).where(r.c.source.in_(list(sources))))
    keys: dict[str, set[str]] = {source: set() for source in sources}
    for source, key in rows:
        keys[source].add(key)
    return keys


def clear_rejects(conn: sa.Connection, source: str, good_keys: pd.Series) -> None:
    """Rows that now arrive in good shape are no longer rejected.

    Only the source's open rejects are looked at, so a 2M-row load does not
    become a 2M-key delete.
    """
    open_keys = open_rejects(conn, [source])[source]
    settled = good_keys[good_keys.isin(open_keys)] if open_keys else good_keys.iloc[:0]
    if len(settled):
        keys = pd.DataFrame({"source": source, "record_key": settled.astype(str).to_numpy()}).drop_duplicates()
        delete_keys(conn, pipeline_rejects, keys, ["source", "record_key"])


def clear_fixed_keyless(
    conn: sa.Connection, source: str, read: Callable[[], pd.Series], rejected: pd.Series, full: bool
) -> None:
    """Rejects of rows that came without their key, for rows that have since been fixed or are gone.

    `read` gives the keyless names of every row this load read (see validation.keyless_names), asked
    only when such rejects are open; `rejected` the names this load rejected. A full load read every
    row, so a keyless reject it did not meet again is settled; an incremental one settles those it
    read again in good shape.
    """
    r = pipeline_rejects
    query = sa.select(r.c.record_key).where(r.c.source == source, r.c.record_key.like("row:%"))
    open_keyless = set(conn.execute(query).scalars())
    if not open_keyless:
        return
    settled = open_keyless - set(rejected) if full else (open_keyless & set(read())) - set(rejected)
    if settled:
        keys = pd.DataFrame({"source": source, "record_key": sorted(settled)})
        delete_keys(conn, pipeline_rejects, keys, ["source", "record_key"])
