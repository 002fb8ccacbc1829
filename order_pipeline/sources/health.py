"""What the source sensor remembers between ticks (its cursor), and what it makes of it.

Besides the run it last asked for per source, the sensor remembers when it last recorded that it
checked a source and found nothing new (so the asset's history shows the pipeline looking, every
`OBSERVE_EVERY` rather than every 5 s tick), and which sources it could not read since when. A
source unreadable for `UNREACHABLE_AFTER` raises the data team's "source unreachable" alert; a
blip shorter than that raises nothing. Pure functions: the sensor reads and writes the cursor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from order_pipeline.domain.times import parse_instant

OBSERVE_EVERY = timedelta(minutes=5)
UNREACHABLE_AFTER = timedelta(minutes=1)


@dataclass
class SensorMemory:
    asked: dict[str, str] = field(default_factory=dict)  # source -> the run key last asked for
    observed: dict[str, str] = field(default_factory=dict)  # source -> when "checked, unchanged" was recorded
    failing: dict[str, list[str]] = field(default_factory=dict)  # source -> [since (ISO), the error]
    alerted: list[str] = field(default_factory=list)  # the sources the open unreachable alerts cover
    alert_due: str | None = None  # when the open alerts are due again (a cool-down's re-notification)

    @classmethod
    def parse(cls, text: str | None) -> SensorMemory:
        try:
            doc = json.loads(text or "{}")
        except ValueError:
            return cls()
        if not isinstance(doc, dict):
            return cls()
        if "asked" not in doc:  # the earlier form: the run keys alone
            return cls(asked={k: v for k, v in doc.items() if isinstance(v, str)})
        return cls(
            dict(doc.get("asked") or {}),
            dict(doc.get("observed") or {}),
            dict(doc.get("failing") or {}),
            list(doc.get("alerted") or []),
            doc.get("alert_due"),
        )

    def dump(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True, ensure_ascii=False)

    # -- checking -----------------------------------------------------------------------------

    def observe_due(self, source: str, now: datetime, every: timedelta = OBSERVE_EVERY) -> bool:
        """Is it time to record "checked, unchanged" for `source` again? (Marks it recorded.)"""
        last = self.observed.get(source)
        if last is not None and now - parse_instant(last, "UTC") < every:
            return False
        self.observed[source] = now.isoformat()
        return True

    def read(self, source: str) -> bool:
        """The source answered. True: it had been failing (it recovered)."""
        return self.failing.pop(source, None) is not None

    def failed(self, source: str, error: str, now: datetime) -> bool:
        """The source could not be read. True: it had been readable (it just started failing)."""
        started = source not in self.failing
        since = now.isoformat() if started else self.failing[source][0]
        self.failing[source] = [since, error]
        self.observed.pop(source, None)  # recovered, it is recorded at once
        return started

    # -- alerting -----------------------------------------------------------------------------

    def unreachable(self, now: datetime, after: timedelta = UNREACHABLE_AFTER) -> dict[str, tuple[datetime, str]]:
        """The sources failing for `after` or longer: source -> (since, the latest error)."""
        out = {}
        for source, (since, error) in self.failing.items():
            started = parse_instant(since, "UTC")
            if now - started >= after:
                out[source] = (started, error)
        return out

    def alert_sync_due(self, unreachable: dict[str, tuple[datetime, str]], now: datetime) -> bool:
        """Should the ledger hear of the unreachable sources now: the set changed (a source went
        unreachable or came back), or a re-notification fell due? Otherwise a tick writes nothing."""
        if sorted(unreachable) != sorted(self.alerted):
            return True
        return bool(unreachable) and self.alert_due is not None and now >= parse_instant(self.alert_due, "UTC")

    def alerts_synced(self, unreachable: dict[str, tuple[datetime, str]], next_due: datetime | None) -> None:
        self.alerted = sorted(unreachable)
        self.alert_due = next_due.isoformat() if next_due else None
