"""When a customer may be messaged: quiet hours and the business day, in the business's zone."""

from __future__ import annotations

from datetime import datetime, time, timedelta

from order_pipeline.domain.times import utc, zone


def quiet_until(now: datetime, tz: str, window: tuple[time, time] | None) -> datetime | None:
    """The end of the quiet window `now` falls in (UTC), or None when a message may go now.

    A window may cross midnight (21:00-08:00) or not (12:00-14:00); its start is quiet, its end is not."""
    if window is None:
        return None
    start, end = window
    local = utc(now).astimezone(zone(tz))
    t = local.time().replace(tzinfo=None)
    crosses = start > end
    inside = (t >= start or t < end) if crosses else (start <= t < end)
    if not inside:
        return None
    day = local.date() if (not crosses or t < end) else local.date() + timedelta(days=1)
    return utc(datetime.combine(day, end, tzinfo=zone(tz)))


def day_start(now: datetime, tz: str) -> datetime:
    """Midnight of the business day `now` falls in (UTC): the daily cap counts from it."""
    local = utc(now).astimezone(zone(tz))
    return utc(datetime.combine(local.date(), time(0), tzinfo=zone(tz)))


def next_morning(now: datetime, tz: str, window: tuple[time, time] | None) -> datetime:
    """The first time on the next business day a message may go: the quiet window's end, or midnight."""
    local = utc(now).astimezone(zone(tz))
    morning = window[1] if window is not None and window[0] > window[1] else time(0)
    return utc(datetime.combine(local.date() + timedelta(days=1), morning, tzinfo=zone(tz)))
