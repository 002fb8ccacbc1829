"""Reading a `rules:` section: merged over the built-in rules by id, every mistake a ConfigError."""

from __future__ import annotations

import re
import string
from collections.abc import Collection, Mapping
from datetime import date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

import pandas as pd
import yaml

from order_pipeline.alerts.rules.model import (
    FIELD_KINDS,
    MESSAGE_EXTRAS,
    OPERATORS,
    ORDER_STAGES,
    ORDERED_KINDS,
    REQUIRED_FIELDS,
    RISKS,
    RULE_FIELDS,
    RULE_ID,
    SCOPES,
    SEVERITIES,
    TIME_OPS,
    Condition,
    FieldRef,
    Rule,
)
from order_pipeline.contract.parsing import ConfigError, SectionParser


def default_rules() -> tuple[Rule, ...]:
    return parse_rules(None, Path("<built-in rules>"))


def _default_specs() -> dict[str, dict]:
    """The built-in rules as `default_rules.yaml` writes them, a fresh copy on every call."""
    text = resources.files("order_pipeline.alerts.rules").joinpath("default_rules.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def parse_rules(section: Any, path: Path | str, targets: Collection[str] | None = None) -> tuple[Rule, ...]:
    """The rules of a `rules:` section merged over the defaults; raises ConfigError on any mistake.

    `targets`, when given, are the group and channel names a rule may notify.
    """
    path = Path(path)
    rules = []
    for rid, spec in _merge_over_defaults(section, path).items():
        rule = _RuleParser(path, rid, spec, targets).parse()
        if rule is not None:
            rules.append(rule)
    return tuple(rules)


def _merge_over_defaults(section: Any, path: Path) -> dict[str, dict]:
    """Each rule's settings: a default's updated by the section's entry of the same id, then new ids."""
    defaults = _default_specs()
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ConfigError(
            path,
            "rules",
            "must be a mapping of rule id to rule",
            "write `rules:` followed by indented `<rule_id>:` entries (see README, 'Alert rules')",
        )
    merged: dict[str, dict] = {rid: dict(spec) for rid, spec in defaults.items()}
    for rid, spec in section.items():
        rid = str(rid)
        if not RULE_ID.fullmatch(rid):
            raise ConfigError(
                path,
                f"rules.{rid}",
                "is not a valid rule id",
                "use lower-case letters, digits and underscores, starting with a letter",
            )
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            raise ConfigError(
                path,
                f"rules.{rid}",
                "must be a mapping",
                "write the rule's settings (title, scope, when, notify, ...) indented under its id",
            )
        unknown = sorted(set(spec) - RULE_FIELDS)
        if unknown:
            raise ConfigError(
                path, f"rules.{rid}.{unknown[0]}", "unknown rule field", f"use one of: {', '.join(sorted(RULE_FIELDS))}"
            )
        base = merged.get(rid, {})
        if "scope" in spec and base and spec["scope"] != base.get("scope") and "when" not in spec:
            base = {k: v for k, v in base.items() if k not in ("when", "message", "waited_from")}
        merged[rid] = {**base, **spec}
    return merged


class _RuleParser(SectionParser):
    def __init__(self, path: Path, rid: str, spec: dict, targets: Collection[str] | None):
        super().__init__(path)
        self.prefix = f"rules.{rid}"
        self.rid, self.spec, self.targets = rid, spec, targets

    def parse(self) -> Rule | None:
        s = self.spec
        enabled = s.get("enabled", True)
        if not isinstance(enabled, bool):
            self.fail("enabled", f"{enabled!r} is not true or false", "write `enabled: false` to switch the rule off")
        if not enabled:
            return None
        for name in REQUIRED_FIELDS:
            if s.get(name) in (None, "", [], {}):
                self.fail(name, "missing", f"set `{name}:` (see README, 'Alert rules', for an example)")
        scope = s["scope"]
        if scope not in SCOPES:
            self.fail("scope", f"unknown scope {scope!r}", f"use one of: {', '.join(SCOPES)}")
        kinds = FIELD_KINDS[scope]
        conditions = self.conditions(s["when"], kinds)
        severity = s.get("severity", "warning")
        if severity not in SEVERITIES:
            self.fail("severity", f"unknown severity {severity!r}", f"use one of: {', '.join(SEVERITIES)}")
        risk = s.get("risk")
        if risk is not None and risk not in RISKS:
            self.fail("risk", f"unknown risk {risk!r}", "use `risk: high` or leave it out")
        if risk is not None and scope != "order":
            self.fail("risk", "only an order can be marked high risk", "remove `risk:` or use `scope: order`")
        waited_from = self.waited_from(s.get("waited_from"), scope, kinds)
        message = s.get("message")
        if message is not None:
            message = self.template(str(message).strip(), scope, kinds)
        resolve_note = s.get("resolve_note")
        if resolve_note is not None and not isinstance(resolve_note, bool):
            self.fail("resolve_note", f"{resolve_note!r} is not true or false", "write `resolve_note: true` or `false`")
        return Rule(
            id=self.rid,
            title=str(s["title"]).strip(),
            scope=scope,
            conditions=conditions,
            notify=self.target_list("notify", s["notify"]),
            severity=severity,
            message=message,
            waited_from=waited_from,
            escalate_after=self.optional_duration(s.get("escalate_after"), "escalate_after"),
            escalate_to=None if s.get("escalate_to") is None else self.target_list("escalate_to", s["escalate_to"]),
            cooldown=self.optional_duration(s.get("cooldown"), "cooldown"),
            risk=risk,
            resolve_note=resolve_note,
            description=None if s.get("description") is None else str(s["description"]).strip(),
        )

    def waited_from(self, value, scope: str, kinds: Mapping[str, str]) -> str | None:
        if value is not None:
            if scope != "order":
                self.fail("waited_from", "only order rules count waiting time", "remove `waited_from:`")
            if kinds.get(value) != "datetime":
                self.fail(
                    "waited_from",
                    f"{value!r} is not a time field of an order",
                    f"use one of: {', '.join(sorted(k for k, v in kinds.items() if v == 'datetime'))}",
                )
        return value

    def optional_duration(self, value, entry: str) -> timedelta | None:
        return None if value is None else self.duration(value, entry)

    def target_list(self, entry: str, value) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            self.fail(entry, f"{value!r} is not a list of groups or channels", f"write e.g. `{entry}: [warehouse]`")
        if self.targets is not None:
            for name in value:
                if name not in self.targets:
                    self.fail(
                        entry,
                        f"unknown channel or group {name!r}",
                        f"use one of: {', '.join(sorted(self.targets))}, or add it under `alerts.groups:` "
                        "or `channels:`",
                    )
        return tuple(dict.fromkeys(value))

    def template(self, text: str, scope: str, kinds: Mapping[str, str]) -> str:
        allowed = set(kinds) | MESSAGE_EXTRAS[scope]
        try:
            names = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
        except ValueError as e:
            self.fail(
                "message", f"not a valid template ({e})", "write placeholders as {order_no}; double a literal brace: {{"
            )
        for name in names:
            base = re.split(r"[.\[]", name, maxsplit=1)[0]
            if base not in allowed:
                self.fail(
                    "message",
                    f"unknown placeholder {{{name}}}",
                    f"use fields of the {scope}: {', '.join(sorted(allowed))}",
                )
        return text

    def conditions(self, when, kinds: Mapping[str, str]) -> tuple[Condition, ...]:
        if not isinstance(when, dict) or not when:
            self.fail("when", "must map fields to conditions", "write e.g. `when: {paid_at: {older_than: 2h}}`")
        out = []
        for fname, ops in when.items():
            entry = f"when.{fname}"
            if fname not in kinds:
                self.fail(entry, "unknown field", f"use one of: {', '.join(sorted(kinds))}")
            if not isinstance(ops, dict) or not ops:
                self.fail(entry, "must map operators to values", f"write e.g. `{fname}: {{eq: ...}}`")
            for op, value in ops.items():
                out.append(self.condition(fname, kinds[fname], op, value, kinds, f"{entry}.{op}"))
        return tuple(out)

    def condition(self, fname: str, kind: str, op: str, value, kinds: Mapping[str, str], entry: str) -> Condition:
        if op not in OPERATORS:
            self.fail(entry, "unknown operator", f"use one of: {', '.join(OPERATORS)}")
        if op in TIME_OPS:
            return Condition(fname, op, self.time_window(fname, kind, op, value, kinds, entry))
        if op == "is_null":
            if not isinstance(value, bool):
                self.fail(entry, f"{value!r} is not true or false", "write `is_null: true` or `is_null: false`")
            return Condition(fname, op, value)
        if op in ("in", "not_in"):
            if not isinstance(value, list) or not value:
                self.fail(entry, f"{value!r} is not a list", f"write e.g. `{op}: [a, b]`")
            return Condition(fname, op, tuple(self.literal(fname, kind, v, entry) for v in value))
        if isinstance(value, dict):
            return Condition(fname, op, self.field_ref(fname, kind, value, kinds, entry))
        if op in ("lt", "le", "gt", "ge") and kind not in ORDERED_KINDS:
            self.fail(
                entry, f"{op} needs a number, date or time field, and {fname} is {kind}", "use eq, ne, in or is_null"
            )
        return Condition(fname, op, self.literal(fname, kind, value, entry))

    def time_window(self, fname: str, kind: str, op: str, value, kinds: Mapping[str, str], entry: str) -> timedelta:
        """The duration of older_than, newer_than or within_next."""
        if kind not in ("datetime", "date") or (kind == "date" and op != "within_next"):
            self.fail(
                entry,
                f"{op} needs a time field, and {fname} is {kind}",
                f"use {op} on one of: {', '.join(sorted(k for k, v in kinds.items() if v == 'datetime'))}",
            )
        d = self.duration(value, entry)
        if kind == "date" and d % timedelta(days=1):
            self.fail(entry, f"{fname} is a date, so {op} takes whole days", "write e.g. 1d or 2d")
        return d

    def field_ref(self, fname: str, kind: str, value: dict, kinds: Mapping[str, str], entry: str) -> FieldRef:
        """`{field: <name>}`: another field of the same kind."""
        if set(value) != {"field"} or value["field"] not in kinds:
            self.fail(
                entry,
                f"{value!r} is not a field reference",
                f"write `{{field: <name>}}` with one of: {', '.join(sorted(kinds))}",
            )
        other = kinds[value["field"]]
        if other != kind:
            self.fail(
                entry,
                f"{fname} ({kind}) cannot be compared with {value['field']} ({other})",
                "compare fields of the same kind",
            )
        return FieldRef(value["field"])

    def literal(self, fname: str, kind: str, value, entry: str):
        def bad(what: str) -> NoReturn:
            self.fail(entry, f"{value!r} is not {what}", f"write {what} for {fname}")

        if kind == "number":
            if isinstance(value, bool) or not isinstance(value, int | float):
                bad("a number")
            return value
        if kind == "bool":
            if not isinstance(value, bool):
                bad("true or false")
            return value
        if kind == "date":
            if isinstance(value, datetime):
                bad("a date")
            if isinstance(value, date):
                return value
            try:
                return date.fromisoformat(str(value))
            except ValueError:
                bad("a date (YYYY-MM-DD)")
        if kind == "datetime":
            try:
                ts = pd.Timestamp(value)
            except (ValueError, TypeError):
                bad("a time (ISO 8601, e.g. 2026-11-25T10:00:00+08:00)")
            if ts.tzinfo is None:
                bad("a time with its zone (e.g. 2026-11-25T10:00:00+08:00)")
            return ts.tz_convert("UTC").to_pydatetime()
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            bad("text")
        text = str(value)
        if fname == "stage" and text not in ORDER_STAGES:
            self.fail(entry, f"unknown stage {text!r}", f"use one of: {', '.join(ORDER_STAGES)}")
        return text
