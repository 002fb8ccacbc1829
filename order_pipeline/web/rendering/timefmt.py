"""Times are stored in UTC and shown in the business's time zone."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo


@lru_cache(maxsize=16)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def as_utc(value: datetime | str | None) -> datetime | None:
    """An aware UTC datetime; naive values (SQLite) and ISO strings are read as UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def local_time(value: datetime | str | None, tz: str, fmt: str = "%Y-%m-%d %H:%M") -> str:
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


def age_text(delta: timedelta | None) -> str:
    """'3 天 4 小时', '2 小时 5 分', '12 分钟' (staff board, Chinese)."""
    if delta is None:
        return "—"
    minutes = int(delta.total_seconds() // 60)
    if minutes < 0:
        return "刚刚"
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days} 天 {hours} 小时"
    if hours:
        return f"{hours} 小时 {mins} 分"
    return f"{mins} 分钟"
