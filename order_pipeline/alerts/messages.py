"""Alert texts: short, in Chinese, with the order no, its stage, how long it has waited, who owns it
and a link to the order on the ops board.

The link sits inside the body rather than in a channel's "details" button, so it survives when a
burst is folded into a digest and when the message lands in the outbox table.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pandas as pd

from order_pipeline.alerts.rules.model import Rule
from order_pipeline.contract.roles import role_label
from order_pipeline.domain.times import as_utc, local_time, waited_text

SEVERITY_LABELS = {"info": "提示", "warning": "警告", "critical": "严重"}
KIND_LABELS = {"escalate": "升级", "resolve": "已恢复"}
ORDER_PAGE = "/ops/order/{order_no}"  # the ops board's order page (order_pipeline.web.app)


@dataclass(frozen=True)
class MessageText:
    """What a message says, before a channel shapes it (order_pipeline.alerts.channels.message.AlertMessage)."""

    title: str
    body_markdown: str
    body_text: str
    severity: str = "warning"
    mentions: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> MessageText:
        doc = json.loads(text)
        return cls(
            doc["title"],
            doc["body_markdown"],
            doc["body_text"],
            doc.get("severity", "warning"),
            tuple(doc.get("mentions", ())),
        )

    def with_mentions(self, mentions: tuple[str, ...]) -> MessageText:
        return MessageText(
            self.title,
            self.body_markdown,
            self.body_text,
            self.severity,
            tuple(dict.fromkeys(self.mentions + mentions)),
        )


def order_link(board_url: str, order_no: str) -> str:
    return board_url.rstrip("/") + ORDER_PAGE.format(order_no=quote(str(order_no), safe=""))


def short_time(value: Any, tz: str) -> str:
    """A time as messages show it, 03-25 14:05 in the business's zone; '—' when there is none."""
    return local_time(value, tz, "%m-%d %H:%M") or "—"


def _plain(value: Any, tz: str) -> Any:
    """A row value as a message shows it."""
    if value is None or (not isinstance(value, str | bytes) and pd.isna(value)):
        return "—"
    if isinstance(value, pd.Timestamp | datetime):
        return short_time(value, tz)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class _Formatter(string.Formatter):
    """str.format that shows a value as text when its format spec does not fit it."""

    def format_field(self, value, format_spec):
        try:
            return super().format_field(value, format_spec)
        except (ValueError, TypeError):
            return str(value)


def waited_since(rule: Rule, row: Mapping[str, Any]) -> Any:
    return row.get(rule.waited_from or "waiting_since")


def rule_summary(rule: Rule, row: Mapping[str, Any], now: datetime, tz: str) -> str:
    """The one line the ledger keeps for an alert: the rule's message filled in."""
    values = {k: _plain(v, tz) for k, v in row.items()}
    if rule.scope == "order":
        since = as_utc(waited_since(rule, row))
        values["waited"] = waited_text(None if since is None else pd.Timestamp(now) - since)
        values["owner"] = role_label(row.get("responsible_role"))
    values["title"] = rule.title
    if rule.message:
        return _Formatter().vformat(rule.message, (), _Defaulting(values))
    if rule.scope == "order":
        return f"订单 {row.get('order_no')}：{rule.title}（已等待 {values['waited']}）"
    return f"SKU {row.get('entity_key')}：{rule.title}"


class _Defaulting(dict):
    def __missing__(self, key):
        return "—"


def rule_message(
    rule: Rule,
    row: Mapping[str, Any],
    summary: str,
    now: datetime,
    tz: str,
    board_url: str,
    kind: str = "notify",
    first_seen: Any = None,
) -> MessageText:
    """The message for a rule's alert about one order or SKU."""
    entity = row.get("order_no") if rule.scope == "order" else row.get("entity_key")
    title = _title(rule.title, rule.severity, kind, entity)
    md, text = [summary], [summary]
    if rule.scope == "order":
        since = as_utc(waited_since(rule, row))
        waited = waited_text(None if since is None else pd.Timestamp(now) - since)
        facts = (
            f"阶段：{_plain(row.get('stage_label'), tz)}　已等待：{waited}　"
            f"负责人：{role_label(row.get('responsible_role'))}"
        )
        if rule.risk == "high":
            facts += "　风险：高"
        link = order_link(board_url, str(entity))
        md += [f"> {facts}", f"> [在看板查看 {entity}]({link})"]
        text += [facts, f"看板：{link}"]
    else:
        md.append("> 负责人：采购")
        text.append("负责人：采购")
    if kind == "escalate":
        since = as_utc(first_seen)
        lead = f"已持续 {waited_text(None if since is None else pd.Timestamp(now) - since)} 未解决，升级处理。"
        md.insert(0, f"**{lead}**")
        text.insert(0, lead)
    return MessageText(title, "\n".join(md), "\n".join(text), rule.severity)


def resolved_message(
    title: str, entity: str, summary: str, first_seen: Any, now: datetime, order_no: str | None, board_url: str
) -> MessageText:
    since = as_utc(first_seen)
    lasted = waited_text(None if since is None else pd.Timestamp(now) - since)
    head = f"已恢复（持续 {lasted}）：{summary}"
    md, text = [head], [head]
    if order_no:
        link = order_link(board_url, order_no)
        md.append(f"> [在看板查看 {order_no}]({link})")
        text.append(f"看板：{link}")
    return MessageText(_title(title, "info", "resolve", entity), "\n".join(md), "\n".join(text), "info")


def freshness_message(
    source: str,
    asset_key: str,
    newest: Any,
    max_age: timedelta,
    now: datetime,
    tz: str,
    kind: str = "notify",
    severity: str = "warning",
) -> tuple[str, MessageText]:
    since = as_utc(newest)
    if since is None:
        summary = f"数据源 {source}（{asset_key}）还没有任何数据，要求每 {waited_text(max_age)} 内有更新。"
    else:
        summary = (
            f"数据源 {source}（{asset_key}）已 {waited_text(pd.Timestamp(now) - since)} 没有新数据"
            f"（最新 {short_time(since, tz)}，要求 {waited_text(max_age)} 内），请检查同步任务。"
        )
    title = _title("数据源不新鲜", severity, kind, source)
    return summary, MessageText(title, summary, summary, severity)


def freshness_recovered(source: str, asset_key: str, newest: Any, tz: str) -> str:
    since = as_utc(newest)
    latest = f"（最新 {short_time(since, tz)}）" if since is not None else ""
    return f"数据源 {source}（{asset_key}）又有新数据了{latest}。"


def unreachable_message(
    source: str, since: Any, error: str, now: datetime, tz: str, kind: str = "notify"
) -> tuple[str, MessageText]:
    """A source the pipeline cannot read: since when, and the error in the source's own words."""
    first = (error or "").strip().splitlines()[0][:300] if error else "未知错误"
    started = as_utc(since)
    lasted = waited_text(None if started is None else pd.Timestamp(now) - started)
    summary = (
        f"数据源 {source} 已 {lasted} 无法读取（自 {short_time(started, tz)} 起）：{first}。"
        "在恢复之前，它的新数据不会进入流水线。"
    )
    title = _title("数据源无法连接", "critical", kind, source)
    return summary, MessageText(title, summary, summary, "critical")


def run_failure_message(job: str, run_id: str, error: str, kind: str = "notify") -> tuple[str, MessageText]:
    first = (error or "").strip().splitlines()[0][:300] if error else "未知错误"
    summary = f"Dagster 运行失败：{job}（run {run_id[:8]}）：{first}"
    title = _title("流水线运行失败", "critical", kind, job)
    return summary, MessageText(title, summary, f"{summary}\nrun_id: {run_id}", "critical")


def _title(title: str, severity: str, kind: str, entity: Any) -> str:
    tag = KIND_LABELS.get(kind) or SEVERITY_LABELS.get(severity, severity)
    return f"【{tag}】{title}" + (f" {entity}" if entity else "")
