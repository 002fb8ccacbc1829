"""Configured rules and alert settings: merged over the defaults; each mistake names its file, entry and fix."""

from __future__ import annotations

from datetime import timedelta

import pytest
from helpers import make_config

from order_pipeline.alerts.rules.parser import parse_rules
from order_pipeline.alerts.settings import BUILTIN_GROUPS, load_alert_settings
from order_pipeline.contract.config import ConfigError
from order_pipeline.contract.roles import ROLE_LABELS
from order_pipeline.domain.stages import MISSING_FACTS, NEXT_OWNER


def test_configured_rules_merge_over_the_defaults():
    rules = parse_rules(
        {
            "stuck_parcel": {
                "when": {"stage": {"in": ["in_transit"]}, "last_carrier_update_at": {"older_than": "24h"}},
                "cooldown": "6h",
            },
            "promise_due_not_shipped": {"enabled": False},
            "big_unpaid": {
                "title": "大额未付款",
                "scope": "order",
                "notify": ["finance"],
                "severity": "info",
                "when": {"amount": {"ge": 10000}, "stage": {"eq": "ordered"}, "ordered_at": {"older_than": "30m"}},
                "message": "订单 {order_no} 金额 {amount} 已等待 {waited}",
            },
        },
        "x.yaml",
    )
    by_id = {r.id: r for r in rules}
    assert set(by_id) == {"paid_not_locked", "stock_below_safety", "stuck_parcel", "big_unpaid"}
    assert by_id["stuck_parcel"].cooldown == timedelta(hours=6)
    assert by_id["stuck_parcel"].notify == ("customer_service",)  # kept from the default
    assert by_id["big_unpaid"].condition_text == "amount ge 10000 and stage eq ordered and ordered_at older_than 30m"


# (rules section, entry, words of the problem, words of the fix)
RULE_MISTAKES = [
    (
        {"paid_not_locked": {"notfy": ["warehouse"]}},
        "rules.paid_not_locked.notfy",
        "unknown rule field",
        "use one of",
    ),
    (
        {"paid_not_locked": {"when": {"paid_at": {"older": "2h"}}}},
        "rules.paid_not_locked.when.paid_at.older",
        "unknown operator",
        "older_than",
    ),
    (
        {"paid_not_locked": {"when": {"paid_at": {"older_than": "2 hours"}}}},
        "rules.paid_not_locked.when.paid_at.older_than",
        "'2 hours' is not a duration",
        "e.g. 90s, 30m, 2h, 1d",
    ),
    (
        {"paid_not_locked": {"when": {"payed_at": {"older_than": "2h"}}}},
        "rules.paid_not_locked.when.payed_at",
        "unknown field",
        "paid_at",
    ),
    (
        {"paid_not_locked": {"notify": ["warehose"]}},
        "rules.paid_not_locked.notify",
        "unknown channel or group 'warehose'",
        "warehouse",
    ),
    ({"paid_not_locked": {"cooldown": "soon"}}, "rules.paid_not_locked.cooldown", "'soon' is not a duration", "2h"),
    (
        {"paid_not_locked": {"when": {"stage": {"eq": "payed"}}}},
        "rules.paid_not_locked.when.stage.eq",
        "unknown stage 'payed'",
        "paid",
    ),
    (
        {"paid_not_locked": {"when": {"amount": {"older_than": "2h"}}}},
        "rules.paid_not_locked.when.amount.older_than",
        "older_than needs a time field",
        "paid_at",
    ),
    (
        {"paid_not_locked": {"message": "订单 {order_number}"}},
        "rules.paid_not_locked.message",
        "unknown placeholder {order_number}",
        "order_no",
    ),
    (
        {"new_rule": {"title": "x", "scope": "order", "notify": ["warehouse"]}},
        "rules.new_rule.when",
        "missing",
        "when:",
    ),
    (
        {"new_rule": {"title": "x", "scope": "shop", "notify": ["warehouse"], "when": {"sku": {"eq": "A"}}}},
        "rules.new_rule.scope",
        "unknown scope 'shop'",
        "order, sku",
    ),
    (
        {"paid_not_locked": {"when": {"promised_date": {"within_next": "36h"}}}},
        "rules.paid_not_locked.when.promised_date.within_next",
        "takes whole days",
        "1d",
    ),
]


@pytest.mark.parametrize("rule, entry, problem, fix", RULE_MISTAKES)
def test_rule_mistakes_name_the_file_the_rule_and_the_fix(tmp_path, rule, entry, problem, fix):
    config = make_config(tmp_path, "sqlite://", rules=rule)
    with pytest.raises(ConfigError) as err:
        load_alert_settings(config)
    e = err.value
    assert (e.file, e.entry) == (str(config.path), entry)
    assert problem in e.problem
    assert fix in e.fix
    assert str(e).startswith(f"{config.path}: {entry}: ")


def test_rule_may_notify_a_configured_channel_or_group(tmp_path):
    config = make_config(
        tmp_path,
        "sqlite://",
        channels={"ops_mail": {"type": "outbox"}},
        alerts={"groups": {"night_shift": {"channels": ["ops_mail"]}}},
        rules={"paid_not_locked": {"notify": ["night_shift", "ops_mail"]}},
    )
    rules = {r.id: r for r in load_alert_settings(config).rules}
    assert rules["paid_not_locked"].notify == ("night_shift", "ops_mail")


def test_the_default_rules_notify_built_in_groups_that_have_labels():
    # A config without `alerts.groups` must load: every default target is a built-in group.
    rules = parse_rules(None, "x.yaml", targets=BUILTIN_GROUPS)
    targets = {t for r in rules for t in r.notify}
    assert targets == {"warehouse", "purchasing", "customer_service", "ops_lead"}
    assert all(g in ROLE_LABELS for g in BUILTIN_GROUPS)
    # Whoever an order waits for has a label, in the summary, the messages and the web pages alike.
    owners = {o for o in NEXT_OWNER.values() if o} | {owner for _, owner in MISSING_FACTS.values()}
    assert owners <= set(ROLE_LABELS)
    assert (ROLE_LABELS["carrier"], ROLE_LABELS["ops_lead"]) == ("快递公司", "运营负责人")


@pytest.mark.parametrize(
    "sections, entry, problem",
    [
        ({"alerts": {"cooldwn": "2h"}}, "alerts.cooldwn", "unknown setting"),
        ({"alerts": {"cooldown": "two hours"}}, "alerts.cooldown", "'two hours' is not a duration"),
        (
            {"alerts": {"groups": {"warehouse": {"channels": ["wecom_wh"]}}}},
            "alerts.groups.warehouse.channels",
            "unknown channel 'wecom_wh'",
        ),
        ({"alerts": {"escalate_to": ["ops_leed"]}}, "alerts.escalate_to", "unknown group or channel 'ops_leed'"),
        ({"freshness": {"carrier": "2 hours"}}, "freshness.carrier", "'2 hours' is not a duration"),
        ({"freshness": {"orders": "5m"}}, "freshness.orders", "source 'orders' is not configured"),
        ({"alerts": {"tracking_links": {"channel": "outbox"}}}, "alerts.tracking_links", "no longer go through"),
    ],
)
def test_alert_section_mistakes_name_the_entry(tmp_path, sections, entry, problem):
    with pytest.raises(ConfigError) as err:
        load_alert_settings(make_config(tmp_path, "sqlite://", **sections))
    assert err.value.entry == entry
    assert problem in err.value.problem


def test_without_configuration_every_group_goes_to_the_outbox(tmp_path):
    settings = load_alert_settings(make_config(tmp_path, "sqlite://"))
    assert [r.id for r in settings.rules] == [
        "paid_not_locked",
        "stock_below_safety",
        "stuck_parcel",
        "promise_due_not_shipped",
    ]
    for group in ("warehouse", "purchasing", "customer_service", "ops_lead", "data"):
        assert settings.route(group) == [("outbox", ())]
    assert [s.source for s in settings.freshness] == ["carrier"]  # sources come with their config
