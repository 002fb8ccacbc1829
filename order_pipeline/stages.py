"""Lifecycle stage derivation: the heart of the unified order view.

Pure, vectorized functions over DataFrames (no I/O, no Dagster). Given the rows
of every source for a set of orders, `derive_orders` returns one row per order:
its stage, the time it reached each stage, what is missing, who owns the next
step and since when the order has waited.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import pandas as pd

from .kuaidi100 import STATE_CATEGORY, label

HAPPY_PATH = ("ordered", "paid", "locked", "shipped", "in_transit", "delivered")
STAGE_LABELS = {
    "ordered": "下单完成", "paid": "支付确认", "locked": "库存锁定", "shipped": "打包出库",
    "in_transit": "配送中", "delivered": "签收完成", "cancelled": "已取消", "exception": "配送异常",
}
STAGE_LABELS_EN = {
    "ordered": "Ordered", "paid": "Paid", "locked": "Stock locked", "shipped": "Shipped",
    "in_transit": "In transit", "delivered": "Delivered", "cancelled": "Cancelled", "exception": "Delivery problem",
}
# Who owns the step that moves an order out of its stage.
NEXT_OWNER = {
    "ordered": "finance", "paid": "warehouse", "locked": "logistics", "shipped": "carrier",
    "in_transit": "carrier", "delivered": None, "exception": "customer_service", "cancelled": None,
}
# Facts an order must have once it reached a stage: (code, stage it belongs to, owner).
MISSING_FACTS = {
    "order_lines": ("ordered", "sales"),
    "payment": ("paid", "finance"),
    "voucher_no": ("paid", "finance"),
    "stock_lock": ("locked", "warehouse"),
    "waybill_weight": ("shipped", "logistics"),
    "carrier_tracking": ("shipped", "logistics"),
    "current_location": ("in_transit", "carrier"),
    "proof_of_delivery": ("delivered", "carrier"),
    "refund": ("cancelled", "finance"),
}
MISSING_LABELS = {
    "order_lines": "缺订单明细", "payment": "未确认付款", "voucher_no": "缺付款凭证号", "stock_lock": "未锁定库存",
    "waybill_weight": "缺包裹重量", "carrier_tracking": "无物流轨迹", "current_location": "缺当前位置",
    "proof_of_delivery": "缺签收人", "refund": "已付款待退款",
}

EXCEPTION_STATES = frozenset(s for s, c in STATE_CATEGORY.items() if c == "exception")
TRANSIT_STATES = frozenset(s for s, c in STATE_CATEGORY.items() if c == "in_transit")
SIGNED_STATE = 3
OUT_FOR_DELIVERY_STATE = 5
AMOUNT_TOLERANCE = 0.005  # money is compared to the cent


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


@dataclass
class OrderInputs:
    """Canonical rows of every source, restricted to the orders being derived."""

    orders: pd.DataFrame
    lines: pd.DataFrame = field(default_factory=lambda: _empty(["order_no", "sku", "qty"]))
    payments: pd.DataFrame = field(default_factory=lambda: _empty(["order_no", "amount", "paid_at", "voucher_no", "status"]))
    reservations: pd.DataFrame = field(default_factory=lambda: _empty(["order_no", "sku", "qty", "status", "locked_at"]))
    shipments: pd.DataFrame = field(default_factory=lambda: _empty(["order_no", "waybill_no", "carrier_code", "weight_kg", "shipped_at"]))
    tracking: pd.DataFrame = field(default_factory=lambda: _empty(
        ["waybill_no", "state", "is_signed", "first_event_at", "last_event_at", "last_context", "last_area"]))
    deliveries: pd.DataFrame = field(default_factory=lambda: _empty(["waybill_no", "signer", "signed_at"]))


def derive_orders(inp: OrderInputs, transit_days: int = 3) -> pd.DataFrame:
    o = inp.orders.drop_duplicates("order_no").set_index("order_no")
    idx = o.index
    out = pd.DataFrame(index=idx)
    for col in ("customer_name", "customer_phone", "ship_address", "amount", "currency", "ordered_at",
                "promised_date", "status"):
        out[col] = o[col] if col in o else None
    out["phone_tail"] = out["customer_phone"].astype("string").str.replace(r"\D", "", regex=True).str[-4:]
    out["source_updated_at"] = o["updated_at"] if "updated_at" in o else pd.NaT
    amount = pd.to_numeric(out["amount"], errors="coerce").fillna(0.0)

    # Payments: an order is paid when its paid payments cover the amount.
    pay = inp.payments[inp.payments["order_no"].isin(idx)]
    paid_rows = pay[pay["status"] == "paid"]
    out["paid_amount"] = paid_rows.groupby("order_no")["amount"].sum().reindex(idx).fillna(0.0)
    out["refunded_amount"] = pay[pay["status"] == "refunded"].groupby("order_no")["amount"].sum().reindex(idx).fillna(0.0)
    is_paid = out["paid_amount"] >= amount - AMOUNT_TOLERANCE
    out["paid_at"] = paid_rows.groupby("order_no")["paid_at"].max().reindex(idx).where(is_paid)
    out["voucher_no"] = _join_by(paid_rows, "voucher_no").reindex(idx)

    # Lines and reservations: locked when active reservations cover every line.
    lines = inp.lines[inp.lines["order_no"].isin(idx)]
    need = lines.groupby(["order_no", "sku"])["qty"].sum()
    out["line_count"] = lines.groupby("order_no").size().reindex(idx).fillna(0).astype(int)
    out["total_qty"] = lines.groupby("order_no")["qty"].sum().reindex(idx).fillna(0.0)
    res = inp.reservations[(inp.reservations["status"] == "locked") & inp.reservations["order_no"].isin(idx)]
    have = res.groupby(["order_no", "sku"])["qty"].sum().reindex(need.index).fillna(0.0)
    short_orders = need.index[(have < need).to_numpy()].get_level_values("order_no").unique()
    is_locked = (out["line_count"] > 0) & ~idx.isin(short_orders)
    out["locked_at"] = res.groupby("order_no")["locked_at"].max().reindex(idx).where(is_locked)

    parcels = _parcels(inp, idx)
    g = parcels.groupby("order_no")
    out["parcel_count"] = g.size().reindex(idx).fillna(0).astype(int)
    out["parcels_signed"] = g["signed"].sum().reindex(idx).fillna(0).astype(int)
    out["waybill_nos"] = _join_by(parcels, "waybill_no").reindex(idx)
    out["carrier_codes"] = _join_by(parcels, "carrier_code").reindex(idx)
    out["total_weight_kg"] = g["weight_kg"].sum(min_count=1).reindex(idx)
    out["shipped_at"] = g["shipped_at"].min().reindex(idx)
    out["in_transit_at"] = g["first_event_at"].min().reindex(idx)
    any_exception = g["exception"].any().reindex(idx).fillna(False).astype(bool)
    any_transit = g["moving"].any().reindex(idx).fillna(False).astype(bool)
    out["out_for_delivery"] = g["out_for_delivery"].any().reindex(idx).fillna(False).astype(bool)
    weight_missing = parcels["weight_kg"].isna().groupby(parcels["order_no"]).any().reindex(idx).fillna(False).astype(bool)
    untracked = (~g["tracked"].all()).reindex(idx).fillna(False).astype(bool)

    latest = parcels.sort_values("last_event_at", na_position="first").drop_duplicates("order_no", keep="last")
    latest = latest.set_index("order_no").reindex(idx)
    out["carrier_state"] = latest["state"].astype("Int64")
    out["latest_event_at"] = latest["last_event_at"]
    out["latest_event_context"] = latest["last_context"]
    out["latest_event_area"] = latest["last_area"]
    exc = parcels[parcels["exception"]].drop_duplicates("order_no", keep="last").set_index("order_no")
    reasons = pd.Series([f"{label(int(st))}: {ctx if isinstance(ctx, str) else ''}"
                         for st, ctx in zip(exc["state"], exc["last_context"])], index=exc.index, dtype=object)
    out["exception_reason"] = reasons.reindex(idx)  # exceptions are few: a Python loop over them is fine
    out["signer"] = _join_by(parcels, "signer").reindex(idx)

    has_parcels = out["parcel_count"] > 0
    all_signed = has_parcels & (out["parcels_signed"] == out["parcel_count"])
    stage = np.select(
        [out["status"].eq("cancelled"), any_exception & ~all_signed, all_signed,
         has_parcels & (any_transit | (out["parcels_signed"] > 0)), has_parcels, is_locked, is_paid],
        ["cancelled", "exception", "delivered", "in_transit", "shipped", "locked", "paid"],
        default="ordered",
    )
    out["stage"] = stage
    out["stage_label"] = out["stage"].map(STAGE_LABELS)
    out["delivered_at"] = g["signed_at"].max().reindex(idx).where(all_signed)
    out["in_transit_at"] = out["in_transit_at"].where(out["stage"].isin(["in_transit", "delivered", "exception"]))

    rank = out["stage"].map({s: i for i, s in enumerate(HAPPY_PATH)}).fillna(-1)
    rank = rank.where(out["stage"] != "exception", HAPPY_PATH.index("in_transit"))
    reached = {s: rank >= i for i, s in enumerate(HAPPY_PATH)}
    missing = {
        "order_lines": out["line_count"].eq(0) & out["stage"].ne("cancelled"),
        "payment": reached["paid"] & ~is_paid,
        "voucher_no": reached["paid"] & is_paid & (amount > 0) & out["voucher_no"].isna(),
        "stock_lock": reached["locked"] & ~is_locked,
        "waybill_weight": reached["shipped"] & weight_missing,
        "carrier_tracking": reached["shipped"] & untracked,
        "current_location": out["stage"].eq("in_transit") & out["latest_event_area"].isna(),
        "proof_of_delivery": reached["delivered"] & out["signer"].isna(),
        "refund": out["stage"].eq("cancelled") & (out["paid_amount"] > AMOUNT_TOLERANCE),
    }
    out["missing_info"] = _join_flags(missing, idx)
    first_missing = pd.Series(None, index=idx, dtype=object)
    for code in reversed(list(MISSING_FACTS)):  # earliest stage wins
        first_missing = first_missing.mask(missing[code], MISSING_FACTS[code][1])
    owner = first_missing.fillna(out["stage"].map(NEXT_OWNER))
    out["responsible_role"] = owner.astype(object).where(owner.notna(), None)

    since = {
        "ordered": out["ordered_at"], "paid": out["paid_at"], "locked": out["locked_at"],
        "shipped": out["shipped_at"], "in_transit": out["in_transit_at"], "delivered": out["delivered_at"],
        "exception": out["latest_event_at"], "cancelled": out["source_updated_at"],
    }
    waiting = pd.Series(pd.NaT, index=idx, dtype="datetime64[us, UTC]")
    for s, ts in since.items():
        waiting = waiting.mask(out["stage"].eq(s), _utc(ts))
    out["waiting_since"] = waiting.fillna(_utc(out["ordered_at"]))
    eta = _utc(out["shipped_at"]) + timedelta(days=transit_days)
    out["eta"] = eta.where(out["stage"].isin(["shipped", "in_transit", "exception"]))
    return out.reset_index()


def _parcels(inp: OrderInputs, idx: pd.Index) -> pd.DataFrame:
    """One row per parcel with its carrier facts."""
    s = inp.shipments[inp.shipments["order_no"].isin(idx)]
    t = inp.tracking.drop_duplicates("waybill_no").set_index("waybill_no")
    d = inp.deliveries.drop_duplicates("waybill_no").set_index("waybill_no")
    p = s[["order_no", "waybill_no", "carrier_code", "weight_kg", "shipped_at"]].reset_index(drop=True)
    w = p["waybill_no"]

    def tracking(col: str) -> pd.Series:
        return _lookup(t[col], w)

    state = pd.to_numeric(tracking("state"), errors="coerce")
    pod = w.isin(d.index)
    p["state"] = state
    p["tracked"] = w.isin(t.index) & state.notna()
    p["signed"] = state.eq(SIGNED_STATE) | tracking("is_signed").astype("boolean").fillna(False).astype(bool) | pod
    p["exception"] = state.isin(EXCEPTION_STATES) & ~p["signed"]
    p["moving"] = state.isin(TRANSIT_STATES)
    p["out_for_delivery"] = state.eq(OUT_FOR_DELIVERY_STATE)
    p["first_event_at"] = _utc(tracking("first_event_at"))
    p["last_event_at"] = _utc(tracking("last_event_at"))
    p["last_context"] = tracking("last_context")
    p["last_area"] = tracking("last_area")
    p["signer"] = _lookup(d["signer"], w)
    # A proof of delivery gives the signing time; otherwise the carrier's last event.
    p["signed_at"] = _utc(_lookup(d["signed_at"], w)).fillna(p["last_event_at"].where(p["signed"]))
    return p


def _lookup(values: pd.Series, keys: pd.Series) -> pd.Series:
    """values[key] for each key (NaN/NaT when absent), keeping the values' dtype even when empty."""
    return values.reindex(keys.to_numpy()).set_axis(keys.index)


def _utc(values: pd.Series) -> pd.Series:
    values = pd.to_datetime(values)
    if values.dt.tz is None:
        return values.dt.tz_localize("UTC")
    return values.dt.tz_convert("UTC")


def _join_by(frame: pd.DataFrame, col: str) -> pd.Series:
    """Distinct non-null values of `col` per order, sorted and comma-joined.

    Most orders have one value; only the rest pay for a Python-level join.
    """
    rows = frame[["order_no", col]].dropna().drop_duplicates().sort_values(["order_no", col])
    counts = rows["order_no"].value_counts()
    single = rows[rows["order_no"].map(counts).eq(1)].set_index("order_no")[col].astype(str)
    multi = rows[rows["order_no"].map(counts).gt(1)]
    joined = multi.groupby("order_no")[col].agg(lambda v: ",".join(map(str, v)))
    return pd.concat([single, joined])


def _join_flags(flags: dict[str, pd.Series], idx: pd.Index) -> pd.Series:
    """{code: bool Series} -> "code1;code2" per row, vectorized over codes not rows."""
    joined = pd.Series("", index=idx, dtype=object)
    for code, mask in flags.items():
        mask = mask.fillna(False).astype(bool).to_numpy()
        joined = joined.where(~mask, joined + np.where(joined.eq(""), code, ";" + code))
    return joined.where(joined.ne(""), None)
