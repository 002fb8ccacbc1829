"""SLA rules as configuration: condition -> action, evaluated as SQL inside the warehouse.

A rule names a scope (one row per order, or one row per SKU), conditions over that
scope's fields, a severity, who to notify and a message template:

    rules:
      paid_not_locked:
        title: 已付款超过2小时未锁库存
        scope: order
        when:
          stage: {eq: paid}            # 支付确认: paid, stock not locked, not shipped
          paid_at: {older_than: 2h}    # strictly more than 2 h before now
        waited_from: paid_at
        severity: warning
        notify: [warehouse]
        message: 订单 {order_no} 付款已 {waited}，库存仍未锁定

`rules:` entries are merged over the four defaults by id: a default id overrides only the
settings it gives (`enabled: false` switches it off); any other id is a new rule.

Every condition compiles to a SQLAlchemy Core expression, so a rule runs as one SELECT on
SQLite and PostgreSQL alike; no order is looked at in Python. Operators:

| operator      | value                    | meaning                                         |
|---------------|--------------------------|-------------------------------------------------|
| eq, ne        | value or {field: name}   | equal / not equal (ne keeps NULLs out)          |
| lt, le, gt, ge| value or {field: name}   | compare numbers, dates, times                   |
| in, not_in    | list of values           | one of / none of                                |
| is_null       | true or false            | the field is empty / is set                     |
| older_than    | duration (2h, 48h, 1d)   | time field strictly before now - duration       |
| newer_than    | duration                 | time field at or after now - duration           |
| within_next   | duration                 | time field at or before now + duration; for a   |
|               |                          | date field: on or before today + whole days     |
"""

from __future__ import annotations

import re
import string
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import sqlalchemy as sa
import yaml

from order_pipeline.contract.config import ConfigError, SectionParser
from order_pipeline.contract.schema import RAW_TABLES, order_tracking_snapshot
from order_pipeline.domain.stages import STAGE_LABELS
from order_pipeline.domain.times import utc

SCOPES = ("order", "sku")
SEVERITIES = ("info", "warning", "critical")
RISKS = ("high",)
ORDER_STAGES = tuple(STAGE_LABELS)
PENDING_STAGES = ("ordered", "paid")  # not locked, not shipped, not cancelled
RULE_FIELDS = {
    "title",
    "scope",
    "when",
    "severity",
    "notify",
    "message",
    "waited_from",
    "escalate_after",
    "escalate_to",
    "cooldown",
    "risk",
    "resolve_note",
    "enabled",
    "description",
}
REQUIRED_FIELDS = ("title", "scope", "when", "notify")
_RULE_ID = re.compile(r"[a-z][a-z0-9_]{0,63}")

COMPARE = {"eq": "=", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
OPERATORS = (*COMPARE, "in", "not_in", "is_null", "older_than", "newer_than", "within_next")
_ORDERED_KINDS = {"number", "date", "datetime"}
_TIME_OPS = {"older_than", "newer_than", "within_next"}

# Values a message template may use besides the scope's fields.
MESSAGE_EXTRAS = {"order": {"waited", "owner", "title"}, "sku": {"suggested_qty", "title"}}

DEFAULT_RULES_YAML = """
paid_not_locked:
  title: 已付款超过2小时未锁库存
  description: Paid more than 2 h ago and the stock is still not locked.
  scope: order
  when:
    stage: {eq: paid}
    paid_at: {older_than: 2h}
  waited_from: paid_at
  severity: warning
  notify: [warehouse]
  message: 订单 {order_no} 付款已 {waited}，库存仍未锁定，请尽快锁库。

stock_below_safety:
  title: 库存低于安全库存，有待处理订单
  description: A SKU's available stock (on hand - reserved) is below its safety stock while pending orders need it.
  scope: sku
  when:
    available: {lt: {field: safety_stock}}
    pending_qty: {gt: 0}
  severity: warning
  notify: [purchasing]
  message: SKU {sku} 可用库存 {available}（在库 {on_hand} − 已占用 {reserved}）低于安全库存 {safety_stock}，{pending_orders} 个待处理订单还需 {pending_qty} 件，建议采购 {suggested_qty} 件。

stuck_parcel:
  title: 包裹超过48小时无物流更新
  description: Shipped, not delivered, and no carrier update for 48 h. The order is marked high risk.
  scope: order
  when:
    stage: {in: [shipped, in_transit, exception]}
    last_carrier_update_at: {older_than: 48h}
  waited_from: last_carrier_update_at
  severity: critical
  risk: high
  notify: [customer_service]
  message: 订单 {order_no}（运单 {waybill_nos}）已 {waited} 无物流更新，已标记高风险，请联系承运商并主动告知客户。

promise_due_not_shipped:
  title: 承诺送达不足1天仍未发货
  description: The promised delivery date is within one day and the order has not shipped.
  scope: order
  when:
    promised_date: {within_next: 1d}
    stage: {in: [ordered, paid, locked]}
  severity: critical
  notify: [ops_lead]
  message: 订单 {order_no} 承诺 {promised_date} 送达，目前仍在「{stage_label}」未发货，请运营负责人协调。
"""


# --- the parsed form ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldRef:
    """A condition value that is another field of the same row: `{lt: {field: safety_stock}}`."""

    name: str


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: Any  # literal, tuple of literals, bool, timedelta or FieldRef

    def describe(self) -> str:
        value = self.value
        if isinstance(value, timedelta):
            value = _duration_text(value)
        elif isinstance(value, FieldRef):
            value = value.name
        elif isinstance(value, tuple):
            value = "[" + ", ".join(map(str, value)) + "]"
        return f"{self.field} {self.op} {value}"


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    scope: str
    conditions: tuple[Condition, ...]
    notify: tuple[str, ...]
    severity: str = "warning"
    message: str | None = None
    waited_from: str | None = None
    escalate_after: timedelta | None = None  # None: the `alerts:` default
    escalate_to: tuple[str, ...] | None = None
    cooldown: timedelta | None = None
    risk: str | None = None
    resolve_note: bool | None = None
    description: str | None = None

    @property
    def condition_text(self) -> str:
        return " and ".join(c.describe() for c in self.conditions)


# --- fields of each scope ------------------------------------------------------------------------

_KINDS = (
    (sa.Boolean, "bool"),
    (sa.DateTime, "datetime"),
    (sa.Date, "date"),
    (sa.Float, "number"),
    (sa.Integer, "number"),
    (sa.Text, "text"),
)


def _kind(column: sa.ColumnElement) -> str:
    return next(k for t, k in _KINDS if isinstance(column.type, t))


def order_fields(orders: sa.Table = order_tracking_snapshot) -> dict[str, sa.ColumnElement]:
    """Fields of the order scope: every column of the snapshot (or `unified_orders`), plus derived ones."""
    fields = {c.name: c for c in orders.c if not c.name.startswith("_")}
    fields["last_carrier_update_at"] = sa.func.coalesce(orders.c.latest_event_at, orders.c.shipped_at).label(
        "last_carrier_update_at"
    )
    return fields


def sku_stock(orders: sa.Table = order_tracking_snapshot) -> sa.Subquery:
    """One row per SKU in inventory: stock figures and the demand of pending orders not yet locked.

    Pending orders are those not locked, not shipped and not cancelled (stages ordered and
    paid). Their demand is what their lines ask for minus what is already locked for them.
    """
    inv, lines, res = RAW_TABLES["inventory"], RAW_TABLES["order_lines"], RAW_TABLES["reservations"]
    pending = sa.select(orders.c.order_no).where(orders.c.stage.in_(PENDING_STAGES))
    need = (
        sa.select(lines.c.order_no, lines.c.sku, sa.func.sum(lines.c.qty).label("qty"))
        .where(lines.c.order_no.in_(pending))
        .group_by(lines.c.order_no, lines.c.sku)
        .subquery("need")
    )
    held = (
        sa.select(res.c.order_no, res.c.sku, sa.func.sum(res.c.qty).label("qty"))
        .where(res.c.status == "locked")
        .where(res.c.order_no.in_(pending))
        .group_by(res.c.order_no, res.c.sku)
        .subquery("held")
    )
    short = need.c.qty - sa.func.coalesce(held.c.qty, 0)
    open_need = (
        sa.select(need.c.sku, need.c.order_no, short.label("short"))
        .select_from(need.outerjoin(held, sa.and_(held.c.order_no == need.c.order_no, held.c.sku == need.c.sku)))
        .where(short > 0)
        .subquery("open_need")
    )
    demand = (
        sa.select(
            open_need.c.sku,
            sa.func.sum(open_need.c.short).label("pending_qty"),
            sa.func.count(sa.distinct(open_need.c.order_no)).label("pending_orders"),
        )
        .group_by(open_need.c.sku)
        .subquery("demand")
    )
    available = inv.c.on_hand - inv.c.reserved
    pending_qty = sa.func.coalesce(demand.c.pending_qty, 0)
    return (
        sa.select(
            inv.c.sku,
            inv.c.on_hand,
            inv.c.reserved,
            inv.c.safety_stock,
            available.label("available"),
            pending_qty.label("pending_qty"),
            sa.func.coalesce(demand.c.pending_orders, 0).label("pending_orders"),
            (inv.c.safety_stock + pending_qty - available).label("suggested_qty"),
            inv.c.updated_at.label("inventory_updated_at"),
        )
        .select_from(inv.outerjoin(demand, demand.c.sku == inv.c.sku))
        .subquery("sku_stock")
    )


SKU_FIELD_KINDS = {
    "sku": "text",
    "on_hand": "number",
    "reserved": "number",
    "safety_stock": "number",
    "available": "number",
    "pending_qty": "number",
    "pending_orders": "number",
    "suggested_qty": "number",
    "inventory_updated_at": "datetime",
}
ORDER_FIELD_KINDS = {name: _kind(col) for name, col in order_fields().items()}
ORDER_FIELD_KINDS["last_carrier_update_at"] = "datetime"
FIELD_KINDS = {"order": ORDER_FIELD_KINDS, "sku": SKU_FIELD_KINDS}


# --- parsing -----------------------------------------------------------------------------------


def default_rules() -> tuple[Rule, ...]:
    return parse_rules(None, Path("<built-in rules>"))


def parse_rules(section: Any, path: Path | str, targets: Collection[str] | None = None) -> tuple[Rule, ...]:
    """The rules of a `rules:` section merged over the defaults; raises ConfigError on any mistake.

    `targets`, when given, are the group and channel names a rule may notify.
    """
    path = Path(path)
    defaults = yaml.safe_load(DEFAULT_RULES_YAML)
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
        if not _RULE_ID.fullmatch(rid):
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
    rules = []
    for rid, spec in merged.items():
        rule = _RuleParser(path, rid, spec, targets).parse()
        if rule is not None:
            rules.append(rule)
    return tuple(rules)


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
        waited_from = s.get("waited_from")
        if waited_from is not None:
            if scope != "order":
                self.fail("waited_from", "only order rules count waiting time", "remove `waited_from:`")
            if kinds.get(waited_from) != "datetime":
                self.fail(
                    "waited_from",
                    f"{waited_from!r} is not a time field of an order",
                    f"use one of: {', '.join(sorted(k for k, v in kinds.items() if v == 'datetime'))}",
                )
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
        if op in _TIME_OPS:
            if kind not in ("datetime", "date") or (kind == "date" and op != "within_next"):
                self.fail(
                    entry,
                    f"{op} needs a time field, and {fname} is {kind}",
                    f"use {op} on one of: {', '.join(sorted(k for k, v in kinds.items() if v == 'datetime'))}",
                )
            d = self.duration(value, entry)
            if kind == "date" and d % timedelta(days=1):
                self.fail(entry, f"{fname} is a date, so {op} takes whole days", "write e.g. 1d or 2d")
            return Condition(fname, op, d)
        if op == "is_null":
            if not isinstance(value, bool):
                self.fail(entry, f"{value!r} is not true or false", "write `is_null: true` or `is_null: false`")
            return Condition(fname, op, value)
        if op in ("in", "not_in"):
            if not isinstance(value, list) or not value:
                self.fail(entry, f"{value!r} is not a list", f"write e.g. `{op}: [a, b]`")
            return Condition(fname, op, tuple(self.literal(fname, kind, v, entry) for v in value))
        if isinstance(value, dict):
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
            return Condition(fname, op, FieldRef(value["field"]))
        if op in ("lt", "le", "gt", "ge") and kind not in _ORDERED_KINDS:
            self.fail(
                entry, f"{op} needs a number, date or time field, and {fname} is {kind}", "use eq, ne, in or is_null"
            )
        return Condition(fname, op, self.literal(fname, kind, value, entry))

    def literal(self, fname: str, kind: str, value, entry: str):
        bad = lambda what: self.fail(entry, f"{value!r} is not {what}", f"write {what} for {fname}")
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


# --- compiling to SQL --------------------------------------------------------------------------


def aware_utc(now: datetime) -> datetime:
    """`now` in UTC. A naive `now` is refused rather than read as UTC: it is usually local time."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return utc(now)


def time_param(value: datetime) -> sa.BindParameter:
    """A time to compare with a timestamp column, bound the way the column stores it."""
    return sa.bindparam(None, aware_utc(value), type_=sa.DateTime(timezone=True))


def condition_sql(
    cond: Condition, fields: Mapping[str, sa.ColumnElement], kind: str, now: datetime, tz: str
) -> sa.ColumnElement[bool]:
    col = fields[cond.field]
    col = col.element if isinstance(col, sa.Label) else col
    v = cond.value
    if cond.op == "is_null":
        return col.is_(None) if v else col.is_not(None)
    if cond.op == "older_than":
        return col < time_param(now - v)
    if cond.op == "newer_than":
        return col >= time_param(now - v)
    if cond.op == "within_next":
        if kind == "date":
            today = aware_utc(now).astimezone(ZoneInfo(tz)).date()
            return col <= sa.bindparam(None, today + v, type_=sa.Date)
        return col <= time_param(now + v)
    if cond.op == "in":
        return col.in_(list(v))
    if cond.op == "not_in":
        return sa.and_(col.is_not(None), col.not_in(list(v)))
    other = fields[v.name] if isinstance(v, FieldRef) else _literal(v, kind)
    other = other.element if isinstance(other, sa.Label) else other
    expr = col.op(COMPARE[cond.op])(other) if cond.op != "ne" else col != other
    if cond.op == "ne":
        expr = sa.and_(col.is_not(None), expr)
    return expr


def _literal(value, kind: str):
    if kind == "datetime":
        return time_param(value)
    if kind == "date":
        return sa.bindparam(None, value, type_=sa.Date)
    if kind == "bool":
        return sa.true() if value else sa.false()
    return sa.bindparam(None, value)


# Columns every order breach carries, for the ledger and the message.
ORDER_MESSAGE_COLUMNS = (
    "order_no",
    "stage",
    "stage_label",
    "responsible_role",
    "waiting_since",
    "customer_name",
    "waybill_nos",
    "promised_date",
)


def breach_query(rule: Rule, now: datetime, tz: str, orders: sa.Table = order_tracking_snapshot) -> sa.Select:
    """The SELECT of the rule's offending rows: `entity_key`, `order_no` and the fields a message needs."""
    kinds = FIELD_KINDS[rule.scope]
    if rule.scope == "order":
        fields = order_fields(orders)
        wanted = list(ORDER_MESSAGE_COLUMNS)
        wanted += [c.field for c in rule.conditions] + [
            c.value.name for c in rule.conditions if isinstance(c.value, FieldRef)
        ]
        wanted += [n for n in _template_names(rule.message) if n in fields]
        if rule.waited_from:
            wanted.append(rule.waited_from)
        cols = [fields["order_no"].label("entity_key")] + [fields[n] for n in dict.fromkeys(wanted)]
        where = [condition_sql(c, fields, kinds[c.field], now, tz) for c in rule.conditions]
        return sa.select(*cols).where(*where).order_by(fields["order_no"])
    stock = sku_stock(orders)
    fields = {c.name: c for c in stock.c}
    cols = [stock.c.sku.label("entity_key"), sa.null().label("order_no"), *stock.c]
    where = [condition_sql(c, fields, kinds[c.field], now, tz) for c in rule.conditions]
    return sa.select(*cols).where(*where).order_by(stock.c.sku)


def _template_names(text: str | None) -> list[str]:
    if not text:
        return []
    return [re.split(r"[.\[]", f, maxsplit=1)[0] for _, f, _, _ in string.Formatter().parse(text) if f]


def _datetime_columns(query: sa.Select) -> list[str]:
    return [
        c.name
        for c in query.selected_columns
        if isinstance(c.type, sa.DateTime) or c.name in ("last_carrier_update_at", "inventory_updated_at")
    ]


def fetch_frame(conn: sa.Connection, query: sa.Select, datetime_cols: Collection[str] = ()) -> pd.DataFrame:
    """Run a SELECT whose parameters include times, and return a DataFrame.

    `warehouse.read_frame` hands parameters to the driver as they are; a time compared
    with SQLite's text timestamps must go through SQLAlchemy's bind processing to be
    written the way the column stores it, so these queries execute normally.
    """
    result = conn.execute(query)
    frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    for col in datetime_cols:
        frame[col] = pd.to_datetime(frame[col], utc=True, format="ISO8601")
    return frame


@dataclass(frozen=True)
class Breaches:
    """The offending rows of one rule at one moment."""

    rule: Rule
    rows: pd.DataFrame  # entity_key, order_no, and the fields of the message

    @property
    def count(self) -> int:
        return len(self.rows)


def evaluate(
    conn: sa.Connection, rules: Collection[Rule], now: datetime, tz: str, orders: sa.Table = order_tracking_snapshot
) -> dict[str, Breaches]:
    """Every rule's offending rows, one SELECT per rule, read through the driver's fast path."""
    out = {}
    for rule in rules:
        q = breach_query(rule, now, tz, orders)
        out[rule.id] = Breaches(rule, fetch_frame(conn, q, _datetime_columns(q)))
    return out


def count_and_sample(
    conn: sa.Connection, rule: Rule, now: datetime, tz: str, limit: int, orders: sa.Table = order_tracking_snapshot
) -> tuple[int, pd.DataFrame]:
    """How many rows break the rule, and the first `limit` of them (for asset check metadata)."""
    q = breach_query(rule, now, tz, orders)
    count = conn.execute(sa.select(sa.func.count()).select_from(q.order_by(None).subquery())).scalar_one()
    sample = fetch_frame(conn, q.limit(limit), _datetime_columns(q)) if count else pd.DataFrame()
    return count, sample


def with_defaults(rule: Rule, **defaults) -> Rule:
    """`rule` with its unset settings taken from `defaults` (cooldown=..., escalate_after=..., ...)."""
    return replace(rule, **{k: v for k, v in defaults.items() if getattr(rule, k) is None})


def _duration_text(d: timedelta) -> str:
    s = int(d.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s % size == 0 and s >= size and not (unit == "d" and s < 3 * 86400 and s != 86400):
            return f"{s // size}{unit}"
    return f"{s}s"
