"""How far a published order got, and its carrier events in time order: read alike by both pages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from order_pipeline.domain.times import as_utc
from order_pipeline.web.rendering.i18n import STAGES

STAGE_TIME_COLUMNS = {s: f"{s}_at" for s in STAGES}

# The times sorted on are never empty in the published tables; the floor only gives the key one type.
_NO_TIME = datetime.min.replace(tzinfo=UTC)


def sort_instant(value: datetime | str | None) -> datetime:
    """A stored time as a sort key: its instant in UTC, an empty one first."""
    return as_utc(value) or _NO_TIME


def reached_index(stage: str) -> int:
    """The position of `stage` on the happy path, or -1 for an order off it (cancelled, exception)."""
    return STAGES.index(stage) if stage in STAGES else -1


def stage_reached(order: Mapping, code: str) -> bool:
    """The order is at or past stage `code`, or has that stage's time (a cancelled order keeps the ones it got)."""
    return STAGES.index(code) <= reached_index(order["stage"]) or order.get(STAGE_TIME_COLUMNS[code]) is not None


def newest_first(events: Sequence[Mapping]) -> list[Mapping]:
    """Carrier events by their instant, newest first, whatever zone each time was written in."""
    return sorted(events, key=lambda e: sort_instant(e["event_at"]), reverse=True)
