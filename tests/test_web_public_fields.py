"""The tracking page shows only the fields listed in `tracking_page.public_fields`: each one on and off in
the view and in the HTML, the default, and the config's errors for a name that is not a field."""

from __future__ import annotations

import pytest
import yaml
from helpers import (
    ALL_PUBLIC_FIELDS,
    FULL_NAME,
    ORDER_IN_TRANSIT,
    RAW_PHONE,
    TZ,
    WAYBILL,
    build_world,
    link_path,
    write_config,
)

from order_pipeline.contract.config import ConfigError, load_config
from order_pipeline.contract.tracking_page import DEFAULT_PUBLIC_FIELDS, PUBLIC_FIELDS
from order_pipeline.web.customer.view import customer_view
from order_pipeline.web.db import reading
from order_pipeline.web.ops import queries
from order_pipeline.web.rendering.pages import Pages

# The view's keys that are the page's frame, whatever the fields.
FRAME = {"lang", "t", "order_no", "shown", "summary", "details", "updated", "time_note", "contact", "lang_switch_url"}
# Each field's keys in the view, and a text of SO1001 that only that field puts in the HTML.
KEYS = {
    "stage": {"stage", "stage_label", "banner", "steps"},
    "next_step": {"next_step"},
    "eta": {"eta"},
    "timeline": {"events"},
    "carrier": {"parcels"},
    "items": {"items"},
    "amount": {"amount"},
    "recipient": {"recipient"},
    "phone": {"phone"},
    "address": {"address"},
}
MARKERS = {
    "stage": "订单进度",
    "next_step": "包裹正在运输途中",
    "eta": "预计送达",
    "timeline": "深圳转运中心",
    "carrier": WAYBILL,
    "items": "2 种，共 3 件",
    "amount": "¥299.00",
    "recipient": "<dt>收件人</dt><dd>张*</dd>",
    "phone": "138****5678",
    "address": "<dt>收货地区</dt><dd>广东省深圳市南山区</dd>",
}


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> tuple[dict, list[dict], list[dict]]:
    world = build_world(tmp_path_factory.mktemp("fields"))
    try:
        with reading(world.engine) as conn:
            order, parcels, events = queries.customer_order(conn, ORDER_IN_TRANSIT)
    finally:
        world.engine.dispose()
    assert order is not None
    return order, parcels, events


def view_of(published, fields, lang: str = "zh") -> dict:
    order, parcels, events = published
    return customer_view(order, parcels, events, lang=lang, tz=TZ, fields=fields, support_contact="400-800-1234")


def html_of(published, fields, lang: str = "zh") -> str:
    return bytes(Pages().html("customer.html", view_of(published, fields, lang)).body).decode("utf-8")


def test_every_field_of_the_page_has_a_name():
    assert set(KEYS) == set(PUBLIC_FIELDS) == set(MARKERS)


@pytest.mark.parametrize("field", list(PUBLIC_FIELDS))
def test_a_field_alone_is_all_the_view_holds_besides_the_frame(published, field):
    view = view_of(published, [field])
    assert set(view) - FRAME == KEYS[field]
    assert view["shown"] == {field}


@pytest.mark.parametrize("field", list(PUBLIC_FIELDS))
def test_a_field_alone_is_in_the_html_and_no_other_is(published, field):
    html = html_of(published, [field])
    assert MARKERS[field] in html
    for other, marker in MARKERS.items():
        if other != field:
            assert marker not in html, (field, other)


@pytest.mark.parametrize("field", list(PUBLIC_FIELDS))
def test_every_field_but_one_leaves_out_only_that_one(published, field):
    rest = [f for f in PUBLIC_FIELDS if f != field]
    view, html = view_of(published, rest), html_of(published, rest)
    assert not KEYS[field] & set(view)
    assert MARKERS[field] not in html
    assert all(MARKERS[f] in html for f in rest)


def test_events_carry_their_waybill_only_with_the_carrier_field(published):
    without = view_of(published, ["timeline"])["events"]
    assert without and all(set(e) == {"time", "area", "context"} for e in without)
    with_carrier = view_of(published, ["timeline", "carrier"])["events"]
    assert {(e["carrier"], e["waybill_no"]) for e in with_carrier} == {("顺丰速运", WAYBILL)}
    assert "顺丰速运 SF1234567890" in html_of(published, ["timeline", "carrier"])


def test_items_and_amount_in_english(published):
    html = html_of(published, ["items", "amount"], lang="en")
    assert "<dt>Items</dt><dd>2 kinds, 3 pieces</dd>" in html and "<dt>Order amount</dt><dd>¥299.00</dd>" in html


def test_stage_alone_is_the_status_and_progress_without_personal_or_carrier_data(published):
    html = html_of(published, ["stage"])
    assert '<p class="status">配送中</p>' in html and html.count("<li class=") == 6
    for hidden in (WAYBILL, "顺丰", "138****", RAW_PHONE, "张*", FULL_NAME, "南山区", "299", "预计送达", "物流动态"):
        assert hidden not in html, hidden


def test_the_default_is_stage_eta_and_timeline(make_client):
    client = make_client(public_fields=None)
    assert client.web.config.tracking_page.public_fields == DEFAULT_PUBLIC_FIELDS == ("stage", "eta", "timeline")
    r = client.get(link_path(ORDER_IN_TRANSIT))
    assert r.status_code == 200
    html = r.text
    assert all(MARKERS[f] in html for f in DEFAULT_PUBLIC_FIELDS)
    assert not any(MARKERS[f] in html for f in PUBLIC_FIELDS if f not in DEFAULT_PUBLIC_FIELDS)


def test_the_page_serves_html_only_and_nothing_of_a_field_not_chosen(make_client):
    client = make_client(public_fields=["stage"])
    r = client.get(link_path(ORDER_IN_TRANSIT))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<script" not in r.text and "application/json" not in r.text
    for hidden in (WAYBILL, "138****5678", "广东省", "299", "深圳转运中心"):
        assert hidden not in r.text, hidden
    assert client.get(link_path(ORDER_IN_TRANSIT) + "&format=json").content == r.content  # no other rendering


def test_the_chosen_order_of_fields_does_not_matter(published):
    assert html_of(published, ["phone", "stage"]) == html_of(published, ["stage", "phone"])


def config_error(tmp_path, public_fields=None, section=None) -> ConfigError:
    path = write_config(tmp_path, f"sqlite:///{tmp_path / 'w.db'}")
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["tracking_page"] = section if section is not None else {"public_fields": public_fields}
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path)
    return info.value


def test_an_unknown_field_fails_at_load_naming_the_entry_and_the_names(tmp_path):
    e = config_error(tmp_path, ["stage", "eta", "weight"])
    assert e.entry == "tracking_page.public_fields[2]"
    assert "unknown field 'weight'" in e.problem
    assert e.fix == "use one of: " + ", ".join(PUBLIC_FIELDS)
    assert str(e).startswith(f"{tmp_path / 'order_pipeline.yaml'}: tracking_page.public_fields[2]: unknown field")


def test_a_familiar_name_for_a_field_says_which_to_write(tmp_path):
    e = config_error(tmp_path, ["waybill"])
    assert e.entry == "tracking_page.public_fields[0]" and e.fix.startswith("write `carrier` instead")
    assert "stage, next_step, eta" in e.fix


@pytest.mark.parametrize(
    "fields, entry, problem",
    [
        ("stage, eta", "tracking_page.public_fields", "must be a list"),
        ([], "tracking_page.public_fields", "lists no field"),
        (["stage", "stage"], "tracking_page.public_fields[1]", "listed twice"),
        (["stage", 3], "tracking_page.public_fields[1]", "unknown field 3"),
        (["Stage"], "tracking_page.public_fields[0]", "unknown field 'Stage'"),
    ],
)
def test_a_list_that_is_not_one_of_fields_fails_at_load(tmp_path, fields, entry, problem):
    e = config_error(tmp_path, fields)
    assert e.entry == entry and problem in e.problem


def test_an_unknown_setting_of_the_section_fails_at_load(tmp_path):
    e = config_error(tmp_path, section={"public_field": ["stage"]})
    assert e.entry == "tracking_page.public_field" and e.problem == "unknown setting"


def test_every_field_listed_loads(tmp_path):
    path = write_config(tmp_path, f"sqlite:///{tmp_path / 'w.db'}", public_fields=list(reversed(ALL_PUBLIC_FIELDS)))
    assert load_config(path).tracking_page.public_fields == tuple(reversed(ALL_PUBLIC_FIELDS))
