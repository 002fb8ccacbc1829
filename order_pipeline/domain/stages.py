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

from order_pipeline.domain.carrier_states import (
    EXCEPTION_STATES,
    OUT_FOR_DELIVERY_STATE,
    SIGNED_STATE,
    TRANSIT_STATES,
    exception_reason,
)
from order_pipeline.domain.times import utc_series

HAPPY_PATH = ("ordered", "paid", "locked", "shipped", "in_transit", "delivered")
STAGE_LABELS = {
    "ordered": "下单完成",
    "paid": "支付确认",
    "locked": "库存锁定",
    "shipped": "打包出库",
    "in_transit": "配送中",
    "delivered": "签收完成",
    "cancelled": "已取消",
    "exception": "配送异常",
}
# Who owns the step that moves an order out of its stage.
NEXT_OWNER = {
    "ordered": "finance",
    "paid": "warehouse",
    "locked": "logistics",
    "shipped": "carrier",
    "in_transit": "carrier",
    "delivered": None,
    "exception": "customer_service",
    "cancelled": None,
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
    "order_lines": "缺订单明细",
    "payment": "未确认付款",
    "voucher_no": "缺付款凭证号",
    "stock_lock": "未锁定库存",
    "waybill_weight": "缺包裹重量",
    "carrier_tracking": "无物流轨迹",
    "current_location": "缺当前位置",
    "proof_of_delivery": "缺签收人",
    "refund": "已付款待退款",
}

AMOUNT_TOLERANCE = 0.005  # money is compared to the cent


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


# The order's own facts, carried into the unified row as the ERP gave them.
ORDER_FACTS = (
    "customer_name",
    "customer_phone",
    "ship_address",
    "amount",
    "currency",
    "ordered_at",
    "promised_date",
    "status",
)
# What derivation reads of each source (and the keys orphan rows are reported by): `unify` selects these.
INPUT_COLUMNS = {
    "orders": ["order_no", *ORDER_FACTS, "updated_at"],
    "lines": ["order_no", "sku", "qty"],
    "payments": ["payment_id", "order_no", "amount", "paid_at", "voucher_no", "status"],
    "reservations": ["reservation_id", "order_no", "sku", "qty", "status", "locked_at"],
    "shipments": ["order_no", "waybill_no", "carrier_code", "weight_kg", "shipped_at"],
    "tracking": [
        "waybill_no",
        "state",
        "is_signed",
        "first_event_at",
        "last_event_at",
        "last_context",
        "last_area",
        "predicted_arrival",
    ],
    "deliveries": ["waybill_no", "signer", "signed_at"],
}


@dataclass
class OrderInputs:
    """Canonical rows of every source, restricted to the orders being derived."""

    orders: pd.DataFrame
    lines: pd.DataFrame = field(default_factory=lambda: _empty(INPUT_COLUMNS["lines"]))
    payments: pd.DataFrame = field(default_factory=lambda: _empty(INPUT_COLUMNS["payments"]))
    reservations: pd.DataFrame = field(default_factory=lambda: _empty(INPUT_COLUMNS["reservations"]))
    shipments: pd.DataFrame = field(default_factory=lambda: _empty(INPUT_COLUMNS["shipments"]))
    tracking: pd.DataFrame = field(default_factory=lambda: _empty(INPUT_COLUMNS["tracking"]))
    deliveries: pd.DataFrame = field(default_factory=lambda: _empty(INPUT_COLUMNS["deliveries"]))


class _PerOrder:
    """Aggregates rows of a child frame per order through integer positions.

    Order numbers are hashed once per frame; every sum, max or count after that works
    on integers, which is what keeps a million orders in seconds rather than minutes.
    """

    def __init__(self, frame: pd.DataFrame, orders: pd.Index):
        # pandas takes any list-like target; pandas-stubs accept only an Index.
        pos = orders.get_indexer(frame["order_no"])  # pyright: ignore[reportArgumentType]
        keep = pos >= 0
        self.rows = frame[keep].reset_index(drop=True)
        self.pos = pos[keep]
        self.n = len(orders)

    def count(self, mask=None) -> np.ndarray:
        weights = None if mask is None else np.asarray(mask, dtype=float)
        return np.bincount(self.pos, weights=weights, minlength=self.n).astype(int)

    def sum(self, col: str) -> np.ndarray:
        values = self.rows[col].fillna(0).to_numpy(dtype=float)
        return np.bincount(self.pos, weights=values, minlength=self.n)

    def any(self, mask) -> np.ndarray:
        return self.count(mask) > 0

    def agg(self, col: str, how: str) -> pd.Series:
        """min / max of a column per order (NaN or NaT where an order has none)."""
        grouped = pd.Series(self.rows[col].array).groupby(self.pos, sort=False).agg(how)
        return grouped.reindex(pd.RangeIndex(self.n))

    def join(self, col: str) -> pd.Series:
        """Distinct non-null values per order, sorted and comma-joined; most orders have one."""
        rows = pd.DataFrame({"pos": self.pos, "v": self.rows[col].to_numpy(dtype=object)}).dropna().drop_duplicates()
        out = pd.Series(None, index=pd.RangeIndex(self.n), dtype=object)
        counts = np.bincount(rows["pos"], minlength=self.n)
        single = counts[rows["pos"]] == 1
        out.iloc[rows["pos"][single].to_numpy()] = rows["v"][single].astype(str).to_numpy()
        multi = rows[~single].astype({"v": str}).sort_values(["pos", "v"])
        joined = multi.groupby("pos", sort=False)["v"].agg(",".join)
        out.iloc[joined.index.to_numpy()] = joined.to_numpy()
        return out

    def last_by(self, col: str) -> pd.DataFrame:
        """Per order, the row with the greatest `col` (missing values count as oldest)."""
        rows = self.rows.assign(_pos=self.pos).sort_values(["_pos", col], na_position="first")
        return rows.drop_duplicates("_pos", keep="last").set_index("_pos").reindex(pd.RangeIndex(self.n))


def derive_orders(inp: OrderInputs, transit_days: int = 3) -> pd.DataFrame:
    """One row per order: its facts, its stage, what is missing, who owns the next step, since when."""
    o = inp.orders.drop_duplicates("order_no").reset_index(drop=True)
    orders = pd.Index(o["order_no"])
    out = _order_facts(o)
    amount = pd.to_numeric(out["amount"], errors="coerce").fillna(0.0)
    is_paid = _payment_facts(out, inp, orders, amount)
    is_locked = _lock_facts(out, inp, orders)
    parcels = _PerOrder(_parcels(inp), orders)
    flags = _parcel_facts(out, parcels)
    _stage(out, parcels, flags, is_paid, is_locked)
    _missing_and_owner(out, flags, amount, is_paid, is_locked)
    _waiting_and_eta(out, transit_days)
    return out


@dataclass(frozen=True)
class _ParcelFlags:
    """What an order's parcels say about it, per order."""

    any_exception: np.ndarray
    any_transit: np.ndarray
    weight_missing: np.ndarray
    untracked: np.ndarray
    in_transit_at: pd.Series  # the first carrier event of any parcel


def _order_facts(o: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({"order_no": o["order_no"]})
    for col in ORDER_FACTS:
        out[col] = o.get(col)
    out["phone_tail"] = out["customer_phone"].astype("string").str.replace(r"\D", "", regex=True).str[-4:]
    out["source_updated_at"] = o.get("updated_at", pd.NaT)
    return out


def _payment_facts(out: pd.DataFrame, inp: OrderInputs, orders: pd.Index, amount: pd.Series) -> pd.Series:
    """An order is paid when its paid payments cover the amount."""
    pay = inp.payments
    paid = _PerOrder(pay[pay["status"] == "paid"], orders)
    out["paid_amount"] = paid.sum("amount")
    out["refunded_amount"] = _PerOrder(pay[pay["status"] == "refunded"], orders).sum("amount")
    is_paid = out["paid_amount"] >= amount - AMOUNT_TOLERANCE
    out["paid_at"] = paid.agg("paid_at", "max").where(is_paid)
    out["voucher_no"] = paid.join("voucher_no")
    return is_paid


def _lock_facts(out: pd.DataFrame, inp: OrderInputs, orders: pd.Index) -> pd.Series:
    """Locked when active reservations cover every line."""
    lines = _PerOrder(inp.lines, orders)
    out["line_count"] = lines.count()
    out["total_qty"] = lines.sum("qty")
    res = _PerOrder(inp.reservations[inp.reservations["status"] == "locked"], orders)
    is_locked = (out["line_count"] > 0) & ~_short_of_stock(lines, res)
    out["locked_at"] = res.agg("locked_at", "max").where(is_locked)
    return is_locked


def _parcel_facts(out: pd.DataFrame, parcels: _PerOrder) -> _ParcelFlags:
    p = parcels.rows
    out["parcel_count"] = parcels.count()
    out["parcels_signed"] = parcels.count(p["signed"])
    out["waybill_nos"] = parcels.join("waybill_no")
    out["carrier_codes"] = parcels.join("carrier_code")
    out["total_weight_kg"] = pd.Series(parcels.sum("weight_kg")).where(parcels.any(p["weight_kg"].notna()))
    out["shipped_at"] = parcels.agg("shipped_at", "min")
    out["out_for_delivery"] = parcels.any(p["out_for_delivery"])

    # The parcel with the newest carrier event speaks for the order.
    latest = parcels.last_by("last_event_at")
    out["carrier_state"] = latest["state"].astype("Int64")
    out["latest_event_at"] = latest["last_event_at"]
    out["latest_event_context"] = latest["last_context"]
    out["latest_event_area"] = latest["last_area"]
    out["carrier_eta"] = latest["predicted_arrival"]
    exc = p.assign(_pos=parcels.pos)[p["exception"]].drop_duplicates("_pos", keep="last")
    out["exception_reason"] = pd.Series(  # exceptions are few: a Python loop over them is fine
        [
            exception_reason(int(st), ctx if isinstance(ctx, str) else None)
            for st, ctx in zip(exc["state"], exc["last_context"], strict=True)
        ],
        index=exc["_pos"].to_numpy(),
        dtype=object,
    ).reindex(out.index)
    out["signer"] = parcels.join("signer")
    return _ParcelFlags(
        any_exception=parcels.any(p["exception"]),
        any_transit=parcels.any(p["moving"]),
        weight_missing=parcels.any(p["weight_kg"].isna()),
        untracked=parcels.any(~p["tracked"]),
        in_transit_at=parcels.agg("first_event_at", "min"),
    )


def _stage(
    out: pd.DataFrame, parcels: _PerOrder, flags: _ParcelFlags, is_paid: pd.Series, is_locked: pd.Series
) -> None:
    has_parcels = out["parcel_count"] > 0
    all_signed = has_parcels & (out["parcels_signed"] == out["parcel_count"])
    stage = np.select(
        [
            out["status"].eq("cancelled"),
            flags.any_exception & ~all_signed,
            all_signed,
            has_parcels & (flags.any_transit | (out["parcels_signed"] > 0)),
            has_parcels,
            is_locked,
            is_paid,
        ],
        ["cancelled", "exception", "delivered", "in_transit", "shipped", "locked", "paid"],
        default="ordered",
    )
    out["stage"] = stage
    out["stage_label"] = out["stage"].map(STAGE_LABELS)
    out["delivered_at"] = parcels.agg("signed_at", "max").where(all_signed)
    out["in_transit_at"] = flags.in_transit_at.where(out["stage"].isin(["in_transit", "delivered", "exception"]))


def _missing_and_owner(
    out: pd.DataFrame, flags: _ParcelFlags, amount: pd.Series, is_paid: pd.Series, is_locked: pd.Series
) -> None:
    """The facts missing for the stages reached, and who owns the earliest one (else the next step)."""
    rank = out["stage"].map({s: i for i, s in enumerate(HAPPY_PATH)}).fillna(-1)
    rank = rank.where(out["stage"] != "exception", HAPPY_PATH.index("in_transit"))
    reached = {s: rank >= i for i, s in enumerate(HAPPY_PATH)}
    missing = {
        "order_lines": out["line_count"].eq(0) & out["stage"].ne("cancelled"),
        "payment": reached["paid"] & ~is_paid,
        "voucher_no": reached["paid"] & is_paid & (amount > 0) & out["voucher_no"].isna(),
        "stock_lock": reached["locked"] & ~is_locked,
        "waybill_weight": reached["shipped"] & flags.weight_missing,
        "carrier_tracking": reached["shipped"] & flags.untracked,
        "current_location": out["stage"].eq("in_transit") & out["latest_event_area"].isna(),
        "proof_of_delivery": reached["delivered"] & out["signer"].isna(),
        "refund": out["stage"].eq("cancelled") & (out["paid_amount"] > AMOUNT_TOLERANCE),
    }
    out["missing_info"] = _join_flags(missing, out.index)
    first_missing = pd.Series(None, index=out.index, dtype=object)
    for code in reversed(list(MISSING_FACTS)):  # earliest stage wins
        first_missing = first_missing.mask(missing[code], MISSING_FACTS[code][1])
    owner = first_missing.fillna(out["stage"].map(NEXT_OWNER))
    out["responsible_role"] = owner.astype(object).where(owner.notna(), None)


def _waiting_and_eta(out: pd.DataFrame, transit_days: int) -> None:
    """Since when the order waits in its stage, and the ETA while a parcel travels."""
    since = {
        "ordered": out["ordered_at"],
        "paid": out["paid_at"],
        "locked": out["locked_at"],
        "shipped": out["shipped_at"],
        "in_transit": out["in_transit_at"],
        "delivered": out["delivered_at"],
        "exception": out["latest_event_at"],
        "cancelled": out["source_updated_at"],
    }
    waiting = pd.Series(pd.NaT, index=out.index, dtype="datetime64[us, UTC]")
    for s, ts in since.items():
        waiting = waiting.mask(out["stage"].eq(s), utc_series(ts))
    out["waiting_since"] = waiting.fillna(utc_series(out["ordered_at"]))
    travelling = out["stage"].isin(["shipped", "in_transit", "exception"])
    carrier = utc_series(out["carrier_eta"])
    default = utc_series(out["shipped_at"]) + timedelta(days=transit_days)
    out["eta"] = carrier.fillna(default).where(travelling)
    source = pd.Series(np.where(carrier.notna(), "carrier", "transit_days"), index=out.index, dtype=object)
    out["eta_source"] = source.where(out["eta"].notna(), None)


def _short_of_stock(lines: _PerOrder, res: _PerOrder) -> np.ndarray:
    """Per order: does some line need more of its SKU than the order's active reservations hold?"""
    skus, _ = pd.factorize(pd.concat([lines.rows["sku"], res.rows["sku"]], ignore_index=True))
    width = int(skus.max()) + 1 if len(skus) else 1
    need_key = lines.pos.astype(np.int64) * width + skus[: len(lines.pos)]
    have_key = res.pos.astype(np.int64) * width + skus[len(lines.pos) :]
    need = pd.Series(lines.rows["qty"].to_numpy(dtype=float)).groupby(need_key).sum()
    have = pd.Series(res.rows["qty"].to_numpy(dtype=float)).groupby(have_key).sum().reindex(need.index).fillna(0.0)
    short = np.zeros(lines.n, dtype=bool)
    short[need.index[(have < need).to_numpy()].to_numpy() // width] = True
    return short


def _parcels(inp: OrderInputs) -> pd.DataFrame:
    """One row per parcel with its carrier facts."""
    t = inp.tracking.drop_duplicates("waybill_no").set_index("waybill_no")
    d = inp.deliveries.drop_duplicates("waybill_no").set_index("waybill_no")
    p = inp.shipments[["order_no", "waybill_no", "carrier_code", "weight_kg", "shipped_at"]].reset_index(drop=True)
    # Each waybill number is hashed once per table (pandas takes any list-like target; pandas-stubs only an Index).
    at_t = t.index.get_indexer(p["waybill_no"])  # pyright: ignore[reportArgumentType]
    at_d = d.index.get_indexer(p["waybill_no"])  # pyright: ignore[reportArgumentType]

    def take(frame: pd.DataFrame, col: str, at: np.ndarray) -> pd.Series:
        """frame[col] at positions `at`, missing where -1, keeping the column's type even when empty."""
        return pd.Series(pd.api.extensions.take(frame[col].array, at, allow_fill=True))

    state = pd.to_numeric(take(t, "state", at_t), errors="coerce")
    p["state"] = state
    p["tracked"] = (at_t >= 0) & state.notna()
    p["signed"] = (
        state.eq(SIGNED_STATE) | take(t, "is_signed", at_t).astype("boolean").fillna(False).astype(bool) | (at_d >= 0)
    )
    p["exception"] = state.isin(EXCEPTION_STATES) & ~p["signed"]
    p["moving"] = state.isin(TRANSIT_STATES)
    p["out_for_delivery"] = state.eq(OUT_FOR_DELIVERY_STATE)
    p["first_event_at"] = utc_series(take(t, "first_event_at", at_t))
    p["last_event_at"] = utc_series(take(t, "last_event_at", at_t))
    p["last_context"] = take(t, "last_context", at_t)
    p["last_area"] = take(t, "last_area", at_t)
    p["predicted_arrival"] = utc_series(take(t, "predicted_arrival", at_t))
    p["signer"] = take(d, "signer", at_d)
    # A proof of delivery gives the signing time; otherwise the carrier's last event.
    p["signed_at"] = utc_series(take(d, "signed_at", at_d)).fillna(p["last_event_at"].where(p["signed"]))
    return p


def _join_flags(flags: dict[str, pd.Series], idx: pd.Index) -> pd.Series:
    """{code: bool Series} -> "code1;code2" per row, vectorized over codes not rows."""
    joined = pd.Series("", index=idx, dtype=object)
    for code, mask in flags.items():
        mask = mask.fillna(False).astype(bool).to_numpy()
        joined = joined.where(~mask, joined + np.where(joined.eq(""), code, ";" + code))
    return joined.where(joined.ne(""), None)
