"""What the customer page shows, prepared from published rows: masked, localised, plain."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial

from order_pipeline.domain.masking import mask_address, mask_carrier_text, mask_name, mask_phone
from order_pipeline.domain.times import local_date, local_time
from order_pipeline.web.rendering.i18n import STAGE_LABELS, STAGES, TEXT, carrier_name
from order_pipeline.web.rendering.progress import STAGE_TIME_COLUMNS, newest_first, reached_index, stage_reached

_TZ_NAMES = {"Asia/Shanghai": ("北京", "Beijing")}

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
    carriers: Mapping[str, str | None],
    lang: str,
    tz: str,
    mask: Masker = mask_carrier_text,
) -> list[dict]:
    """Carrier events newest first, their text and area masked."""
    return [
        {
            "time": local_time(e["event_at"], tz),
            "area": mask(e.get("area")),
            "context": mask(e.get("context")),
            "waybill_no": e.get("waybill_no") or "",
            "carrier": carrier_name(carriers.get(e.get("waybill_no") or ""), lang),
        }
        for e in newest_first(events)
    ]


def customer_view(
    order: Mapping,
    parcels: Sequence[Mapping],
    events: Sequence[Mapping],
    *,
    lang: str,
    tz: str,
    support_contact: str | None = None,
    lang_switch_url: str = "",
) -> dict:
    text = TEXT[lang]
    carriers = {p["waybill_no"]: p.get("carrier_code") for p in parcels}
    zh_name, en_name = _TZ_NAMES.get(tz, (tz, tz))
    mask = carrier_text_masker(order)
    return {
        "lang": lang,
        "t": text,
        "order_no": order["order_no"],
        "stage": order["stage"],
        "stage_label": STAGE_LABELS[lang].get(order["stage"], order["stage"]),
        "banner": off_path_banner(order, lang),
        "recipient": mask_name(order.get("customer_name")),
        "phone": mask_phone(order.get("customer_phone")),
        "address": mask_address(order.get("ship_address")),
        "steps": timeline(order, lang, tz),
        "eta": eta_line(order, lang, tz),
        "next_step": next_step(order, lang),
        "parcels": parcel_rows(parcels, lang, tz, mask),
        "events": event_rows(events, carriers, lang, tz, mask),
        "updated": local_time(order.get("published_at"), tz),
        "time_note": text["time_note"].format(tz=zh_name if lang == "zh" else en_name),
        "contact": text["contact"].format(contact=support_contact) if support_contact else "",
        "lang_switch_url": lang_switch_url,
    }
