"""What the customer page shows, prepared from published rows: masked, localised, plain.

Only the fields the company lists in `tracking_page.public_fields` are prepared at all; the
template prints what it is given, so a field not chosen cannot reach the page.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from functools import partial

from order_pipeline.contract.tracking_page import DEFAULT_PUBLIC_FIELDS, PUBLIC_FIELDS
from order_pipeline.domain.masking import mask_address, mask_carrier_text, mask_name, mask_phone
from order_pipeline.domain.times import local_date, local_time
from order_pipeline.web.rendering.i18n import STAGE_LABELS, STAGES, TEXT, carrier_name
from order_pipeline.web.rendering.progress import STAGE_TIME_COLUMNS, newest_first, reached_index, stage_reached

_TZ_NAMES = {"Asia/Shanghai": ("北京", "Beijing")}
_CURRENCY_SIGNS = {"CNY": "¥", "RMB": "¥", "USD": "$", "EUR": "€", "HKD": "HK$"}

Masker = Callable[[str | None], str]


def carrier_text_masker(order: Mapping) -> Masker:
    """Masks a carrier text of this order: the generic rules, plus the order's own street and recipient."""
    return partial(mask_carrier_text, address=order.get("ship_address"), name=order.get("customer_name"))


def timeline(order: Mapping, lang: str, tz: str) -> list[dict]:
    """The six stages with their time and state: done, current or todo."""
    reached = reached_index(order["stage"])
    steps = []
    for i, code in enumerate(STAGES):
        at = order.get(STAGE_TIME_COLUMNS[code])
        if i == reached and code != "delivered":
            state = "current"
        elif stage_reached(order, code):
            state = "done"
        else:
            state = "todo"
        time = local_time(at, tz)
        steps.append(
            {
                "code": code,
                "label": STAGE_LABELS[lang][code],
                "state": state,
                "when": time or (TEXT[lang]["pending"] if state == "todo" else ""),
            }
        )
    return steps


def eta_line(order: Mapping, lang: str, tz: str) -> dict | None:
    """Expected delivery (carrier or computed ETA), else the promised date; nothing once delivered or cancelled."""
    if order["stage"] in ("delivered", "cancelled"):
        return None
    text = TEXT[lang]
    if order.get("eta") is not None:
        # Whose estimate it is: the carrier's own prediction is worth saying so.
        source = text["eta_by_carrier"] if order.get("eta_source") == "carrier" else None
        return {"label": text["eta"], "value": local_date(order["eta"], tz), "source": source}
    if order.get("promised_date") is not None:
        return {"label": text["promised"], "value": local_date(order["promised_date"], tz)}
    return None


def next_step(order: Mapping, lang: str) -> str:
    text = TEXT[lang]
    stage = order["stage"]
    if stage == "in_transit" and order.get("out_for_delivery"):
        return text["next.in_transit.out"]
    return text.get(f"next.{stage}", "")


def off_path_banner(order: Mapping, lang: str) -> str | None:
    text = TEXT[lang]
    if order["stage"] == "cancelled":
        return text["cancelled_banner"]
    if order["stage"] == "exception":
        reason = carrier_text_masker(order)(order.get("exception_reason"))
        return f"{text['exception_banner']}{text['colon']}{reason}" if reason else text["exception_banner"]
    return None


def parcel_rows(parcels: Sequence[Mapping], lang: str, tz: str, mask: Masker = mask_carrier_text) -> list[dict]:
    text = TEXT[lang]
    return [
        {
            "waybill_no": p["waybill_no"],
            "carrier": carrier_name(p.get("carrier_code"), lang),
            "status": text["signed"] if p.get("is_signed") else "",
            "latest": mask(p.get("latest_event_context")),
            "latest_time": local_time(p.get("latest_event_at"), tz),
        }
        for p in parcels
    ]


def event_rows(
    events: Sequence[Mapping],
    carriers: Mapping[str, str | None] | None,
    lang: str,
    tz: str,
    mask: Masker = mask_carrier_text,
) -> list[dict]:
    """Carrier events newest first, their text and area masked; with `carriers`, each one's carrier and waybill."""
    rows = []
    for e in newest_first(events):
        row = {"time": local_time(e["event_at"], tz), "area": mask(e.get("area")), "context": mask(e.get("context"))}
        if carriers is not None:
            waybill = e.get("waybill_no") or ""
            row |= {"waybill_no": waybill, "carrier": carrier_name(carriers.get(waybill), lang)}
        rows.append(row)
    return rows


def items_line(order: Mapping, lang: str) -> str:
    lines, qty = order.get("line_count"), order.get("total_qty")
    if not lines:
        return ""
    qty = int(qty) if qty is not None and float(qty).is_integer() else qty
    return TEXT[lang]["items_value"].format(lines=lines, qty=qty if qty is not None else "?")


def amount_line(order: Mapping) -> str:
    amount = order.get("amount")
    if amount is None:
        return ""
    currency = order.get("currency") or "CNY"
    return f"{_CURRENCY_SIGNS[currency]}{amount:,.2f}" if currency in _CURRENCY_SIGNS else f"{currency} {amount:,.2f}"


def field_parts(
    order: Mapping, parcels: Sequence[Mapping], events: Sequence[Mapping], fields: Collection[str], lang: str, tz: str
) -> dict:
    """The entries of the chosen public fields only: a field not chosen has no key, so nothing can print it."""
    mask = carrier_text_masker(order)
    parts: dict = {}
    if "stage" in fields:
        parts |= {
            "stage": order["stage"],
            "stage_label": STAGE_LABELS[lang].get(order["stage"], order["stage"]),
            "banner": off_path_banner(order, lang),
            "steps": timeline(order, lang, tz),
        }
    if "next_step" in fields:
        parts["next_step"] = next_step(order, lang)
    if "eta" in fields:
        parts["eta"] = eta_line(order, lang, tz)
    if "timeline" in fields:
        carriers = {p["waybill_no"]: p.get("carrier_code") for p in parcels} if "carrier" in fields else None
        parts["events"] = event_rows(events, carriers, lang, tz, mask)
    if "carrier" in fields:
        parts["parcels"] = parcel_rows(parcels, lang, tz, mask)
    if "items" in fields:
        parts["items"] = items_line(order, lang)
    if "amount" in fields:
        parts["amount"] = amount_line(order)
    if "recipient" in fields:
        parts["recipient"] = mask_name(order.get("customer_name"))
    if "phone" in fields:
        parts["phone"] = mask_phone(order.get("customer_phone"))
    if "address" in fields:
        parts["address"] = mask_address(order.get("ship_address"))
    return parts


def customer_view(
    order: Mapping,
    parcels: Sequence[Mapping],
    events: Sequence[Mapping],
    *,
    lang: str,
    tz: str,
    fields: Collection[str] = DEFAULT_PUBLIC_FIELDS,
    support_contact: str | None = None,
    lang_switch_url: str = "",
) -> dict:
    """What the page prints: the chosen public fields (`tracking_page.public_fields`) and the page's frame."""
    text = TEXT[lang]
    zh_name, en_name = _TZ_NAMES.get(tz, (tz, tz))
    shown = frozenset(f for f in PUBLIC_FIELDS if f in fields)
    return {
        "lang": lang,
        "t": text,
        "order_no": order["order_no"],
        "shown": shown,
        "summary": bool(shown & {"stage", "next_step", "eta"}),
        "details": bool(shown & {"items", "amount", "recipient", "phone", "address"}),
        **field_parts(order, parcels, events, shown, lang, tz),
        "updated": local_time(order.get("published_at"), tz),
        "time_note": text["time_note"].format(tz=zh_name if lang == "zh" else en_name),
        "contact": text["contact"].format(contact=support_contact) if support_contact else "",
        "lang_switch_url": lang_switch_url,
    }
