"""The source contract: canonical entities and their columns.

This is the one place that says what a source must deliver. The warehouse tables
(`schema.py`), the config validation (`config.py`) and the row validation
(`validation.py`) are all derived from it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "str" | "float" | "int" | "datetime" | "date"
    required: bool = True  # a source mapping must name it
    nullable: bool = False  # a row may leave it empty
    allowed: tuple[str, ...] | None = None  # closed set of values (statuses)
    non_negative: bool = False


@dataclass(frozen=True)
class Entity:
    name: str
    system: str  # which system owns it: erp | finance | wms | carrier
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    # Column read by high-water mark; None: the entity follows its parent's changes
    # (order lines are re-read for the orders that changed).
    watermark: str | None = "updated_at"
    optional: bool = False  # the pipeline runs without this source
    # Rows sharing a key are parts of one thing (two lines of the same SKU): these columns add up.
    summed: tuple[str, ...] = ()

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def required_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.required]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


def _c(name, kind, **kw) -> Column:
    return Column(name, kind, **kw)


ORDERS = Entity(
    "orders",
    "erp",
    (
        _c("order_no", "str"),
        _c("customer_name", "str"),
        _c("customer_phone", "str"),
        _c("customer_id_no", "str", required=False, nullable=True),
        # The customer's openid under the company's WeChat Official Account, for template messages.
        _c("customer_openid", "str", required=False, nullable=True),
        _c("ship_address", "str"),
        _c("amount", "float", non_negative=True),
        _c("currency", "str", required=False, nullable=True),
        _c("ordered_at", "datetime"),
        _c("promised_date", "date", required=False, nullable=True),
        _c("status", "str", allowed=("open", "cancelled")),
        _c("updated_at", "datetime"),
    ),
    key=("order_no",),
)

ORDER_LINES = Entity(
    "order_lines",
    "erp",
    (
        _c("order_no", "str"),
        _c("sku", "str"),
        _c("qty", "float", non_negative=True),
        _c("unit_price", "float", required=False, nullable=True, non_negative=True),
    ),
    key=("order_no", "sku"),
    watermark=None,
    summed=("qty",),
)

PAYMENTS = Entity(
    "payments",
    "finance",
    (
        _c("payment_id", "str"),
        _c("order_no", "str"),
        _c("amount", "float", non_negative=True),
        _c("paid_at", "datetime", nullable=True),
        _c("voucher_no", "str", required=False, nullable=True),
        _c("status", "str", allowed=("paid", "refunded", "failed")),
        _c("updated_at", "datetime"),
    ),
    key=("payment_id",),
)

INVENTORY = Entity(
    "inventory",
    "wms",
    (
        _c("sku", "str"),
        _c("on_hand", "float"),
        _c("reserved", "float", non_negative=True),
        _c("safety_stock", "float", non_negative=True),
        _c("updated_at", "datetime"),
    ),
    key=("sku",),
)

RESERVATIONS = Entity(
    "reservations",
    "wms",
    (
        _c("reservation_id", "str"),
        _c("order_no", "str"),
        _c("sku", "str"),
        _c("qty", "float", non_negative=True),
        _c("status", "str", allowed=("locked", "released")),
        _c("locked_at", "datetime"),
        _c("updated_at", "datetime"),
    ),
    key=("reservation_id",),
)

SHIPMENTS = Entity(
    "shipments",
    "wms",
    (
        _c("order_no", "str"),
        _c("waybill_no", "str"),
        _c("carrier_code", "str"),
        _c("weight_kg", "float", required=False, nullable=True, non_negative=True),
        _c("shipped_at", "datetime"),
        _c("updated_at", "datetime"),
    ),
    key=("waybill_no",),
)

DELIVERIES = Entity(
    "deliveries",
    "carrier",
    (
        _c("waybill_no", "str"),
        _c("signer", "str", nullable=True),
        _c("signed_at", "datetime"),
        _c("photo_url", "str", required=False, nullable=True),
    ),
    key=("waybill_no",),
    watermark="signed_at",  # proof-of-delivery rows are written once
    optional=True,
)

SOURCE_ENTITIES: dict[str, Entity] = {
    e.name: e for e in (ORDERS, ORDER_LINES, PAYMENTS, INVENTORY, RESERVATIONS, SHIPMENTS, DELIVERIES)
}

# Entities keyed by order_no: a changed row touches that order.
ORDER_KEYED = ("orders", "order_lines", "payments", "reservations", "shipments")
