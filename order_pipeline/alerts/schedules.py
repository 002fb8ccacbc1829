"""When a group's status digest falls due: its schedule, as `alerts.digests` sets it, and its periods.

A schedule is a set of slots on the business's wall clock (`timezone:`), either fixed times of day
(`at: ["09:00", "16:00"]`) or every so often from midnight (`every: 1h`). The slot at or before
`now` starts the current period; its key, the slot in local ISO form ("2026-12-04T09:00+08:00"),
names the one digest of that period. Pure functions: no I/O, `now` is always given.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from order_pipeline.domain.times import utc, zone

DAY = timedelta(days=1)
ALL_ROLES = "all"  # `role: all`: a digest of every order's changes, whoever owns it


@dataclass(frozen=True)
class DigestSchedule:
    group: str  # the alert group told (alerts.groups or a built-in one)
    role: str | None  # the `responsible_role` whose orders it covers; None: every order
    at: tuple[time, ...] = ()  # times of day, sorted; or
    every: timedelta | None = None  # a length that divides a day, counted from local midnight

    def slots(self, day: date, tz: str) -> list[datetime]:
        """The slots of local `day`, as aware UTC times in order."""
        start = datetime.combine(day, time())
        if self.at:
            local = [datetime.combine(day, t) for t in self.at]
        else:
            assert self.every is not None  # the parser sets one of the two
            local = [start + k * self.every for k in range(DAY // self.every)]
        # Wall-clock times: in a zone with summer time a slot keeps its hour across the change.
        return [utc(t.replace(tzinfo=zone(tz))) for t in local]

    def period_start(self, now: datetime, tz: str) -> datetime:
        """The slot at or before `now`: the start of the current period (a slot at `now` is its own)."""
        today = utc(now).astimezone(zone(tz)).date()
        for day in (today, today - DAY, today - 2 * DAY):
            past = [s for s in self.slots(day, tz) if s <= now]
            if past:
                return past[-1]
        raise AssertionError("every schedule has a slot each day")

    def next_start(self, now: datetime, tz: str) -> datetime:
        """The first slot after `now`: when the next period starts."""
        today = utc(now).astimezone(zone(tz)).date()
        for day in (today, today + DAY, today + 2 * DAY):
            ahead = [s for s in self.slots(day, tz) if s > now]
            if ahead:
                return ahead[0]
        raise AssertionError("every schedule has a slot each day")

    def previous_start(self, start: datetime, tz: str) -> datetime:
        """The slot before `start`: where the period that ends at `start` began."""
        return self.period_start(start - timedelta(microseconds=1), tz)


def period_key(start: datetime, tz: str) -> str:
    """A period's name: its slot on the local clock, e.g. "2026-12-04T09:00+08:00"."""
    return utc(start).astimezone(zone(tz)).isoformat(timespec="minutes")
