"""The `tracking_page:` section: which facts of an order the customer's tracking page shows.

    tracking_page:
      public_fields: [stage, eta, timeline]    # the default

A field that is not listed is not in the page at all: not rendered, not hidden by CSS, not
in anything the page serves. Its name is checked when the config is loaded, so a typo fails
there, naming the entry (`tracking_page.public_fields[2]`) and the names there are.
"""

from __future__ import annotations

from dataclasses import dataclass

from order_pipeline.contract.parsing import SectionParser

# What each name shows; the page's parts, in the order they appear on it.
PUBLIC_FIELDS: dict[str, str] = {
    "stage": "the current stage, the six-stage progress with its times, and the cancelled or exception notice",
    "next_step": "a sentence on what happens next",
    "eta": "the expected (or promised) delivery date",
    "timeline": "the carrier's events: time, area and text, masked",
    "carrier": "each parcel's carrier, waybill number and signed state, and the waybill beside each event",
    "items": "how many order lines and pieces",
    "amount": "the order amount and currency",
    "recipient": "the recipient's name, masked (张*)",
    "phone": "the recipient's mobile, masked (138****1234)",
    "address": "the delivery address, cut to the district",
}
DEFAULT_PUBLIC_FIELDS = ("stage", "eta", "timeline")
SECTION_FIELDS = {"public_fields"}

# Names a person might write for a field that has another name here: the fix says which.
_SAID_INSTEAD = {
    "waybill": "carrier",
    "waybill_no": "carrier",
    "parcels": "carrier",
    "events": "timeline",
    "progress": "stage",
    "steps": "stage",
    "name": "recipient",
    "customer_name": "recipient",
    "mobile": "phone",
    "ship_address": "address",
    "lines": "items",
    "total": "amount",
    "price": "amount",
}


@dataclass(frozen=True)
class TrackingPageConfig:
    public_fields: tuple[str, ...] = DEFAULT_PUBLIC_FIELDS

    def shows(self, name: str) -> bool:
        return name in self.public_fields


def _unknown_fix(value: object) -> str:
    names = ", ".join(PUBLIC_FIELDS)
    instead = _SAID_INSTEAD.get(str(value).strip().lower())
    return f"write `{instead}` instead; the names are: {names}" if instead else f"use one of: {names}"


def parse_tracking_page(parser: SectionParser, value) -> TrackingPageConfig:
    """The `tracking_page:` section; a mistake fails through `parser`, naming the file, the entry and the fix."""
    section = parser.mapping(value, "tracking_page", SECTION_FIELDS)
    if "public_fields" not in section:
        return TrackingPageConfig()
    fields = section["public_fields"]
    entry = "tracking_page.public_fields"
    if not isinstance(fields, list):
        parser.fail(entry, "must be a list", f"write e.g. `public_fields: [{', '.join(DEFAULT_PUBLIC_FIELDS)}]`")
    if not fields:
        parser.fail(
            entry,
            "lists no field",
            f"name at least one, e.g. [stage]; leave it out for the default ({', '.join(DEFAULT_PUBLIC_FIELDS)})",
        )
    chosen: list[str] = []
    for i, name in enumerate(fields):
        if not isinstance(name, str) or name not in PUBLIC_FIELDS:
            parser.fail(f"{entry}[{i}]", f"unknown field {name!r}", _unknown_fix(name))
        if name in chosen:
            parser.fail(f"{entry}[{i}]", f"{name!r} is listed twice", "keep one of them")
        chosen.append(name)
    return TrackingPageConfig(tuple(chosen))
