"""When a watched source needs a load: what its sensor decides each tick, as a pure function.

The sensor compares the source's newest `updated_at` with the high-water mark the last
successful load stored in the warehouse, not with what it last asked for: a load that failed
stored no mark, so the change is still there to load on the next tick. What the sensor asked
for is kept only to tell a run in flight (or being retried by Dagster) from one that ended.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from order_pipeline.domain.times import parse_instant


class RunState(Enum):
    RUNNING = "running"  # queued, starting, started or being cancelled
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # failed or cancelled


@dataclass(frozen=True)
class LastRun:
    """The newest run the sensor requested for a source (a Dagster retry of it counts as it)."""

    run_id: str
    watermark: str | None  # the newest `updated_at` it was asked to load up to
    state: RunState
    retry_coming: bool = False  # Dagster's run retries will launch it again


@dataclass(frozen=True)
class Load:
    """A run to request. `run_key` is new for every run that should happen, so none is dropped
    as a duplicate, and the same for a tick repeated after a daemon restart, so none runs twice."""

    run_key: str
    reconcile: bool = False


def reconcile_due(last: str | None, now: datetime, every: timedelta) -> bool:
    """Is a source's reconciliation due, its last one (or full load) having been at `last` (ISO time)?"""
    return last is None or now - parse_instant(last, "UTC") >= every


def next_load(
    entity: str,
    newest: str | None,
    loaded: str | None,
    last: LastRun | None,
    reconcile_due: str | None = None,
) -> Load | str:
    """A load to request, or why not.

    `newest` is the source's newest `updated_at`, `loaded` the warehouse's high-water mark,
    `reconcile_due` the last reconciliation's time (or "never") when one is due, else None.
    """
    if newest is None:
        return f"the {entity} source has no rows yet"
    if last is not None and last.state is RunState.RUNNING:
        return f"a load of {entity} is in flight (run {last.run_id})"
    unloaded = newest != loaded
    if last is not None and last.state is RunState.FAILED and (unloaded or reconcile_due):
        if last.retry_coming:
            return f"the load of {entity} failed; Dagster retries run {last.run_id}"
        # Keyed by the failed run: a new key per failure, the same one for a repeated tick.
        return Load(f"{entity}:{newest}:after:{last.run_id}", reconcile=not unloaded)
    if unloaded:
        if last is not None and last.state is RunState.SUCCEEDED and last.watermark == newest:
            # The load ran and kept another mark (the newest value did not parse): asking
            # again would load nothing new, every tick.
            return f"the last load of {entity} read up to {loaded}; {newest} is no readable time (see pipeline_rejects)"
        return Load(f"{entity}:{newest}")
    if reconcile_due is not None:
        return Load(f"{entity}:{newest}:reconcile:{reconcile_due}", reconcile=True)
    return f"no new rows in {entity} since {loaded}"
