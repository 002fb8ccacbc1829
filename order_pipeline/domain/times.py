"""Times are stored in UTC and shown in the business's time zone: the one place that converts.

Naive values are UTC by convention (SQLite gives back what was written in UTC); a naive `now`
is refused instead, since a caller's naive `now` is usually local time.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd


@lru_cache(maxsize=16)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def utc(ts: datetime) -> datetime:
    """An aware UTC datetime; a naive one is UTC by convention."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def as_utc(value: datetime | str | None) -> datetime | None:
    """An aware UTC datetime; naive values and ISO strings are read as UTC; None, NaT and '' are None."""
    if value is None or value == "" or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    return utc(value)


def aware_utc(now: datetime) -> datetime:
    """`now` in UTC. A naive `now` is refused rather than read as UTC: it is usually local time."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return utc(now)


def utc_series(values: pd.Series) -> pd.Series:
    """A column of times as aware UTC timestamps; naive ones are UTC."""
    values = pd.to_datetime(values)
    if values.dt.tz is None:
        return values.dt.tz_localize("UTC")
    return values.dt.tz_convert("UTC")


def parse_instant(text: str, default_tz: str) -> datetime:
    """An ISO time as aware UTC; a naive one is read in `default_tz`. Raises ValueError."""
    ts = pd.Timestamp(text)
    if ts is pd.NaT:
        raise ValueError(f"{text!r} is not a time")
    ts = ts.tz_localize(default_tz) if ts.tzinfo is None else ts
    return ts.tz_convert("UTC").to_pydatetime()


def local_time(value: datetime | str | None, tz: str, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """`value` in the business's zone, or '' when there is none."""
    dt = as_utc(value)
    return dt.astimezone(zone(tz)).strftime(fmt) if dt else ""


def local_date(value: date | datetime | str | None, tz: str) -> str:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value.isoformat()
    return local_time(value, tz, "%Y-%m-%d")


def iso_local(value: datetime | str | None, tz: str) -> str:
    dt = as_utc(value)
    return dt.astimezone(zone(tz)).isoformat(timespec="seconds") if dt else ""


def age(since: datetime | str | None, now: datetime) -> timedelta | None:
    dt = as_utc(since)
    return now - dt if dt else None


def waited_text(delta: Any) -> str:
    """2小时15分, 3天4小时, 45分钟: how long, to the minute, in the largest two units."""
    if delta is None or pd.isna(delta):
        return "—"
    minutes = max(0, int(delta.total_seconds() // 60))
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days}天{hours}小时" if hours else f"{days}天"
    if hours:
        return f"{hours}小时{mins}分" if mins else f"{hours}小时"
    return f"{mins}分钟" if mins else "不到1分钟"
