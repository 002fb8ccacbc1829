"""The parsed form of a rule, and what a rule may say: scopes, severities, operators, the fields of each scope."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from order_pipeline.contract.schema import order_tracking_snapshot
from order_pipeline.domain.stages import STAGE_LABELS

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
RULE_ID = re.compile(r"[a-z][a-z0-9_]{0,63}")

COMPARE = {"eq": "=", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
OPERATORS = (*COMPARE, "in", "not_in", "is_null", "older_than", "newer_than", "within_next")
ORDERED_KINDS = {"number", "date", "datetime"}
TIME_OPS = {"older_than", "newer_than", "within_next"}

# Values a message template may use besides the scope's fields.
MESSAGE_EXTRAS = {"order": {"waited", "owner", "title"}, "sku": {"suggested_qty", "title"}}


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


def with_defaults(rule: Rule, **defaults) -> Rule:
    """`rule` with its unset settings taken from `defaults` (cooldown=..., escalate_after=..., ...)."""
    return replace(rule, **{k: v for k, v in defaults.items() if getattr(rule, k) is None})


def _duration_text(d: timedelta) -> str:
    s = int(d.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s % size == 0 and s >= size and not (unit == "d" and s < 3 * 86400 and s != 86400):
            return f"{s // size}{unit}"
    return f"{s}s"


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


# The kinds of the fields `sql.order_fields()` and `sql.sku_stock()` select: the snapshot's own
# columns, then the derived ones.
ORDER_FIELD_KINDS = {c.name: _kind(c) for c in order_tracking_snapshot.c if not c.name.startswith("_")}
ORDER_FIELD_KINDS["last_carrier_update_at"] = "datetime"
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
FIELD_KINDS = {"order": ORDER_FIELD_KINDS, "sku": SKU_FIELD_KINDS}
