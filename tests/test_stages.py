"""Stage derivation on hand-written orders: one case per stage and per edge case."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from order_pipeline.domain.stages import OrderInputs, derive_orders

T0 = pd.Timestamp("2026-11-20 02:00", tz="UTC")


def h(hours: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(hours=hours)


class Order:
    """Builder for one order's rows across every source."""

    def __init__(self, amount=100.0, status="open", lines=(("SKU-1", 2),)):
        self.order = {
            "order_no": "SO1",
            "customer_name": "张三",
            "customer_phone": "13812341234",
            "ship_address": "浙江省杭州市西湖区文三路1号",
            "amount": amount,
            "currency": "CNY",
            "ordered_at": h(0),
            "promised_date": None,
            "status": status,
            "updated_at": h(0),
        }
        self.lines = [{"order_no": "SO1", "sku": sku, "qty": qty} for sku, qty in lines]
        self.payments, self.reservations, self.shipments, self.tracking, self.deliveries = [], [], [], [], []

    def pay(self, amount, at: float = 1, status="paid", voucher: str | None = "V1"):
        self.payments.append(
            {"order_no": "SO1", "amount": amount, "paid_at": h(at), "voucher_no": voucher, "status": status}
        )
        return self

    def lock(self, sku="SKU-1", qty=2, at: float = 2, status="locked"):
        self.reservations.append({"order_no": "SO1", "sku": sku, "qty": qty, "status": status, "locked_at": h(at)})
        return self

    def ship(self, waybill="SF1", at: float = 3, weight: float | None = 1.2, carrier="shunfeng"):
        self.shipments.append(
            {
                "order_no": "SO1",
                "waybill_no": waybill,
                "carrier_code": carrier,
                "weight_kg": weight,
                "shipped_at": h(at),
            }
        )
        return self

    def track(
        self,
        waybill="SF1",
        state=0,
        first=4,
        last=5,
        signed=False,
        context="快件已到达 杭州转运中心",
        area: str | None = "浙江省,杭州市",
        arrival: float | None = None,  # the carrier's predicted arrival, hours after the base time
    ):
        self.tracking.append(
            {
                "waybill_no": waybill,
                "state": state,
                "is_signed": signed,
                "first_event_at": h(first),
                "last_event_at": h(last),
                "last_context": context,
                "last_area": area,
                "predicted_arrival": None if arrival is None else h(arrival),
            }
        )
        return self

    def pod(self, waybill="SF1", signer="张三", at=30):
        self.deliveries.append({"waybill_no": waybill, "signer": signer, "signed_at": h(at)})
        return self

    def derive(self) -> dict:
        frames = {}
        for name in ("lines", "payments", "reservations", "shipments", "tracking", "deliveries"):
            rows = getattr(self, name)
            if rows:
                frames[name] = pd.DataFrame(rows)
        row = derive_orders(OrderInputs(orders=pd.DataFrame([self.order]), **frames)).iloc[0].to_dict()
        row["missing"] = set(row["missing_info"].split(";")) if isinstance(row["missing_info"], str) else set()
        return row


def paid_locked() -> Order:
    return Order().pay(100).lock()


def test_new_order_waits_for_finance():
    r = Order().derive()
    assert (r["stage"], r["stage_label"], r["responsible_role"]) == ("ordered", "下单完成", "finance")
    assert r["waiting_since"] == h(0)
    assert r["missing"] == set()


def test_order_without_lines_is_missing_them_and_sales_owns_it():
    r = Order(lines=()).derive()
    assert r["missing"] == {"order_lines"}
    assert r["responsible_role"] == "sales"


@pytest.mark.parametrize(
    "payments, stage",
    [
        ([99.99], "ordered"),  # a cent short: not paid
        ([99.995], "paid"),  # within the cent tolerance
        ([100.0], "paid"),
        ([60.0, 40.0], "paid"),  # partial payments that together cover it
        ([60.0], "ordered"),  # partial payment only
    ],
)
def test_paid_when_paid_payments_cover_the_amount(payments, stage):
    o = Order()
    for i, amount in enumerate(payments):
        o.pay(amount, at=1 + i)
    r = o.derive()
    assert r["stage"] == stage
    if stage == "paid":
        assert r["paid_at"] == h(len(payments))  # the payment that completed it
        assert r["responsible_role"] == "warehouse"


def test_refund_after_payment_falls_back_to_ordered():
    r = Order().pay(100, status="refunded").derive()
    assert r["stage"] == "ordered"
    assert (r["paid_amount"], r["refunded_amount"]) == (0.0, 100.0)


def test_failed_payment_does_not_count():
    assert Order().pay(100, status="failed").derive()["stage"] == "ordered"


def test_paid_without_voucher_is_flagged_for_finance():
    r = Order().pay(100, voucher=None).derive()
    assert r["stage"] == "paid" and r["missing"] == {"voucher_no"} and r["responsible_role"] == "finance"


def test_locked_when_reservations_cover_every_line():
    o = Order(lines=(("SKU-1", 2), ("SKU-2", 1))).pay(100).lock("SKU-1", 2, at=2).lock("SKU-2", 1, at=2.5)
    r = o.derive()
    assert r["stage"] == "locked" and r["locked_at"] == h(2.5) and r["responsible_role"] == "logistics"


@pytest.mark.parametrize(
    "reservations",
    [
        [("SKU-1", 1, "locked")],  # short by one
        [("SKU-1", 2, "released")],  # released does not hold stock
        [("SKU-2", 2, "locked")],  # the wrong SKU
    ],
)
def test_not_locked_when_a_line_is_not_covered(reservations):
    o = Order().pay(100)
    for sku, qty, status in reservations:
        o.lock(sku, qty, status=status)
    assert o.derive()["stage"] == "paid"


def test_shipped_before_pickup_waits_for_the_carrier_and_misses_tracking():
    r = paid_locked().ship().derive()
    assert r["stage"] == "shipped" and r["shipped_at"] == h(3)
    assert r["missing"] == {"carrier_tracking"}
    assert r["responsible_role"] == "logistics"
    assert r["eta"] == h(3) + pd.Timedelta(days=3)


def test_picked_up_is_still_shipped():
    r = paid_locked().ship().track(state=1).derive()
    assert r["stage"] == "shipped" and r["missing"] == set() and r["responsible_role"] == "carrier"


@pytest.mark.parametrize("state", [0, 5, 7, 8, 10, 11, 12, 13])
def test_in_transit_states(state):
    r = paid_locked().ship().track(state=state).derive()
    assert r["stage"] == "in_transit"
    assert r["in_transit_at"] == h(4) and r["waiting_since"] == h(4)
    assert r["out_for_delivery"] == (state == 5)


@pytest.mark.parametrize("state, label", [(2, "疑难"), (4, "退签"), (6, "退回"), (14, "拒签")])
def test_every_exception_state_keeps_its_reason(state, label):
    r = paid_locked().ship().track(state=state, context="收件人电话无人接听").derive()
    assert r["stage"] == "exception" and r["stage_label"] == "配送异常"
    assert r["exception_reason"] == f"{label}: 收件人电话无人接听"
    assert r["responsible_role"] == "customer_service"
    assert r["waiting_since"] == h(5)


def test_the_eta_is_the_carriers_prediction_when_it_sent_one_else_shipped_plus_transit_days():
    own = paid_locked().ship().track(state=0).derive()
    assert own["eta"] == own["shipped_at"] + timedelta(days=3) and own["eta_source"] == "transit_days"
    assert pd.isna(own["carrier_eta"])
    carrier = paid_locked().ship().track(state=0, arrival=40).derive()
    assert carrier["eta"] == carrier["carrier_eta"] == h(40) and carrier["eta_source"] == "carrier"


def test_the_parcel_with_the_newest_event_gives_the_carriers_prediction():
    r = (
        paid_locked()
        .ship("SF1")
        .ship("SF2")
        .track("SF1", state=0, last=5, arrival=30)
        .track("SF2", state=0, last=6, arrival=50)
        .derive()
    )
    assert r["carrier_eta"] == h(50) and r["eta"] == h(50)


def test_a_delivered_order_has_no_eta_even_with_a_carrier_prediction():
    r = paid_locked().ship().track(state=3, signed=True, last=30, arrival=40).derive()
    assert pd.isna(r["eta"]) and r["eta_source"] is None


def test_delivered_when_signed():
    r = paid_locked().ship().track(state=3, signed=True, last=30).pod(at=30).derive()
    assert r["stage"] == "delivered" and r["delivered_at"] == h(30) and r["signer"] == "张三"
    assert r["missing"] == set() and r["responsible_role"] is None and pd.isna(r["eta"])


def test_delivered_without_proof_of_delivery_is_flagged():
    r = paid_locked().ship().track(state=3, signed=True, last=30).derive()
    assert r["stage"] == "delivered" and r["delivered_at"] == h(30)
    assert r["missing"] == {"proof_of_delivery"}


def test_split_parcels_with_one_signed_are_in_transit():
    o = paid_locked().ship("SF1", at=3).ship("SF2", at=4)
    o.track("SF1", state=3, signed=True, last=20).track("SF2", state=0, first=5, last=21)
    r = o.derive()
    assert r["stage"] == "in_transit"
    assert (r["parcel_count"], r["parcels_signed"]) == (2, 1)
    assert r["waybill_nos"] == "SF1,SF2"
    assert r["shipped_at"] == h(3) and r["latest_event_at"] == h(21)


def test_split_parcels_all_signed_are_delivered_at_the_last_signature():
    o = paid_locked().ship("SF1").ship("SF2")
    o.track("SF1", state=3, signed=True, last=20).track("SF2", state=3, signed=True, last=26)
    r = o.derive()
    assert r["stage"] == "delivered" and r["delivered_at"] == h(26)


def test_exception_on_one_parcel_beats_transit_on_another():
    o = paid_locked().ship("SF1").ship("SF2").track("SF1", state=0).track("SF2", state=2, context="地址不详")
    assert o.derive()["stage"] == "exception"


def test_parcel_without_weight_is_missing_it():
    assert paid_locked().ship(weight=None).track(state=0).derive()["missing"] == {"waybill_weight"}


def test_shipped_without_payment_or_lock_names_the_earliest_gap_owner():
    r = Order().ship().track(state=0).derive()
    assert r["stage"] == "in_transit"
    assert r["missing"] == {"payment", "stock_lock"}
    assert r["responsible_role"] == "finance"  # payment comes before the stock lock


def test_in_transit_without_area_misses_location():
    r = paid_locked().ship().track(state=0, area=None).derive()
    assert r["missing"] == {"current_location"} and r["responsible_role"] == "carrier"


def test_cancelled_after_payment_needs_a_refund():
    o = Order(status="cancelled").pay(100)
    o.order["updated_at"] = h(8)
    r = o.derive()
    assert r["stage"] == "cancelled" and r["missing"] == {"refund"} and r["responsible_role"] == "finance"
    assert r["waiting_since"] == h(8)


def test_cancelled_and_refunded_is_settled():
    r = Order(status="cancelled").pay(100, status="refunded").derive()
    assert r["stage"] == "cancelled" and r["missing"] == set() and r["responsible_role"] is None


def test_cancelled_wins_over_a_parcel_on_the_way():
    assert Order(status="cancelled").ship().track(state=0).derive()["stage"] == "cancelled"


def test_phone_tail_is_the_last_four_digits():
    o = Order()
    o.order["customer_phone"] = "+86 138-1234-5678"
    assert o.derive()["phone_tail"] == "5678"


def test_many_orders_at_once_keep_their_own_facts():
    a, b = paid_locked(), Order()
    b.order["order_no"] = "SO2"
    orders = pd.DataFrame([a.order, b.order])
    out = derive_orders(
        OrderInputs(
            orders=orders,
            lines=pd.DataFrame(a.lines),
            payments=pd.DataFrame(a.payments),
            reservations=pd.DataFrame(a.reservations),
        )
    ).set_index("order_no")
    assert out.loc["SO1", "stage"] == "locked"
    assert out.loc["SO2", "stage"] == "ordered" and out.loc["SO2", "missing_info"] == "order_lines"


def test_typed_but_empty_carrier_frames_are_no_carrier_facts():
    """An incremental run reads typed, empty frames for parcels nobody has tracked or signed yet."""
    o = paid_locked().ship()
    ts = pd.Series([], dtype="datetime64[us, UTC]")
    tracking = pd.DataFrame(
        {
            "waybill_no": pd.Series([], dtype=object),
            "state": pd.Series([], dtype=float),
            "is_signed": pd.Series([], dtype=bool),
            "first_event_at": ts,
            "last_event_at": ts,
            "last_context": pd.Series([], dtype=object),
            "last_area": pd.Series([], dtype=object),
            "predicted_arrival": ts,
        }
    )
    deliveries = pd.DataFrame(
        {"waybill_no": pd.Series([], dtype=object), "signer": pd.Series([], dtype=object), "signed_at": ts}
    )
    r = derive_orders(
        OrderInputs(
            orders=pd.DataFrame([o.order]),
            lines=pd.DataFrame(o.lines),
            payments=pd.DataFrame(o.payments),
            reservations=pd.DataFrame(o.reservations),
            shipments=pd.DataFrame(o.shipments),
            tracking=tracking,
            deliveries=deliveries,
        )
    ).iloc[0]
    assert r["stage"] == "shipped" and r["missing_info"] == "carrier_tracking"
