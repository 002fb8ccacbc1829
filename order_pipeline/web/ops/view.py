"""What the ops board shows, prepared from published rows (unmasked: staff only)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from order_pipeline.contract import roles
from order_pipeline.domain import carrier_states
from order_pipeline.domain.stages import MISSING_FACTS, MISSING_LABELS
from order_pipeline.domain.times import age, as_utc, local_time, waited_text
from order_pipeline.warehouse.state import NEWEST_UPDATE_PREFIX
from order_pipeline.web.rendering.i18n import ALL_STAGES, OFF_PATH, STAGE_LABELS, STAGES, carrier_name
from order_pipeline.web.rendering.progress import newest_first, sort_instant, stage_reached

OPEN_STAGES = ("ordered", "paid", "locked", "shipped", "in_transit", "exception")


# (label, column, kind, key fact) per stage, after the design's stage table; an empty key fact of
# a reached stage is flagged, an empty optional one is not.
STAGE_FACTS: dict[str, list[tuple[str, str, str, bool]]] = {
    "ordered": [
        ("下单时间", "ordered_at", "time", True),
        ("金额", "amount", "money", True),
        ("商品行数", "line_count", "plain", True),
        ("总数量", "total_qty", "plain", False),
        ("承诺送达", "promised_date", "date", False),
    ],
    "paid": [
        ("付款时间", "paid_at", "time", True),
        ("付款凭证", "voucher_no", "plain", True),
        ("已付金额", "paid_amount", "money", False),
        ("已退金额", "refunded_amount", "money", False),
    ],
    "locked": [("锁定时间", "locked_at", "time", True), ("锁定数量", "total_qty", "plain", False)],
    "shipped": [
        ("出库时间", "shipped_at", "time", True),
        ("运单号", "waybill_nos", "plain", True),
        ("快递公司", "carrier_codes", "carriers", True),
        ("重量 (kg)", "total_weight_kg", "plain", True),
        ("包裹数", "parcel_count", "plain", False),
    ],
    "in_transit": [
        ("开始运输", "in_transit_at", "time", True),
        ("当前位置", "latest_event_area", "plain", True),
        ("预计送达", "eta", "time", True),
        ("快递公司预估", "carrier_eta", "time", False),
        ("最新动态", "latest_event_context", "plain", False),
        ("动态时间", "latest_event_at", "time", False),
        ("派送中", "out_for_delivery", "bool", False),
        ("快递100 状态", "carrier_state", "carrier_state", False),
    ],
    "delivered": [
        ("签收时间", "delivered_at", "time", True),
        ("签收人", "signer", "plain", True),
        ("已签收包裹", "parcels_signed", "of_parcels", False),
    ],
}


def role_label(role: str | None) -> str:
    """The board names a role with its code too, which is what the config's groups are written in."""
    return f"{roles.role_label(role)} ({role})" if role in roles.ROLE_LABELS else roles.role_label(role)


def stage_label(stage: str | None) -> str:
    return STAGE_LABELS["zh"].get(stage or "", stage or "")


def yes_no(value) -> str:
    return "是" if value else "否"


def carrier_state_text(state) -> str:
    """A Kuaidi100 state as its number and its name, e.g. '3 签收'."""
    return f"{state} {carrier_states.label(int(state))}"


def waiting_for(row: Mapping, now: datetime) -> str:
    """How long the order has waited for its next step, or a dash when it waits for nothing."""
    since = row.get("waiting_since")
    return waited_text(age(since, now)) if since else "—"


def fact_value(order: Mapping, column: str, kind: str, tz: str) -> str:
    value = order.get(column)
    if value is None or value == "":
        return ""
    if kind == "time":
        return local_time(value, tz)
    if kind == "date":
        return str(value)[:10]
    if kind == "money":
        return f"{value:,.2f} {order.get('currency') or ''}".strip()
    if kind == "bool":
        return yes_no(value)
    if kind == "carriers":
        return ", ".join(f"{carrier_name(c.strip(), 'zh')} ({c.strip()})" for c in str(value).split(",") if c.strip())
    if kind == "carrier_state":
        return carrier_state_text(value)
    if kind == "of_parcels":
        return f"{value} / {order.get('parcel_count') or 0}"
    return str(value)


def stage_blocks(order: Mapping, tz: str) -> list[dict]:
    """Every stage with its facts; a fact of a reached stage that is empty is flagged as missing."""
    missing = missing_codes(order.get("missing_info"))
    blocks = []
    for code in STAGES:
        done = stage_reached(order, code)
        facts = []
        for label, column, kind, key_fact in STAGE_FACTS[code]:
            value = fact_value(order, column, kind, tz)
            facts.append(
                {"label": label, "value": value or "—", "css": "missing" if done and key_fact and not value else ""}
            )
        current = code == order["stage"]
        blocks.append(
            {
                "code": code,
                "label": stage_label(code),
                "facts": facts,
                "css": "current" if current else ("done" if done else ""),
                "missing": [missing_text(m) for m in missing if MISSING_FACTS.get(m, ("",))[0] == code],
            }
        )
    return blocks


def missing_codes(missing_info: str | None) -> list[str]:
    return [code.strip() for code in (missing_info or "").split(";") if code.strip()]


def missing_text(code: str) -> str:
    return f"{MISSING_LABELS[code]} ({code})" if code in MISSING_LABELS else code


def missing_list(order: Mapping) -> list[str]:
    return [missing_text(code) for code in missing_codes(order.get("missing_info"))]


def order_summary(order: Mapping, now: datetime, tz: str) -> dict:
    return {
        "order_no": order["order_no"],
        "stage": order["stage"],
        "stage_label": stage_label(order["stage"]),
        "status": order.get("status") or "",
        "name": order.get("customer_name") or "",
        "phone": order.get("customer_phone") or "",
        "address": order.get("ship_address") or "",
        "role": role_label(order.get("responsible_role")),
        "waiting_since": local_time(order.get("waiting_since"), tz),
        "waiting_for": waiting_for(order, now),
        "exception_reason": order.get("exception_reason") or "",
        "published_at": local_time(order.get("published_at"), tz),
        "source_updated_at": local_time(order.get("source_updated_at"), tz),
        "missing": missing_list(order),
    }


def parcel_rows(parcels: Sequence[Mapping], tz: str) -> list[dict]:
    return [
        {
            "waybill_no": p["waybill_no"],
            "carrier": carrier_name(p.get("carrier_code"), "zh"),
            "weight": "" if p.get("weight_kg") is None else f"{p['weight_kg']:g}",
            "shipped_at": local_time(p.get("shipped_at"), tz),
            "state": "" if p.get("carrier_state") is None else carrier_state_text(p["carrier_state"]),
            "signed": yes_no(p.get("is_signed")),
            "signer": p.get("signer") or "",
            "signed_at": local_time(p.get("signed_at"), tz),
            "latest": p.get("latest_event_context") or "",
            "latest_at": local_time(p.get("latest_event_at"), tz),
            "carrier_eta": local_time(p.get("carrier_eta"), tz),
        }
        for p in parcels
    ]


def event_rows(events: Sequence[Mapping], tz: str) -> list[dict]:
    return [
        {
            "time": local_time(e["event_at"], tz),
            "waybill_no": e.get("waybill_no") or "",
            "area": e.get("area") or "",
            "context": e.get("context") or "",
        }
        for e in newest_first(events)
    ]


def alert_rows(alerts: Sequence[Mapping], tz: str) -> list[dict]:
    return [
        {
            "rule": a["rule_id"],
            "severity": a["severity"],
            "message": a["message"],
            "entity": a.get("entity_key") or "",
            "order_no": a.get("order_no") or "",
            "first_seen": local_time(a.get("first_seen"), tz),
            "last_seen": local_time(a.get("last_seen"), tz),
            "notified_at": local_time(a.get("notified_at"), tz),
            "escalation": a.get("escalation_level") or 0,
            "state": "未处理" if a.get("resolved_at") is None else f"已解决 {local_time(a['resolved_at'], tz)}",
        }
        for a in alerts
    ]


def list_rows(rows: Sequence[Mapping], now: datetime, tz: str) -> list[dict]:
    return [
        {
            "order_no": r["order_no"],
            "stage_label": stage_label(r["stage"]),
            "name": r.get("customer_name") or "",
            "phone": r.get("customer_phone") or "",
            "ordered_at": local_time(r.get("ordered_at"), tz),
            "waiting_for": waiting_for(r, now),
            "role": role_label(r.get("responsible_role")),
            "waybills": r.get("waybill_nos") or "",
        }
        for r in rows
    ]


def stage_bars(counts: Mapping[str, int]) -> list[dict]:
    """One bar per stage, widths relative to the largest stage (a CSS bar chart)."""
    codes = [*ALL_STAGES, *sorted(set(counts) - set(ALL_STAGES))]
    top = max(counts.values(), default=0) or 1
    return [
        {
            "code": c,
            "label": stage_label(c),
            "count": counts.get(c, 0),
            "pct": round(100 * counts.get(c, 0) / top),
            "css": "off" if c in OFF_PATH else "",
        }
        for c in codes
    ]


def oldest_by_role(rows: Sequence[Mapping], now: datetime, tz: str, per_role: int = 5) -> list[dict]:
    groups: dict[str, list[Mapping]] = {}
    for r in rows:
        groups.setdefault(r.get("responsible_role") or "", []).append(r)
    out = []
    for role in sorted(groups):
        oldest = sorted(groups[role], key=lambda r: sort_instant(r["waiting_since"]))[:per_role]
        out.append(
            {
                "role": role_label(role),
                "role_code": role,
                "orders": [
                    {
                        "order_no": r["order_no"],
                        "stage_label": stage_label(r["stage"]),
                        "waiting_since": local_time(r["waiting_since"], tz),
                        "waiting_for": waiting_for(r, now),
                        "missing": "、".join(missing_list(r)),
                    }
                    for r in oldest
                ],
            }
        )
    return out


def freshness_rows(rows: Sequence[Mapping], now: datetime, tz: str) -> list[dict]:
    out = []
    for r in rows:
        mark = as_utc(r["value"])
        out.append(
            {
                "source": r["key"].removeprefix(NEWEST_UPDATE_PREFIX),
                "watermark": local_time(mark, tz) or r["value"],
                "age": waited_text(now - mark) if mark else "—",
                "hours": (now - mark).total_seconds() / 3600 if mark else None,
                "checked": local_time(r.get("updated_at"), tz),
            }
        )
    return out
