"""Who hears about what: the `alerts:`, `channels:` and `freshness:` sections, checked at load time.

    channels:                          # each built by alerts.channels.config.build_channel
      wecom_warehouse: {type: wecom, webhook_url_env: WECOM_WAREHOUSE_URL, mentions: ["13800000000"]}
      ops_mail: {type: email, host: smtp.example.com, sender: ops@example.com, recipients: [lead@example.com]}
    alerts:
      cooldown: 2h                     # re-send an open alert at most this often
      escalate_after: 4h               # still open this long after first seen: tell escalate_to
      escalate_to: [ops_lead]
      max_escalations: 1
      resolve_note: true               # say so when the condition clears
      evaluate_every: 5m               # the alert sensor re-evaluates at least this often
      board_url: https://ops.example.com   # links go to {board_url}/ops/order/{order_no}
      default_channels: [outbox]       # for groups not listed below
      run_failures_to: [data]
      groups:
        warehouse: {channels: [wecom_warehouse], mentions: [zhangsan]}
        ops_lead: {channels: [ops_mail]}
      digests:                         # status digests per group (alerts.schedules); default none
        warehouse: {at: ["09:00", "16:00"]}       # business time; quoted: YAML reads 16:00 as a number
        finance: {every: 1h}
        ops_lead: {at: ["18:00"], role: all}      # whose orders: the group's own role by default
    freshness:                         # newest source update older than this: the data owner hears
      owner: data
      orders: 5m
      inventory: {max_age: 30m, owner: warehouse}
      carrier: 2h                      # or `off`

Nothing configured: every group goes to the local outbox channel (table `alert_outbox` and
the log), which is what the demo uses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import time, timedelta
from pathlib import Path
from typing import Any

from order_pipeline.alerts.rules.model import Rule, with_defaults
from order_pipeline.alerts.rules.parser import parse_rules
from order_pipeline.alerts.schedules import ALL_ROLES, DAY, DigestSchedule
from order_pipeline.contract.canonical import SOURCE_ENTITIES
from order_pipeline.contract.config import Config
from order_pipeline.contract.parsing import SectionParser
from order_pipeline.contract.roles import ROLE_LABELS
from order_pipeline.contract.schema import raw_table_name
from order_pipeline.domain.stages import MISSING_FACTS, NEXT_OWNER

OUTBOX = "outbox"
CARRIER = "carrier"
# Built-in groups: a rule may name them without an `alerts.groups` entry (they then use default_channels).
# Their labels are the roles' (order_pipeline.roles.ROLE_LABELS).
BUILTIN_GROUPS = ("warehouse", "purchasing", "customer_service", "ops_lead", "data", "sales", "finance", "logistics")
ALERTS_FIELDS = {
    "cooldown",
    "escalate_after",
    "escalate_to",
    "max_escalations",
    "resolve_note",
    "evaluate_every",
    "board_url",
    "groups",
    "default_channels",
    "run_failures_to",
    "digests",
}
GROUP_FIELDS = {"channels", "mentions", "label"}
DIGEST_FIELDS = {"at", "every", "role"}
# The roles an order's `responsible_role` can be: whose orders a digest can cover.
OWNER_ROLES = tuple(dict.fromkeys(r for r in (*NEXT_OWNER.values(), *(o for _, o in MISSING_FACTS.values())) if r))
MIN_DIGEST_EVERY = timedelta(minutes=15)
_CLOCK = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")
DEFAULT_BOARD_URL = "http://127.0.0.1:8080"

# The seed's update SLA per source; `carrier` is the Kuaidi100 feed (raw_tracking).
FRESHNESS_DEFAULTS = {
    "orders": timedelta(minutes=5),
    "shipments": timedelta(minutes=5),
    "payments": timedelta(hours=1),
    "reservations": timedelta(minutes=30),
    "inventory": timedelta(minutes=30),
    CARRIER: timedelta(hours=2),
}
FRESHNESS_SOURCES = (*(n for n, e in SOURCE_ENTITIES.items() if e.watermark), CARRIER)


@dataclass(frozen=True)
class Group:
    name: str
    label: str
    channels: tuple[str, ...]
    mentions: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourceSla:
    source: str  # a source entity, or "carrier"
    max_age: timedelta
    owner: tuple[str, ...]  # groups or channels told when it is stale

    @property
    def asset_key(self) -> str:
        return raw_table_name("tracking" if self.source == CARRIER else self.source)


@dataclass(frozen=True)
class AlertSettings:
    config_path: Path
    timezone: str
    rules: tuple[Rule, ...]  # enabled rules, alert defaults filled in
    groups: Mapping[str, Group]
    channel_specs: Mapping[str, Any]  # `channels:` entries; the outbox is implicit
    default_channels: tuple[str, ...] = (OUTBOX,)
    cooldown: timedelta = timedelta(hours=2)
    escalate_after: timedelta = timedelta(hours=4)
    escalate_to: tuple[str, ...] = ("ops_lead",)
    max_escalations: int = 1
    resolve_note: bool = True
    evaluate_every: timedelta = timedelta(minutes=5)
    board_url: str = DEFAULT_BOARD_URL
    freshness: tuple[SourceSla, ...] = ()
    run_failures_to: tuple[str, ...] = ("data",)
    digests: tuple[DigestSchedule, ...] = ()

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([OUTBOX, *self.channel_specs]))

    def group(self, name: str) -> Group:
        return self.groups.get(name) or Group(name, ROLE_LABELS.get(name, name), self.default_channels)

    def route(self, target: str) -> list[tuple[str, tuple[str, ...]]]:
        """(channel, mentions) pairs a message for `target` (a group or a channel name) goes to."""
        if target in self.channel_names and target not in self.groups:
            return [(target, ())]
        g = self.group(target)
        return [(ch, g.mentions) for ch in g.channels]


def load_alert_settings(config: Config) -> AlertSettings:
    return _Parser(config).parse()


class _Parser(SectionParser):
    def __init__(self, config: Config):
        super().__init__(config.path)
        self.config = config

    def names(self, value, entry: str, known: set[str], what: str) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            self.fail(entry, f"{value!r} is not a list of {what}", f"write e.g. `[{next(iter(sorted(known)), 'x')}]`")
        for v in value:
            if v not in known:
                one = "group or channel" if what == "groups or channels" else what.rstrip("s")
                self.fail(entry, f"unknown {one} {v!r}", f"use one of: {', '.join(sorted(known))}")
        return tuple(dict.fromkeys(value))

    def parse(self) -> AlertSettings:
        sections = self.config.sections
        channel_specs = self.channels(sections.get("channels"))
        channel_names = {OUTBOX, *channel_specs}
        if isinstance(sections.get("alerts"), dict) and "tracking_links" in sections["alerts"]:
            self.fail(
                "alerts.tracking_links",
                "customers' tracking links no longer go through the staff channels",
                "remove it: the `notifications:` section messages each new order's customer "
                "(README, Customer messages)",
            )
        a = self.mapping(sections.get("alerts"), "alerts", ALERTS_FIELDS)
        d = AlertSettings(self.path, self.config.timezone, (), {}, {})
        default_channels = self.listed(a, "default_channels", channel_names, "channels", d.default_channels)
        groups = self.groups(a.get("groups"), channel_names)
        targets = set(BUILTIN_GROUPS) | set(groups) | channel_names
        resolve_note = a.get("resolve_note", d.resolve_note)
        if not isinstance(resolve_note, bool):
            self.fail("alerts.resolve_note", f"{resolve_note!r} is not true or false", "write `resolve_note: true`")
        max_esc = a.get("max_escalations", d.max_escalations)
        if isinstance(max_esc, bool) or not isinstance(max_esc, int) or max_esc < 0:
            self.fail(
                "alerts.max_escalations", f"{max_esc!r} is not a whole number", "write e.g. 1 (0: never escalate)"
            )
        web = sections.get("web") if isinstance(sections.get("web"), dict) else None
        board_url = str(a.get("board_url") or (web or {}).get("base_url") or DEFAULT_BOARD_URL).rstrip("/")
        if not board_url.startswith(("http://", "https://")):
            self.fail("alerts.board_url", f"{board_url!r} is not an http(s) URL", "write e.g. https://ops.example.com")
        settings = AlertSettings(
            config_path=self.path,
            timezone=self.config.timezone,
            rules=(),
            groups=groups,
            channel_specs=channel_specs,
            default_channels=default_channels,
            cooldown=self.timed(a, "cooldown", d.cooldown),
            escalate_after=self.timed(a, "escalate_after", d.escalate_after),
            escalate_to=self.listed(a, "escalate_to", targets, "groups or channels", d.escalate_to),
            max_escalations=max_esc,
            resolve_note=resolve_note,
            evaluate_every=self.timed(a, "evaluate_every", d.evaluate_every),
            board_url=board_url,
            freshness=self.freshness(sections.get("freshness"), targets),
            run_failures_to=self.listed(a, "run_failures_to", targets, "groups or channels", d.run_failures_to),
            digests=self.digests(a.get("digests"), {*BUILTIN_GROUPS, *groups}),
        )
        rules = parse_rules(sections.get("rules"), self.path, targets)
        rules = tuple(
            with_defaults(
                r,
                cooldown=settings.cooldown,
                escalate_after=settings.escalate_after,
                escalate_to=settings.escalate_to,
                resolve_note=settings.resolve_note,
            )
            for r in rules
        )
        return replace(settings, rules=rules)

    def timed(self, a: dict, key: str, default: timedelta) -> timedelta:
        """The duration `alerts.<key>` sets, else `default`."""
        return self.duration(a[key], f"alerts.{key}") if key in a else default

    def listed(self, a: dict, key: str, known: set[str], what: str, default: tuple[str, ...]) -> tuple[str, ...]:
        """The names `alerts.<key>` lists, each one of `known`, else `default`."""
        return self.names(a[key], f"alerts.{key}", known, what) if key in a else default

    def channels(self, value) -> dict[str, Any]:
        """The `channels:` entries by name; each entry is checked where the channels are built."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(
                "channels",
                "must be a mapping of channel name to channel",
                "write `channels:` followed by `<name>: {type: wecom, webhook_url_env: ...}` lines",
            )
        return {str(k): v for k, v in value.items()}

    def groups(self, value, channel_names: set[str]) -> dict[str, Group]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(
                "alerts.groups",
                "must be a mapping of group name to its channels",
                "write e.g. `warehouse: {channels: [wecom_warehouse]}`",
            )
        groups = {}
        for name, spec in value.items():
            entry = f"alerts.groups.{name}"
            spec = self.mapping(spec, entry, GROUP_FIELDS)
            if "channels" not in spec:
                self.fail(f"{entry}.channels", "missing", f"list the channels, e.g. `channels: [{OUTBOX}]`")
            channels = self.names(spec["channels"], f"{entry}.channels", channel_names, "channels")
            mentions = spec.get("mentions", [])
            if not isinstance(mentions, list) or not all(
                isinstance(m, str | int) and not isinstance(m, bool) for m in mentions
            ):
                self.fail(
                    f"{entry}.mentions",
                    f"{mentions!r} is not a list",
                    'write e.g. `mentions: ["13800000000", zhangsan]`',
                )
            label = str(spec.get("label") or ROLE_LABELS.get(str(name), name))
            groups[str(name)] = Group(str(name), label, channels, tuple(str(m) for m in mentions))
        return groups

    def freshness(self, value, targets: set[str]) -> tuple[SourceSla, ...]:
        f = self.mapping(value, "freshness", {*FRESHNESS_SOURCES, "owner"})
        owner = self.names(f["owner"], "freshness.owner", targets, "groups or channels") if "owner" in f else ("data",)
        out = []
        for source in FRESHNESS_SOURCES:
            entry = f"freshness.{source}"
            spec = f.get(source, FRESHNESS_DEFAULTS.get(source))
            if spec is None or spec is False or str(spec).lower() == "off":
                continue
            if source != CARRIER and source not in self.config.sources:
                if source in f:
                    self.fail(entry, f"source {source!r} is not configured", f"remove it or add `sources.{source}`")
                continue
            this_owner = owner
            if isinstance(spec, dict):
                spec = self.mapping(spec, entry, {"max_age", "owner"})
                if "owner" in spec:
                    this_owner = self.names(spec["owner"], f"{entry}.owner", targets, "groups or channels")
                if "max_age" not in spec:
                    self.fail(f"{entry}.max_age", "missing", "write e.g. `max_age: 30m`")
                spec = spec["max_age"]
                entry += ".max_age"
            out.append(SourceSla(source, self.duration(spec, entry), this_owner))
        return tuple(out)

    def digests(self, value, groups: set[str]) -> tuple[DigestSchedule, ...]:
        """`alerts.digests`: group -> {at: [times of day]} or {every: duration}, with an optional role."""
        if value is None:
            return ()
        if not isinstance(value, dict):
            self.fail(
                "alerts.digests",
                "must be a mapping of group name to its schedule",
                'write e.g. `warehouse: {at: ["09:00", "16:00"]}`',
            )
        out = []
        for key, spec in value.items():
            name = str(key)
            entry = f"alerts.digests.{name}"
            if name not in groups:
                self.fail(entry, f"unknown group {name!r}", f"use one of: {', '.join(sorted(groups))}")
            spec = self.mapping(spec, entry, DIGEST_FIELDS)
            if ("at" in spec) == ("every" in spec):
                problem = "has both `at` and `every`" if "at" in spec else "says neither `at` nor `every`"
                self.fail(entry, problem, 'write one of them, e.g. `{at: ["09:00", "16:00"]}` or `{every: 1h}`')
            at, every = (), None
            if "at" in spec:
                at = self.times_of_day(spec["at"], f"{entry}.at")
            else:
                every = self.duration(spec["every"], f"{entry}.every")
                if every < MIN_DIGEST_EVERY or DAY % every:
                    self.fail(
                        f"{entry}.every",
                        f"{spec['every']!r} does not divide a day into periods of 15m or more",
                        "write e.g. 30m, 1h, 2h, 4h, 12h or 1d",
                    )
            out.append(DigestSchedule(name, self.digest_role(spec.get("role"), name, entry), at, every))
        return tuple(out)

    def times_of_day(self, value, entry: str) -> tuple[time, ...]:
        values = [value] if isinstance(value, str | int) and not isinstance(value, bool) else value
        if not isinstance(values, list) or not values:
            self.fail(entry, f"{value!r} is not a list of times of day", 'write e.g. `at: ["09:00", "16:00"]`')
        times = []
        for i, v in enumerate(values):
            item = f"{entry}[{i}]"
            if isinstance(v, int) and not isinstance(v, bool):
                # YAML 1.1 reads an unquoted 16:00 as 960 (base 60); 09:00 stays text.
                read = f" (YAML reads an unquoted {v // 60}:{v % 60:02d} as {v})" if 0 <= v < 1440 else ""
                self.fail(item, f"{v!r} is a number, not a time of day{read}", 'quote each time, e.g. `at: ["16:00"]`')
            m = _CLOCK.fullmatch(str(v).strip())
            if m is None:
                self.fail(item, f"{v!r} is not a time of day", 'write HH:MM on the 24-hour clock, quoted, e.g. "16:00"')
            t = time(int(m.group(1)), int(m.group(2)))
            if t in times:
                self.fail(item, f"{v!r} is listed twice", "list each time once")
            times.append(t)
        return tuple(sorted(times))

    def digest_role(self, value, group: str, entry: str) -> str | None:
        """Whose orders the digest covers: `role:`, else the group's own name when orders can be owned by it."""
        if value is None:
            if group in OWNER_ROLES:
                return group
            self.fail(
                f"{entry}.role",
                f"no order is ever owned by {group!r}",
                f"add `role:` with one of: {', '.join(OWNER_ROLES)} (or `{ALL_ROLES}` for every order)",
            )
        if value == ALL_ROLES:
            return None
        if value not in OWNER_ROLES:
            self.fail(f"{entry}.role", f"unknown role {value!r}", f"use one of: {', '.join(OWNER_ROLES)}, {ALL_ROLES}")
        return str(value)
