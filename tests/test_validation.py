"""Contract-breaking rows are rejected with their reason and raw row; the rest come out typed."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from order_pipeline.contract.canonical import ORDER_LINES, ORDERS, PAYMENTS
from order_pipeline.domain.validation import parse_timestamps, validate


def order(**overrides) -> dict:
    row = {
        "order_no": "SO1",
        "customer_name": "张三",
        "customer_phone": "13812341234",
        "customer_id_no": None,
        "ship_address": "浙江省杭州市西湖区",
        "amount": "100.5",
        "currency": "CNY",
        "ordered_at": "2026-11-25 10:00:00",
        "promised_date": "2026-11-28",
        "status": "open",
        "updated_at": "2026-11-25 10:00:00",
    }
    return {**row, **overrides}


def payment(**overrides) -> dict:
    row = {
        "payment_id": "P1",
        "order_no": "SO1",
        "amount": 10,
        "paid_at": "2026-11-25 10:00:00",
        "voucher_no": "V1",
        "status": "paid",
        "updated_at": "2026-11-25 10:00:00",
    }
    return {**row, **overrides}


def check(entity, rows, names=None):
    return validate(entity, pd.DataFrame(rows), "Asia/Shanghai", names)


def test_good_rows_are_typed_and_naive_times_are_read_in_the_source_zone():
    good, rejects = check(ORDERS, [order()])
    assert rejects.empty
    row = good.iloc[0]
    assert row["amount"] == 100.5
    assert row["ordered_at"] == pd.Timestamp("2026-11-25 02:00:00", tz="UTC")
    assert row["promised_date"] == pd.Timestamp("2026-11-28")


def test_blank_text_is_no_value_in_any_column():
    good, rejects = check(ORDERS, [order(promised_date="  "), order(order_no="SO2", promised_date="", amount=" ")])
    assert good["promised_date"].isna().all() and list(good["order_no"]) == ["SO1"]
    assert list(rejects["reason"]) == ["missing amount"]


def test_times_with_an_offset_keep_it():
    parsed = parse_timestamps(pd.Series(["2026-11-25T10:00:00+00:00"]), "Asia/Shanghai")
    assert parsed.iloc[0] == pd.Timestamp("2026-11-25 10:00", tz="UTC")


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({"order_no": None}, "missing order_no"),
        ({"order_no": "  "}, "missing order_no"),
        ({"amount": "-1"}, "negative amount"),
        ({"amount": "lots"}, "amount is not a number"),
        ({"ordered_at": "2026-13-45 99:00"}, "unparseable ordered_at"),
        ({"status": "shipped"}, "unknown status"),
    ],
)
def test_each_broken_order_is_rejected_with_its_reason(overrides, reason):
    good, rejects = check(ORDERS, [order(order_no="SO0"), order(**overrides)])
    assert list(good["order_no"]) == ["SO0"]
    assert list(rejects["reason"]) == [reason]


def test_a_row_breaking_two_rules_lists_both_reasons():
    _, rejects = check(ORDERS, [order(amount="-5", status="?")])
    assert rejects.iloc[0]["reason"] == "negative amount; unknown status"


def test_statuses_are_read_case_insensitively():
    good, _ = check(ORDERS, [order(status="Cancelled")])
    assert good.iloc[0]["status"] == "cancelled"


def test_reject_keeps_the_raw_row_under_the_source_names():
    _, rejects = check(PAYMENTS, [payment(amount=-3)], names={"amount": "金额", "payment_id": "收款单号"})
    raw = json.loads(rejects.iloc[0]["raw_row"])
    assert raw["金额"] == "-3" and raw["收款单号"] == "P1"
    assert rejects.iloc[0]["record_key"] == "P1"


def test_a_row_without_its_key_is_still_named():
    _, rejects = check(ORDERS, [order(order_no=None), order(order_no=None, customer_name="李四")])
    keys = list(rejects["record_key"])
    assert all(k.startswith("row:") for k in keys) and keys[0] != keys[1]


def test_a_keyless_rows_name_is_the_hash_of_its_text_but_its_key_and_time():
    """Stored rejects are matched by this name: the row fixed, or touched again, keeps it."""
    rows = [order(order_no=None)]
    _, rejects = check(ORDERS, rows)
    text = pd.DataFrame(rows).drop(columns=["order_no", "updated_at"]).astype(str)
    assert rejects.iloc[0]["record_key"] == f"row:{pd.util.hash_pandas_object(text, index=False).iloc[0]:016x}"
    _, touched = check(ORDERS, [order(order_no=None, updated_at="2026-11-25 11:00:00")])
    assert touched.iloc[0]["record_key"] == rejects.iloc[0]["record_key"]


def test_identical_duplicates_are_one_row():
    good, rejects = check(PAYMENTS, [payment(), payment()])
    assert len(good) == 1 and rejects.empty


def test_conflicting_duplicates_at_the_same_watermark_are_all_rejected():
    good, rejects = check(PAYMENTS, [payment(amount=10), payment(amount=99), payment(payment_id="P2")])
    assert list(good["payment_id"]) == ["P2"]
    assert list(rejects["reason"]) == ["duplicate payment_id with conflicting values"] * 2


def test_newer_version_of_a_row_wins_over_an_older_one():
    good, rejects = check(PAYMENTS, [payment(amount=99, updated_at="2026-11-25 11:00:00"), payment(amount=10)])
    assert rejects.empty and list(good["amount"]) == [99.0]


def test_two_lines_of_the_same_sku_add_up():
    good, rejects = check(
        ORDER_LINES,
        [
            {"order_no": "SO1", "sku": "A", "qty": 1, "unit_price": 2},
            {"order_no": "SO1", "sku": "A", "qty": 3, "unit_price": 0},
            {"order_no": "SO1", "sku": "B", "qty": 1, "unit_price": 5},
        ],
    )
    assert rejects.empty
    assert good.set_index("sku")["qty"].to_dict() == {"A": 4.0, "B": 1.0}
